from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bus_mtl.data import (
    BUSISource,
    DataError,
    DecodeCache,
    ManifestSource,
    MultiSource,
    SyntheticSource,
    UDIATSource,
    make_phantom,
    read_image,
)


def _png(path: Path, arr: np.ndarray, mode: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).convert(mode).save(path)
    return path


@pytest.fixture
def udiat_root(tmp_path: Path) -> Path:
    """Five UDIAT-style images; GT in modes 1 and L; a stray GT file; legend columns."""
    root = tmp_path / "udiat"
    types = ["Benign", " Malignant ", "Benign ", "Malignant", "benign"]
    for n in range(1, 6):
        image, mask, _ = make_phantom(n, seed=3, size=48)
        _png(root / "original" / f"{n:06d}.png", image, "L")
        if n % 2:
            _png(root / "GT" / f"{n:06d}.png", mask * 255, "1")
        else:
            _png(root / "GT" / f"{n:06d}.png", mask * 255, "L")
    _png(root / "GT" / "000999.png", np.zeros((48, 48), np.uint8), "L")  # stray
    sheet = pd.DataFrame(
        {
            "Image": list(range(1, 6)),
            "Type": types,
            "Diagnosis": ["CYST", "IDC", "FA", "DCIS", "CYST"],
            "Unnamed: 3": [None] * 5,
            "Legend": ["FA = fibroadenoma", "IDC = invasive ductal", None, None, None],
        }
    )
    sheet.to_excel(root / "DatasetB.xlsx", index=False)
    return root


def test_udiat_xlsx_labels_from_sheet(udiat_root: Path) -> None:
    samples, problems = UDIATSource(udiat_root).scan()
    assert [s.id for s in samples] == [f"udiat/{n:06d}" for n in range(1, 6)]
    assert [s.label for s in samples] == [0, 1, 0, 1, 0]
    assert {s.centre for s in samples} == {"udiat"}
    # The stray GT file is a warning, never an error.
    assert [p.severity for p in problems] == ["warning"] and "000999" in problems[0].where
    # Both mask modes decode to the same binary lesion as the phantom's.
    cache = DecodeCache(64)
    for s in samples[:2]:
        _, mask, info = cache.decode(s)
        expected = make_phantom(int(s.id[-1]), seed=3, size=48)[1]
        np.testing.assert_array_equal(mask, expected)
        assert info.coverage > 0


def test_udiat_csv_export(udiat_root: Path) -> None:
    df = pd.read_excel(udiat_root / "DatasetB.xlsx")
    (udiat_root / "DatasetB.xlsx").unlink()
    df.to_csv(udiat_root / "DatasetB.csv", index=False)
    samples = UDIATSource(udiat_root).samples()
    assert [s.label for s in samples] == [0, 1, 0, 1, 0]


def test_udiat_unknown_type_and_missing_row(udiat_root: Path) -> None:
    df = pd.read_excel(udiat_root / "DatasetB.xlsx")
    df.loc[1, "Type"] = "Suspicious"
    df = df[df["Image"] != 5]
    df.to_excel(udiat_root / "DatasetB.xlsx", index=False)
    with pytest.raises(DataError) as err:
        UDIATSource(udiat_root).samples()
    text = str(err.value)
    assert "'Suspicious'" in text and "DatasetB.xlsx:3" in text
    assert "000005.png" in text and "no row for image 5" in text


def test_busi_layout_or_of_masks_and_normal_policies(busi_tree: Path) -> None:
    default = BUSISource(busi_tree).samples()
    assert len(default) == 6 and {s.label for s in default} == {0, 1}
    three = BUSISource(busi_tree, normal="class").samples()
    assert sorted(s.label for s in three) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert BUSISource(busi_tree, normal="class").has_normal_class
    seg = BUSISource(busi_tree, normal="seg_only").samples()
    assert sorted(s.label for s in seg) == [-1, -1, -1, 0, 0, 0, 1, 1, 1]
    multi = next(s for s in three if s.id == "busi/benign (1)")
    assert [p.name for p in multi.masks] == [
        "benign (1)_mask.png",
        "benign (1)_mask_1.png",
        "benign (1)_mask_2.png",
    ]
    _, mask, _ = DecodeCache(64).decode(multi)
    expected = make_phantom(0, seed=7, size=64)[1]  # the lesion the three files were cut from
    np.testing.assert_array_equal(mask, expected)
    normal = next(s for s in three if s.label == 2)
    assert DecodeCache(64).decode(normal)[1].sum() == 0
    with pytest.raises(ValueError, match="normal"):
        BUSISource(busi_tree, normal="drop")


