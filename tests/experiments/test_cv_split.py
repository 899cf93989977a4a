"""The split the runners compute once: k-fold and the cross-centre (by_centre) protocol,
drawn by the data module's :func:`~bus_mtl.data.splits.make_split`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bus_mtl import configs
from bus_mtl.experiments.cv import build_datamodule, fold_jobs, fold_names_for, write_split

SPLITS = Path(__file__).resolve().parents[2] / "experiments" / "splits"


def data_config(tmp_path, centres):
    sources = [
        {
            "class_path": "bus_mtl.data.SyntheticSource",
            "init_args": {
                "n": n,
                "image_size": 64,
                "seed": i,
                "root": str(tmp_path / c),
                "centre": c,
            },
        }
        for i, (c, n) in enumerate(centres.items())
    ]
    cfg = {
        "data": {
            "sources": sources,
            "image_size": 64,
            "dup_threshold": -1,
            "cache_dir": str(tmp_path / "cache"),
        },
        "trainer": {"max_epochs": 3},
    }
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_by_centre_split_has_one_fold_per_direction(tmp_path):
    cfg = data_config(tmp_path, {"busi": 12, "udiat": 8})
    info = write_split(build_datamodule([cfg]), tmp_path / "split.json", "by_centre")
    assert info["fold_names"] == ["udiat→busi", "busi→udiat"]
    split = json.loads((tmp_path / "split.json").read_text())
    for fold, test_centre, n_test in zip(split["folds"], ["busi", "udiat"], [12, 8]):
        assert len(fold["test"]) == n_test
        assert all(i.startswith(f"{test_centre}/") for i in fold["test"])
        assert not any(i.startswith(f"{test_centre}/") for i in fold["train"] + fold["val"])
    jobs = fold_jobs([cfg], tmp_path / "out", tmp_path / "split.json", seed=7)
    assert [j.fold_name for j in jobs] == fold_names_for(tmp_path / "split.json")
    args = jobs[1].base_args("fit")
    assert "--data.split=file" in args and "--data.fold=1" in args
    assert "--seed_everything=8" in args


def test_kfold_split_partitions_the_data(tmp_path):
    cfg = data_config(tmp_path, {"busi": 15})
    dm = build_datamodule([cfg], ["--data.seed=5"])
    write_split(dm, tmp_path / "split.json", "kfold", folds=3)
    split = json.loads((tmp_path / "split.json").read_text())
    tests = [set(f["test"]) for f in split["folds"]]
    assert sum(len(t) for t in tests) == 15 and len(set().union(*tests)) == 15
    assert split["seed"] == 5  # --data.* extra args reach the data module


def test_by_centre_needs_two_centres(tmp_path):
    cfg = data_config(tmp_path, {"busi": 10})
    with pytest.raises(ValueError, match="two centres"):
        write_split(build_datamodule([cfg]), tmp_path / "split.json", "by_centre")


@pytest.mark.parametrize("extra", [[], ["--data.tuning=exclude"]])
def test_cv_split_is_the_data_modules_split(tmp_path, extra):
    """cv's split.json is the split a data module with the same options draws in setup()."""
    cfg = data_config(tmp_path, {"busi": 15, "udiat": 9})
    options = ["--data.n_folds=3", "--data.fold=2", *extra]
    write_split(build_datamodule([cfg], options), tmp_path / "split.json", "kfold", folds=3)
    dm = build_datamodule([cfg], options)
    dm.setup("fit")
    assert json.loads((tmp_path / "split.json").read_text()) == dm.split.to_dict()
    # by_centre: cv's fold k is the data module's split that tests on centre k.
    write_split(build_datamodule([cfg], extra), tmp_path / "centres.json", "by_centre")
    folds = json.loads((tmp_path / "centres.json").read_text())["folds"]
    for fold, centre in zip(folds, ["busi", "udiat"]):
        by_centre = ["--data.split=by_centre", f'--data.test_centres=["{centre}"]']
        dm = build_datamodule([cfg], [*extra, *by_centre])
        dm.setup("fit")
        assert dm.split.folds == [fold]


@pytest.mark.busi
def test_cv_draws_the_committed_busi_split_and_holdout(tmp_path, busi_root):
    """experiments/splits/busi_5fold_seed42_v2.json, and the tuning hold-out of
    busi_tuning_seed42.json, are what cv draws today from the BUSI preset."""
    cfgs = [str(configs.preset("base.yaml")), str(configs.preset("busi_5fold.yaml"))]
    extra = ["--data.image_size=64", f"--data.sources.init_args.root={busi_root}"]
    write_split(build_datamodule(cfgs, extra), tmp_path / "split.json", "kfold", folds=5)
    committed = json.loads((SPLITS / "busi_5fold_seed42_v2.json").read_text())
    assert json.loads((tmp_path / "split.json").read_text()) == committed
    dm = build_datamodule(cfgs, [*extra, "--data.tuning=exclude"])
    write_split(dm, tmp_path / "held.json", "kfold", folds=5)
    held = json.loads((tmp_path / "held.json").read_text())
    record = json.loads((SPLITS / "busi_tuning_seed42.json").read_text())
    assert held["tuning"] == record["ids"] and held["tuning_fingerprint"] == record["fingerprint"]


def test_by_centre_with_the_holdout_trained_on_never_trains_on_the_tested_centre(tmp_path, capsys):
    """``data.tuning: train`` in a cross-centre run: the hold-out's images from the centre a
    fold tests on are in none of its parts; those from the centre it trains on join its
    training part."""
    cfg = data_config(tmp_path, {"busi": 40, "udiat": 30})
    extra = ["--data.tuning=train"]
    write_split(build_datamodule([cfg], extra), tmp_path / "split.json", "by_centre")
    for fold, tested in enumerate(["busi", "udiat"]):
        dm = build_datamodule([cfg], [*extra, "--data.split=file", f"--data.fold={fold}",
                                      f"--data.split_file={tmp_path / 'split.json'}"])  # fmt: skip
        dm.setup("fit")
        held = dm.split.tuning
        held_tested = [i for i in held if i.startswith(f"{tested}/")]
        assert held_tested and len(held_tested) < len(held)  # both centres in the hold-out
        parts = {name: {s.id for s in dm.datasets[name].samples} for name in dm.datasets}
        train_centres = {i.split("/")[0] for i in parts["train"] | parts["val"]}
        assert tested not in train_centres
        assert set(held) - set(held_tested) <= parts["train"]
        assert not set(held_tested) & (parts["train"] | parts["val"] | parts["test"])
        assert f"{len(held_tested)} of its images, from the tested centre(s) {tested}" in (
            capsys.readouterr().out
        )
