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
