from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bus_mtl.data import (
    DataError,
    Sample,
    Split,
    by_centre_split,
    group_samples,
    kfold_split,
    phash,
)
from bus_mtl.data.duplicates import hamming_matrix
from bus_mtl.data.splits import SplitSettings, leave_one_centre_out, make_split
from tests.data.split_fixtures import make_groups, make_samples


def _samples(n: int = 200, seed: int = 0) -> list[Sample]:
    return make_samples(n, seed)


def _groups(samples: list[Sample], seed: int = 1) -> list[list[str]]:
    return make_groups(samples, 60, seed)


def test_kfold_groups_never_split_and_stratified() -> None:
    samples = _samples()
    groups = _groups(samples)
    split = kfold_split(samples, groups, n_folds=5, seed=3, val_fraction=0.2)
    ids = {s.id for s in samples}
    tests = [set(f["test"]) for f in split.folds]
    assert set().union(*tests) == ids and sum(map(len, tests)) == len(ids)  # a partition
    for f in split.folds:
        parts = {p: set(f[p]) for p in ("train", "val", "test")}
        assert parts["train"] | parts["val"] | parts["test"] == ids
        assert not (
            parts["train"] & parts["val"]
            or parts["train"] & parts["test"]
            or parts["val"] & parts["test"]
        )
        for g in groups:
            assert sum(bool(set(g) & p) for p in parts.values()) == 1, g
        assert abs(len(parts["val"]) / (len(ids) - len(parts["test"])) - 0.2) < 0.05
    # Per-fold share of each (centre, label) stratum close to the global share.
    stratum = {s.id: (s.centre, s.label) for s in samples}
    overall = Counter(stratum.values())
    for t in tests:
        c = Counter(stratum[i] for i in t)
        for key, total in overall.items():
            assert abs(c[key] / len(t) - total / len(ids)) < 0.06, (key, c, overall)
        assert abs(len(t) - len(ids) / 5) <= 6


def test_kfold_deterministic_per_seed() -> None:
    samples = _samples()
    groups = _groups(samples)
    a = kfold_split(samples, groups, seed=1)
    b = kfold_split(samples, groups, seed=1)
    c = kfold_split(samples, groups, seed=2)
    assert a.folds == b.folds
    assert a.folds != c.folds


def test_split_json_roundtrip_and_check(tmp_path: Path) -> None:
    samples = _samples(40)
    split = kfold_split(samples, [["a/1", "a/2"]], n_folds=4, seed=5, dup_threshold=10)
    path = split.save(tmp_path / "s.json")
    again = Split.load(path)
    assert again == split and again.groups == [["a/1", "a/2"]] and again.dup_threshold == 10
    assert again.check_against([s.id for s in samples]) == []
    problems = again.check_against([s.id for s in samples[1:]], where="s.json")
    assert problems and "not in the data" in problems[0].message
    # The split keeps the group a/1, a/2 together; data that groups a/1 with another image
    # in another part makes the same file a leak, reported with the images and the group.
    fold0 = again.fold(0)
    part_of = {i: p for p, members in fold0.items() for i in members}
    other = next(i for i, p in part_of.items() if p != part_of["a/1"])
    leaks = again.check_against([s.id for s in samples], groups=[["a/1", "a/2"], ["a/1", other]])
    assert leaks and all("near-duplicate group 1" in p.message for p in leaks)
    assert "'a/1'" in leaks[0].message and repr(other) in leaks[0].message
    assert again.check_against([s.id for s in samples], groups=[["a/1", "a/2"]]) == []
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(DataError, match="bad.json"):
        Split.load(tmp_path / "bad.json")


def test_by_centre() -> None:
    samples = _samples(60)
    split = by_centre_split(samples, ["b"], seed=0, val_fraction=0.25)
    fold = split.fold(0)
    assert {i.split("/")[0] for i in fold["test"]} == {"b"}
    assert {i.split("/")[0] for i in fold["train"] + fold["val"]} == {"a"}
    with pytest.raises(DataError, match="test_centres"):
        by_centre_split(samples, ["nowhere"])


def test_phash_and_groups() -> None:
    rng = np.random.default_rng(0)
    base = (np.add.outer(np.arange(128), np.arange(128)) % 256).astype(np.uint8)
    base = np.clip(base.astype(int) + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8)
    noisy = np.clip(base.astype(int) + rng.integers(-3, 4, base.shape), 0, 255).astype(np.uint8)
    other = rng.integers(0, 256, (128, 128), dtype=np.uint8)
    h = {
        "a": phash(base),
        "b": phash(noisy),
        "c": phash(other),
        "d": phash(np.ascontiguousarray(base.T)),
    }
    d = hamming_matrix([h["a"], h["b"], h["c"]])
    assert d[0, 1] <= 4 and d[0, 2] > 16
    assert hamming_matrix([0, 0xFF])[0, 1] == 8  # independent popcount check
    groups = group_samples(["a", "b", "c", "d", "e"], h, 10, {"c": "p1", "e": "p1"})
    assert groups == [["a", "b"], ["c", "e"]]
    assert group_samples(["a", "b"], h, -1) == []


def test_make_split_is_the_split_its_settings_name(tmp_path: Path) -> None:
    samples, groups = _samples(120), _groups(_samples(120))
    common = dict(seed=5, val_fraction=0.2, dup_threshold=3)
    kfold = make_split(samples, groups, SplitSettings(n_folds=4, **common))
    assert kfold == kfold_split(samples, groups, 4, 5, 0.2, 3)
    one = make_split(samples, groups, SplitSettings("by_centre", test_centres=["b"], **common))
    assert one == by_centre_split(samples, ["b"], groups, 5, 0.2, 3)
    every = make_split(samples, groups, SplitSettings("by_centre", **common))  # no centres
    assert every == leave_one_centre_out(samples, groups, 5, 0.2, 3)
    path = kfold.save(tmp_path / "split.json")
    assert make_split(samples, groups, SplitSettings("file", split_file=str(path))) == kfold
    # exclude: the folds split the images outside the hold-out; tune: train/val only.
    held = make_split(samples, groups, SplitSettings(n_folds=4, tuning="exclude", **common))
    assert held.tuning and not set(held.tuning) & {i for f in held.folds for i in f["test"]}
    tune = make_split(samples, groups, SplitSettings(tuning="tune", **common))
    assert tune.kind == "tuning" and tune.folds[0]["val"] == held.tuning
    assert tune.folds[0]["test"] == []


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(kind="kfolds"), r"split: 'kfolds' is not one of \('kfold', 'by_centre', 'file'\)"),
        (dict(n_folds=1), "n_folds: need at least 2, got 1"),
        (dict(kind="file"), "split_file: required when split='file'"),
        (dict(tuning="on"), "tuning: 'on' is not one of .* exclude in the cv run"),
        (dict(tuning_fraction=1.0), r"tuning_fraction: must be in \(0, 1\), got 1.0"),
        (dict(val_fraction=1.0), r"val_fraction: must be in \[0, 1\), got 1.0"),
        (dict(dup_threshold=65), "dup_threshold: a 64-bit hash distance is at most 64"),
    ],
)
def test_split_settings_name_the_bad_option(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SplitSettings(**settings)
