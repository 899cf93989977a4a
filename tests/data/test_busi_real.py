"""On the real BUSI folder (skipped when absent)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bus_mtl.data import BUSISource, Sample, check_data, kfold_split, read_image, read_mask
from bus_mtl.data.cache import DecodeCache

pytestmark = pytest.mark.busi


@pytest.fixture(scope="session")
def busi_report(busi_root: Path):
    # One decode pass per session (cached), shared by the tests below.
    return check_data(BUSISource(busi_root, normal="class"), image_size=64)


def test_counts(busi_root: Path, busi_report) -> None:
    assert busi_report.ok, busi_report.errors[:5]
    labels = [s.label for s in busi_report.samples]
    assert len(labels) == 780 and [labels.count(k) for k in (0, 1, 2)] == [437, 210, 133]
    assert len(BUSISource(busi_root).samples()) == 647  # default: normal excluded


def test_multi_mask_is_or_of_files(busi_report) -> None:
    multi = [s for s in busi_report.samples if len(s.masks) > 1]
    assert len(multi) == 17
    b195 = next(s for s in multi if s.id == "busi/benign (195)")
    assert len(b195.masks) == 3
    for s in multi:
        _, mask, _ = DecodeCache(64).decode(s)
        files = [read_mask(p) for p in s.masks]
        assert mask.sum() == np.logical_or.reduce(files).sum()
        if s is b195:
            assert all(0 < f.sum() < mask.sum() for f in files)  # each file adds pixels


def test_rgb_copy_loads_equal(busi_root: Path, busi_report, tmp_path: Path) -> None:
    s = next(s for s in busi_report.samples if s.id == "busi/malignant (7)")
    gray = read_image(s.image)
    rgb = Image.fromarray(np.stack([gray] * 3, -1))
    rgb.save(tmp_path / "rgb.png")
    rgb.convert("RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png"), gray)
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), gray)
    copy = Sample("x/rgb", tmp_path / "rgb.png", s.masks, s.label, "x")
    a, b = DecodeCache(64, tmp_path / "c"), DecodeCache(64, tmp_path / "c")
    assert a.inspect(copy).phash == b.decode(s)[2].phash


def test_duplicates_found_and_folds_keep_groups(busi_report) -> None:
    groups, cross = busi_report.groups, busi_report.cross_class_groups
    # Order of magnitude of Pawłowska et al. 2023 (235 duplicated images).
    assert 100 <= sum(map(len, groups)) <= 400 and cross
    assert any({"busi/benign (42)", "busi/malignant (51)"} <= set(g) for g in cross)
    split = kfold_split(busi_report.samples, groups, n_folds=5, seed=0)
    for f in split.folds:
        where = {i: p for p in ("train", "val", "test") for i in f[p]}
        for g in groups:
            assert len({where[i] for i in g}) == 1, g
    label = {s.id: s.label for s in busi_report.samples}
    for f in split.folds:
        share = np.mean([label[i] == 1 for i in f["test"]])
        assert abs(share - 210 / 780) < 0.04


def test_cross_class_groups_check_data_and_datamodule_agree(
    busi_root: Path, tmp_path: Path, capsys
) -> None:
    # Measured, not assumed: the count check-data prints is the count the data module drops.
    import csv
    import re

    from bus_mtl.cli.check_data import main as check_data_main
    from bus_mtl.data import BUSDataModule

    table = tmp_path / "conflicts.csv"
    args = ["--busi", str(busi_root), "--image-size", "64", "--conflicts-out", str(table)]
    assert check_data_main(args) == 0
    text = capsys.readouterr().out
    found = re.search(r"cross-class near-duplicate groups: (\d+) groups, (\d+) images", text)
    assert found, text
    n_groups, n_images = int(found[1]), int(found[2])
    with open(table) as fh:
        rows = list(csv.DictReader(fh))
    groups: dict[str, set[str]] = {}
    for r in rows:
        groups.setdefault(r["group"], set()).add(r["id"])
        assert Path(r["image"]).is_file()
    assert len(groups) == n_groups and len(rows) == n_images
    assert {"busi/benign (333)", "busi/malignant (77)"} in groups.values()  # a known pair
    label = {r["id"]: r["label_name"] for r in rows}
    assert all({label[i] for i in g} == {"benign", "malignant"} for g in groups.values())

    dm = BUSDataModule(BUSISource(busi_root), image_size=64, drop_conflicting=True)
    dm.setup("fit")
    assert {str(k): set(g) for k, g in dm.dropped_groups.items()} == groups
    assert sum(len(ds) for ds in dm.datasets.values()) == 647 - n_images
    with capsys.disabled():
        print(f"\nBUSI (647 benign + malignant): {n_groups} cross-class groups, {n_images} images")