def test_manifest_labels_masks_groups(tmp_path: Path) -> None:
    for i in range(4):
        image, mask, _ = make_phantom(i, seed=1, size=40)
        _png(tmp_path / "img" / f"{i}.png", image, "L")
        half = mask.copy()
        half[20:] = 0
        _png(tmp_path / "msk" / f"{i}_a.png", half * 255, "L")
        rest = mask.copy()
        rest[:20] = 0
        _png(tmp_path / "msk" / f"{i}_b.png", rest * 255, "L")
    csv = tmp_path / "list.csv"
    csv.write_text(
        "image,mask,label,centre,group\n"
        "img/0.png,msk/0_a.png;msk/0_b.png,benign,siteA,p1\n"
        "img/1.png,msk/1_a.png; msk/1_b.png,1,siteA,p1\n"
        "img/2.png,msk/2_a.png;msk/2_b.png, Malignant ,,\n"
        "img/3.png,msk/3_a.png;msk/3_b.png,0,siteB,p9\n"
    )
    samples = ManifestSource(csv, centre="default").samples()
    assert [s.label for s in samples] == [0, 1, 1, 0]
    assert [s.centre for s in samples] == ["siteA", "siteA", "default", "siteB"]
    assert [s.group for s in samples] == ["p1", "p1", None, "p9"]
    assert samples[0].id == "siteA/img/0"
    _, mask, _ = DecodeCache(64).decode(samples[2])
    np.testing.assert_array_equal(mask, make_phantom(2, seed=1, size=40)[1])


def test_multisource_tags_centres_and_flags_duplicate_ids(
    busi_tree: Path, synthetic_root: Path
) -> None:
    both = MultiSource(
        [BUSISource(busi_tree), ManifestSource(synthetic_root / "manifest.csv", centre="syn")]
    )
    samples = both.samples()
    assert {s.centre for s in samples} == {"busi", "syn"}
    assert len(samples) == 6 + 32
    twice = MultiSource([BUSISource(busi_tree), BUSISource(busi_tree)])
    with pytest.raises(DataError, match="busi/benign \\(1\\).*used 2 times"):
        twice.samples()


def test_synthetic_is_deterministic_and_balanced(tmp_path: Path) -> None:
    a = make_phantom(5, seed=11, size=64)
    b = make_phantom(5, seed=11, size=64)
    c = make_phantom(5, seed=12, size=64)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
    src = SyntheticSource(n=10, image_size=48, seed=11, root=tmp_path / "syn")
    samples = src.samples()
    assert [s.label for s in samples] == [0, 1] * 5
    # Written files hold exactly the generator's output, and a second call reuses them.
    np.testing.assert_array_equal(
        read_image(samples[5].image), make_phantom(5, seed=11, size=48)[0]
    )
    mtime = samples[0].image.stat().st_mtime_ns
    assert (
        SyntheticSource(n=10, image_size=48, seed=11, root=tmp_path / "syn")
        .samples()[0]
        .image.stat()
        .st_mtime_ns
        == mtime
    )
    for s in samples:
        assert 0.005 < DecodeCache(64).decode(s)[2].coverage < 0.3


def test_busi_udiat_preset_reads_udiat_root_from_env(
    udiat_root: Path, busi_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """experiments/data/busi_udiat.yaml: the two centres, UDIAT's folder from $BUS_MTL_UDIAT."""
    import yaml
    from jsonargparse import ArgumentParser

    from bus_mtl.data.sources.base import Source

    preset = Path(__file__).resolve().parents[2] / "experiments" / "data" / "busi_udiat.yaml"
    config = yaml.safe_load(preset.read_text())  # a source preset: class_path + init_args
    config["init_args"]["sources"][0]["init_args"]["root"] = str(busi_tree)
    parser = ArgumentParser()
    parser.add_argument("--sources", type=Source)
    monkeypatch.setenv("BUS_MTL_UDIAT", str(udiat_root))
    source = parser.instantiate_classes(parser.parse_object({"sources": config})).sources
    samples = source.samples()
    assert {s.centre for s in samples} == {"busi", "udiat"}
    assert sum(s.centre == "udiat" for s in samples) == 5
    # Unset: the problem names the variable instead of failing somewhere obscure.
    monkeypatch.delenv("BUS_MTL_UDIAT")
    source = parser.instantiate_classes(parser.parse_object({"sources": config})).sources
    _, problems = source.scan()
    assert any("BUS_MTL_UDIAT" in p.where or "BUS_MTL_UDIAT" in p.message for p in problems)
