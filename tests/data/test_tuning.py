"""The tuning hold-out (``data.tuning``): drawn deterministically, stratified, groups whole;
``exclude`` keeps it out of every fold, ``tune`` validates on exactly it, ``train`` adds it
to the training part only."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from bus_mtl.data import (
    BUSDataModule,
    BUSISource,
    DataError,
    Sample,
    Split,
    check_data,
    kfold_split,
    tuning_fingerprint,
    tuning_holdout,
)
from tests.data.split_fixtures import make_groups, make_samples


def _samples(n: int = 300, seed: int = 0) -> list[Sample]:
    return make_samples(n, seed)


def _groups(samples: list[Sample], seed: int = 1) -> list[list[str]]:
    return make_groups(samples, 90, seed)


def test_holdout_is_deterministic_stratified_and_keeps_groups_whole() -> None:
    samples, groups = _samples(), _groups(_samples())
    held = tuning_holdout(samples, groups, fraction=0.15, seed=3)
    assert held == tuning_holdout(samples, groups, fraction=0.15, seed=3) == sorted(held)
    assert held != tuning_holdout(samples, groups, fraction=0.15, seed=4)  # the seed matters
    assert abs(len(held) / len(samples) - 0.15) < 0.02
    assert len(tuning_holdout(samples, groups, fraction=0.3, seed=3)) > len(held)
    # Every (centre, label) stratum is held out at about the same share.
    stratum = {s.id: (s.centre, s.label) for s in samples}
    total, inside = Counter(stratum.values()), Counter(stratum[i] for i in held)
    for key, n in total.items():
        assert abs(inside[key] / n - 0.15) < 0.06, key
    # A near-duplicate group is wholly in or wholly out; some groups are in.
    held_set = set(held)
    assert all(len({i in held_set for i in g}) == 1 for g in groups)
    grouped = [i for g in groups for i in g]  # groups reach the hold-out in proportion
    assert 0.07 < sum(i in held_set for i in grouped) / len(grouped) < 0.25


def test_exclude_keeps_the_holdout_out_of_every_fold(synthetic_source, tmp_path) -> None:
    ids = None
    held = None
    for fold in range(4):
        dm = BUSDataModule(
            synthetic_source,
            image_size=64,
            n_folds=4,
            fold=fold,
            cache_dir=str(tmp_path / "cache"),
            seed=0,
            tuning="exclude",
        )
        dm.setup("fit")
        parts = {name: {s.id for s in ds.samples} for name, ds in dm.datasets.items()}
        ids = ids or {s.id for s in dm.report.samples}
        assert held is None or dm.split.tuning == held  # the same hold-out for every fold
        held = dm.split.tuning
        assert held and not set(held) & (parts["train"] | parts["val"] | parts["test"])
        assert parts["train"] | parts["val"] | parts["test"] | set(held) == ids
        assert dm.split.to_dict()["tuning_fingerprint"] == tuning_fingerprint(held)
    # The folds are a k-fold split of the images outside the hold-out.
    tests = [set(f["test"]) for f in dm.split.folds]
    assert set().union(*tests) == ids - set(held) and sum(map(len, tests)) == len(ids) - len(held)


def test_tune_validates_on_exactly_the_holdout(synthetic_source, tmp_path, capsys) -> None:
    common = dict(image_size=64, n_folds=4, cache_dir=str(tmp_path / "cache"), seed=0)
    excl = BUSDataModule(synthetic_source, tuning="exclude", **common)
    excl.setup("fit")
    dm = BUSDataModule(
        synthetic_source, tuning="tune", split_out=str(tmp_path / "t.json"), **common
    )
    dm.setup("fit")
    val = sorted(s.id for s in dm.datasets["val"].samples)
    train = {s.id for s in dm.datasets["train"].samples}
    assert val == dm.split.tuning == excl.split.tuning  # the sweep's hold-out = cv's
    assert train == {s.id for s in dm.report.samples} - set(val)
    assert len(dm.datasets["test"]) == 0
    fingerprint = tuning_fingerprint(val)
    assert f"fingerprint {fingerprint}" in capsys.readouterr().out
    saved = json.loads((tmp_path / "t.json").read_text())  # what a trial's run folder keeps
    assert saved["tuning"] == val and saved["tuning_fingerprint"] == fingerprint
    assert saved["folds"] == [{"train": sorted(train), "val": val, "test": []}]


def test_train_adds_the_holdout_to_the_training_part_only(synthetic_source, tmp_path, capsys):
    common = dict(image_size=64, n_folds=4, fold=1, cache_dir=str(tmp_path / "cache"), seed=0)
    excl = BUSDataModule(synthetic_source, tuning="exclude", **common)
    excl.setup("fit")
    dm = BUSDataModule(synthetic_source, tuning="train", **common)
    dm.setup("fit")

    def ids(module, name):
        return sorted(s.id for s in module.datasets[name].samples)

    held = dm.split.tuning
    assert held and held == excl.split.tuning and dm.split.folds == excl.split.folds
    assert ids(dm, "val") == ids(excl, "val") and ids(dm, "test") == ids(excl, "test")
    assert ids(dm, "train") == sorted(ids(excl, "train") + held)
    out = capsys.readouterr().out
    assert f"data.tuning=train: the tuning hold-out of {len(held)} image(s)" in out
    assert "in no validation or test part" in out


def test_off_is_the_old_split(synthetic_source, tmp_path) -> None:
    dm = BUSDataModule(
        synthetic_source, image_size=64, n_folds=4, cache_dir=str(tmp_path / "c"), seed=0
    )
    dm.setup("fit")
    assert dm.tuning == "off" and dm.split.tuning == []
    old = kfold_split(dm.report.samples, dm.report.groups, 4, 0, 0.15, dm.dup_threshold)
    assert dm.split.folds == old.folds


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"tuning": "tuned"}, ["tuning", "'tuned'", "exclude", "tune"]),
        ({"tuning": True}, ["tuning", "True", "off"]),
        ({"tuning_fraction": 0.0}, ["tuning_fraction", "0.0", "(0, 1)"]),
        ({"tuning_fraction": 1.0}, ["tuning_fraction", "1.0", "0.15"]),
    ],
)
def test_bad_values_name_the_key_value_and_fix(synthetic_source, tmp_path, kw, words) -> None:
    with pytest.raises(ValueError) as err:
        BUSDataModule(synthetic_source, cache_dir=str(tmp_path / "c"), **kw)
    for word in words:
        assert word in str(err.value)


def test_split_files_with_and_without_a_holdout(synthetic_source, tmp_path) -> None:
    common = dict(image_size=64, n_folds=4, fold=1, cache_dir=str(tmp_path / "cache"), seed=0)
    made = BUSDataModule(
        synthetic_source, tuning="exclude", split_out=str(tmp_path / "s.json"), **common
    )
    made.setup("fit")
    again = BUSDataModule(
        synthetic_source,
        split="file",
        split_file=str(tmp_path / "s.json"),
        tuning="exclude",
        **common,
    )
    again.setup("fit")
    for part in ("train", "val", "test"):
        assert [s.id for s in again.datasets[part].samples] == [
            s.id for s in made.datasets[part].samples
        ]
    # An older split file (no "tuning") still loads; exclude then removes the hold-out.
    old = json.loads((tmp_path / "s.json").read_text())
    held = old.pop("tuning")
    old.pop("tuning_fingerprint")
    old["folds"][1]["test"] += held
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert Split.load(tmp_path / "old.json").tuning == []
    dm = BUSDataModule(
        synthetic_source, split="file", split_file=str(tmp_path / "old.json"), **common
    )
    dm.setup("fit")  # tuning off: the parts as written
    assert set(held) <= {s.id for s in dm.datasets["test"].samples}
    dm = BUSDataModule(
        synthetic_source,
        split="file",
        split_file=str(tmp_path / "old.json"),
        tuning="exclude",
        **common,
    )
    dm.setup("fit")
    assert dm.split.tuning == held
    assert not set(held) & {s.id for s in dm.datasets["test"].samples}


def test_groups_stay_whole_on_busi_like_data(conflicting_busi_root, tmp_path) -> None:
    report = check_data(BUSISource(conflicting_busi_root), 64, tmp_path / "cache")
    groups = [g for g in report.groups if len(g) > 1]
    assert groups  # the fixture's near-duplicates
    inside = 0
    for fraction in (0.15, 0.4):
        for seed in range(4):
            held = set(tuning_holdout(report.samples, report.groups, fraction, seed))
            assert all(len({i in held for i in g}) == 1 for g in groups), (fraction, seed)
            inside += any(g[0] in held for g in groups)
    assert inside  # groups do reach the hold-out, whole
    # A split file whose hold-out cuts a group is refused, naming the group's images.
    split = Split("file", 0, 1, 6, 0.0, [{"train": [], "val": [], "test": []}])
    split.tuning = [groups[0][0]]
    split.save(tmp_path / "cut.json")
    dm = BUSDataModule(
        BUSISource(conflicting_busi_root),
        image_size=64,
        split="file",
        split_file=str(tmp_path / "cut.json"),
        tuning="exclude",
        cache_dir=str(tmp_path / "cache"),
    )
    with pytest.raises(DataError, match="split between the tuning hold-out") as err:
        dm.setup("fit")
    assert all(i in str(err.value) for i in groups[0])
