from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bus_mtl.data import DataError, read_image, read_mask, read_masks


def write_png(path: Path, array: np.ndarray, mode: str) -> Path:
    Image.fromarray(array).convert(mode).save(path)
    return path


@pytest.fixture
def gray() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (40, 56), dtype=np.uint8)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P"])
def test_image_modes_decode_to_same_gray(tmp_path: Path, gray: np.ndarray, mode: str) -> None:
    # Gray replicated to colour channels must decode back to the exact gray values.
    if mode == "P":
        img = Image.fromarray(gray).convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
        path = tmp_path / "p.png"
        img.save(path)
        expected = np.asarray(img.convert("L"))
    else:
        path = write_png(tmp_path / f"{mode}.png", np.stack([gray] * 3, -1), mode)
        expected = gray
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == gray.shape
    np.testing.assert_array_equal(out, expected)


def test_one_bit_image_reads_as_0_255(tmp_path: Path) -> None:
    arr = np.zeros((8, 8), np.uint8)
    arr[2:5, 3:6] = 255
    out = read_image(write_png(tmp_path / "b.png", arr, "1"))
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize(
    "mode,scale", [("1", 255), ("L", 255), ("L", 1), ("RGB", 255), ("RGBA", 255)]
)
def test_mask_modes(tmp_path: Path, mode: str, scale: int) -> None:
    m = np.zeros((10, 12), np.uint8)
    m[3:7, 2:9] = 1
    arr = m * scale
    if mode in ("RGB", "RGBA"):
        arr = np.stack([arr] * 3, -1)
    out = read_mask(write_png(tmp_path / "m.png", arr, mode))
    np.testing.assert_array_equal(out, m)


def test_rgba_mask_alpha_is_not_foreground(tmp_path: Path) -> None:
    rgba = np.zeros((6, 6, 4), np.uint8)
    rgba[..., 3] = 255  # opaque everywhere, black colour: empty mask
    rgba[1:3, 1:3, :3] = 255
    out = read_mask(write_png(tmp_path / "m.png", rgba, "RGBA"))
    assert out.sum() == 4


def test_masks_are_ored(tmp_path: Path) -> None:
    a = np.zeros((6, 6), np.uint8)
    b = np.zeros((6, 6), np.uint8)
    a[0, 0] = 255
    b[5, 5] = 255
    out = read_masks(
        [write_png(tmp_path / "a.png", a, "L"), write_png(tmp_path / "b.png", b, "L")], (6, 6)
    )
    assert out[0, 0] == 1 and out[5, 5] == 1 and out.sum() == 2


def test_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError, match="corrupt.png"):
        read_image(bad)
    with pytest.raises(DataError, match="missing.png.*not found"):
        read_image(tmp_path / "missing.png")
    small = write_png(tmp_path / "small_mask.png", np.zeros((4, 4), np.uint8), "L")
    with pytest.raises(DataError, match="small_mask.png.*differs"):
        read_masks([small], (6, 6))


def test_an_unreadable_file_is_one_line_and_one_problem(tmp_path: Path) -> None:
    """ImageReadError: one line for a predictor to print, one Problem for a collector, and it
    survives a trip between processes."""
    import pickle

    from bus_mtl.data import ImageReadError

    missing = tmp_path / "missing.png"
    with pytest.raises(ImageReadError) as info:
        read_image(missing)
    err = info.value
    assert str(err) == f"{missing}: file not found"
    assert [(p.where, p.message) for p in err.problems] == [(str(missing), "file not found")]
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is ImageReadError and str(again) == str(err)
    assert again.problems == err.problems
