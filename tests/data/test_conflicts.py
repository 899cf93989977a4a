"""Cross-class near-duplicate groups: listed by check-data, dropped on request by the data
module (fixture: ``conflicting_busi_root`` in tests/conftest.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bus_mtl.cli.check_data import main as check_data_main
from bus_mtl.data import (
    BUSDataModule,
    BUSISource,
    ManifestSource,
    check_data,
    conflict_rows,
    format_report,
    make_phantom,
)

CONFLICT = ["busi/benign (2)", "busi/malignant (9)"]
SAME_CLASS = ["busi/benign (3)", "busi/benign (9)"]


def _report(root: Path, normal: str = "exclude"):
    return check_data(BUSISource(root, normal=normal), image_size=64)


def test_report_lists_conflicting_groups_by_file(conflicting_busi_root: Path) -> None:
    report = _report(conflicting_busi_root)
    assert report.ok, report.errors
    assert report.groups == [CONFLICT, SAME_CLASS]  # phantoms are otherwise far apart
    assert report.conflicting_groups == [(0, CONFLICT)]
    assert report.cross_class_groups == [CONFLICT] and report.conflicting_ids == set(CONFLICT)
    rows = conflict_rows(report)
    assert [(r["group"], r["id"], r["label_name"]) for r in rows] == [
        (0, "busi/benign (2)", "benign"),
        (0, "busi/malignant (9)", "malignant"),
    ]
    assert rows[1]["image"].endswith("malignant/malignant (9).png")
    assert all(r["test_fold"] == "" for r in rows)  # no split given
    text = format_report(report)
    assert "cross-class near-duplicate groups: 1 groups, 2 images" in text
    assert "  group 0:" in text and str(rows[0]["image"]) in text
    assert "benign (9)" not in text.split("cross-class near-duplicate groups")[1]


def test_normal_class_makes_another_conflict(conflicting_busi_root: Path) -> None:
    report = _report(conflicting_busi_root, normal="class")
    groups = dict(report.conflicting_groups)
    assert sorted(groups.values()) == [CONFLICT, ["busi/benign (5)", "busi/normal (3)"]]
    assert all(report.groups[k] == g for k, g in groups.items())  # ids index report.groups


def test_patient_groups_are_not_conflicts(tmp_path: Path) -> None:
    # One patient with a benign and a malignant lesion (different images) is no conflict;
    # the same image filed under both labels is, listed under its (patient-united) group.
    rows = []
    for n, (img_index, label, group) in enumerate(
        [
            (0, "benign", "p1"),
            (1, "malignant", "p1"),
            (2, "benign", "p2"),
            (2, "malignant", ""),
            (3, "malignant", "p2"),
            (5, "malignant", ""),
        ]
    ):
        image, mask, _ = make_phantom(img_index, seed=3, size=64)
        Image.fromarray(image).save(tmp_path / f"i{n}.png")
        Image.fromarray(mask * 255).save(tmp_path / f"m{n}.png")
        rows.append({"image": f"i{n}.png", "mask": f"m{n}.png", "label": label, "group": group})
    with open(tmp_path / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    report = check_data(ManifestSource(tmp_path / "manifest.csv", centre="m"), image_size=64)
    assert report.ok, report.errors
    p1 = ["m/i0", "m/i1"]
    p2 = ["m/i2", "m/i3", "m/i4"]
    assert sorted(report.groups) == [p1, p2]
    assert report.conflicting_groups == [(report.groups.index(p2), ["m/i2", "m/i3"])]


def test_check_data_cli_prints_and_writes_conflicts(
    conflicting_busi_root: Path, tmp_path: Path, capsys
) -> None:
    out_csv, split = tmp_path / "conflicts.csv", tmp_path / "split.json"
    rc = check_data_main(
        [
            "--busi",
            str(conflicting_busi_root),
            "--image-size",
            "64",
            "--cache-dir",
            str(tmp_path / "c"),
            "--conflicts-out",
            str(out_csv),
            "--split-out",
            str(split),
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "2 groups, 4 images, 1 crossing classes" in text
    assert "group 0:" in text and "malignant (9).png" in text
    with open(out_csv) as fh:
        rows = list(csv.DictReader(fh))
    assert [r["id"] for r in rows] == CONFLICT and {r["group"] for r in rows} == {"0"}
    folds = json.loads(split.read_text())["folds"]
    where = {i: str(k) for k, f in enumerate(folds) for i in f["test"]}
    assert [r["test_fold"] for r in rows] == [where[CONFLICT[0]]] * 2  # one group, one fold


def _dm(root: Path, tmp_path: Path, **kw) -> BUSDataModule:
    args = dict(image_size=64, n_folds=3, batch_size=4, cache_dir=str(tmp_path / "c"), seed=0)
    args.update(kw)
    return BUSDataModule(BUSISource(root), **args)


def _parts(dm: BUSDataModule) -> dict[str, list[str]]:
    return {name: [s.id for s in ds.samples] for name, ds in dm.datasets.items()}


@pytest.mark.parametrize("fold", [0, 1, 2])
def test_drop_conflicting_keeps_the_split_and_removes_the_group(
    conflicting_busi_root: Path, tmp_path: Path, capsys, fold: int
) -> None:
    kept = _dm(conflicting_busi_root, tmp_path, fold=fold)
    kept.setup("fit")
    assert capsys.readouterr().out.count("drop_conflicting") == 0  # off by default
    assert kept.drop_conflicting is False and kept.dropped_groups == {}
    dropped = _dm(conflicting_busi_root, tmp_path, fold=fold, drop_conflicting=True)
    dropped.setup("fit")
    message = capsys.readouterr().out
    a, b = _parts(kept), _parts(dropped)
    assert sum(map(len, a.values())) == 18 and sum(map(len, b.values())) == 16
    # Same folds as without dropping, minus the whole conflicting group.
    assert b == {k: [i for i in v if i not in CONFLICT] for k, v in a.items()}
    assert dropped.dropped_groups == {0: CONFLICT}
    assert "dropped 2 image(s) of 1 cross-class near-duplicate group(s)" in message
    assert (
        f"from fold {fold}" in message and "group 0: busi/benign (2), busi/malignant (9)" in message
    )
    # Group-aware and deterministic: the same-class group stays in one part; a rerun agrees.
    assert sum(set(SAME_CLASS) <= set(ids) for ids in b.values()) == 1
    again = _dm(conflicting_busi_root, tmp_path, fold=fold, drop_conflicting=True)
    again.setup("fit")
    assert _parts(again) == b


def test_split_file_naming_dropped_images(
    conflicting_busi_root: Path, tmp_path: Path, capsys
) -> None:
    split = tmp_path / "split.json"
    _dm(conflicting_busi_root, tmp_path, split_out=str(split)).setup("fit")
    before = split.read_text()
    capsys.readouterr()
    dm = _dm(
        conflicting_busi_root,
        tmp_path,
        split="file",
        split_file=str(split),
        drop_conflicting=True,
    )
    dm.setup("fit")
    message = capsys.readouterr().out
    assert not set(CONFLICT) & {i for ids in _parts(dm).values() for i in ids}
    assert f"the split file {split} names 2 of them" in message
    assert split.read_text() == before  # the file itself is never rewritten


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"drop_conflicting": "yes"}, ["drop_conflicting", "'yes'", "true or false"]),
        ({"drop_conflicting": True, "dup_threshold": -1}, ["drop_conflicting", "-1", ">= 0"]),
    ],
)
def test_bad_drop_conflicting(conflicting_busi_root: Path, tmp_path: Path, kw, words) -> None:
    with pytest.raises(ValueError) as err:
        _dm(conflicting_busi_root, tmp_path, **kw)
    assert all(w in str(err.value) for w in words), err.value


def test_images_are_exact_copies(conflicting_busi_root: Path) -> None:
    top = conflicting_busi_root / "Dataset_BUSI_with_GT"
    a = np.asarray(Image.open(top / "benign" / "benign (2).png"))
    b = np.asarray(Image.open(top / "malignant" / "malignant (9).png"))
    np.testing.assert_array_equal(a, b)
