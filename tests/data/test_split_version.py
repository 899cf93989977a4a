"""Split version 2: near-duplicate groups reach the validation part in proportion; version-1
files still load, with a note."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import bus_mtl.data.splits as splits_mod
from bus_mtl.data import BUSISource, Sample, Split, by_centre_split, check_data, kfold_split
from bus_mtl.data.splits import SPLIT_VERSION, leave_one_centre_out
from tests.data.split_fixtures import make_groups, make_samples

PROJECT = Path(__file__).resolve().parents[2]
SPLITS = PROJECT / "experiments" / "splits"
COMMITTED_V1 = SPLITS / "busi_5fold_seed42.json"
COMMITTED_V2 = SPLITS / "busi_5fold_seed42_v2.json"


def grouped_shares(fold: dict[str, list[str]], groups: list[list[str]]) -> dict[str, float]:
    """Per part, the share of its images that belong to a group of 2+ images."""
    grouped = {i for g in groups if len(g) > 1 for i in g}
    return {p: sum(i in grouped for i in ids) / len(ids) for p, ids in fold.items() if ids}


def straddling(fold: dict[str, list[str]], groups: list[list[str]]) -> list[list[str]]:
    """Groups whose images sit in more than one part of the fold."""
    part_of = {i: p for p, ids in fold.items() for i in ids}
    return [g for g in groups if len({part_of[i] for i in g if i in part_of}) > 1]


def _data(n: int = 400) -> tuple[list[Sample], list[list[str]]]:
    samples = make_samples(n, seed=0)
    return samples, make_groups(samples, n_grouped=n // 3, seed=1)


def test_validation_part_receives_groups_in_proportion() -> None:
    samples, groups = _data()
    split = kfold_split(samples, groups, n_folds=5, seed=42, val_fraction=0.15)
    assert split.version == SPLIT_VERSION == 2
    for k, fold in enumerate(split.folds):
        shares = grouped_shares(fold, groups)
        # Version 1 gave the validation part no group at all (share 0 against ~0.33).
        assert shares["val"] > 0.15, (k, shares)
        assert abs(shares["val"] - shares["train"]) <= 0.10, (k, shares)
        assert not straddling(fold, groups), k
        n_rest = len(fold["train"]) + len(fold["val"])
        assert abs(len(fold["val"]) / n_rest - 0.15) < 0.04, k
    assert split.check_against([s.id for s in samples], groups=groups) == []


def test_by_centre_validation_part_receives_groups() -> None:
    samples, groups = _data()
    split = by_centre_split(samples, ["b"], groups, seed=0, val_fraction=0.2)
    fold = split.fold(0)
    shares = grouped_shares(fold, groups)
    assert split.version == 2 and shares["val"] > 0.1, shares
    assert not straddling(fold, groups)


def test_leave_one_centre_out_is_one_by_centre_split_per_centre() -> None:
    samples, groups = _data(120)
    split = leave_one_centre_out(samples, groups, seed=3, val_fraction=0.2, dup_threshold=10)
    assert split.kind == "by_centre" and split.version == 2
    assert split.test_centres == ["a", "b"] and split.n_folds == 2
    for centre, fold in zip(split.test_centres, split.folds):
        assert fold == by_centre_split(samples, [centre], groups, 3, 0.2, 10).folds[0]
    one_centre = [s for s in samples if s.centre == "a"]
    with pytest.raises(ValueError, match="at least two centres"):
        leave_one_centre_out(one_centre)


def test_version_round_trips(tmp_path: Path) -> None:
    samples, groups = _data(80)
    split = kfold_split(samples, groups, n_folds=4, seed=5)
    assert split.to_dict()["version"] == 2
    again = Split.load(split.save(tmp_path / "s.json"))
    assert again == split and again.version == 2


def test_version_1_file_loads_with_a_note_once(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(splits_mod, "_NOTED", set())
    samples, groups = _data(80)
    current = kfold_split(samples, groups, n_folds=4, seed=5, dup_threshold=10)
    data = current.to_dict()
    del data["version"]  # as files written before the field
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    split = Split.load(path)
    assert split.version == 1 and split.folds == data["folds"]
    err = capsys.readouterr().err
    assert str(path) in err and "version-1 split" in err
    assert "without near-duplicate groups" in err and "--split-out" not in err
    # Not the check-data split (4 folds, seed 5): a command with the file's settings.
    assert "bus-mtl validate --config <the run's configs> --data.split=kfold" in err
    assert "--data.n_folds=4 --data.seed=5 --data.val_fraction=0.15" in err
    assert f"--data.dup_threshold=10 --data.split_out={tmp_path / 'old_v2.json'}" in err
    Split.load(path)
    assert capsys.readouterr().err == ""  # once per file
    # A version-1 file without groups has nothing to say; neither has a version-2 file.
    (tmp_path / "plain.json").write_text(json.dumps({**data, "groups": []}))
    Split.load(tmp_path / "plain.json")
    Split.load(current.save(tmp_path / "v2.json"))
    assert capsys.readouterr().err == ""


def test_committed_version_1_file_still_loads_with_the_check_data_command(
    capsys, monkeypatch
) -> None:
    monkeypatch.setattr(splits_mod, "_NOTED", set())
    split = Split.load(COMMITTED_V1)
    assert split.version == 1 and len(split.folds) == 5
    err = capsys.readouterr().err
    assert "bus-mtl check-data --busi <BUSI folder> --dup-threshold 10 --split-out" in err
    assert err.rstrip().endswith("busi_5fold_seed42_v2.json")


@pytest.mark.busi
def test_committed_v2_busi_split_validates_on_groups_in_proportion(busi_root: Path) -> None:
    """The committed BUSI split: the same test parts as version 1, and validation parts
    whose share of near-duplicate images is the training part's (version 1: 0 %)."""
    report = check_data(BUSISource(busi_root), image_size=64, dup_threshold=10)
    assert report.ok, report.errors[:5]
    new, old = Split.load(COMMITTED_V2), Split.load(COMMITTED_V1)
    assert new.version == 2 and new.kind == "kfold" and new.n_folds == 5
    assert (new.seed, new.dup_threshold, new.val_fraction) == (42, 10, 0.15)
    groups = [g for g in report.groups if len(g) > 1]
    assert sorted(map(sorted, new.groups)) == sorted(map(sorted, report.groups))
    assert new.check_against([s.id for s in report.samples], groups=report.groups) == []
    for k, (fold, before) in enumerate(zip(new.folds, old.folds)):
        assert fold["test"] == before["test"], k
        assert not straddling(fold, groups), k
        shares = grouped_shares(fold, groups)
        assert abs(shares["val"] - shares["train"]) <= 0.08, (k, shares)
        assert grouped_shares(before, groups)["val"] == 0.0  # what version 2 fixes


def test_regenerate_command_for_each_kind_of_split(tmp_path: Path) -> None:
    samples, groups = _data(120)
    path = tmp_path / "s.json"
    centres = leave_one_centre_out(samples, groups, seed=3, val_fraction=0.2)
    assert splits_mod.regenerate_command(centres, path).startswith(
        "bus-mtl cv --config <the run's configs> --protocol by_centre --data.seed=3 "
    )
    one = by_centre_split(samples, ["b"], groups, seed=3)
    command = splits_mod.regenerate_command(one, path)
    assert "bus-mtl validate" in command and "'--data.test_centres=[\"b\"]'" in command
    assert command.endswith(f"--data.split_out={tmp_path / 's_v2.json'}")
    held = kfold_split(samples, groups, n_folds=5, seed=42)
    held.tuning = [samples[0].id]
    assert "--data.tuning=exclude" in splits_mod.regenerate_command(held, path)
