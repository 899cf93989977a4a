"""The split the runners compute once: k-fold and the cross-centre (by_centre) protocol."""

from __future__ import annotations

import json

import pytest
import yaml

from bus_mtl.experiments.cv import fold_jobs, fold_names_for, make_split


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
    info = make_split([cfg], tmp_path / "split.json", "by_centre")
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
    make_split([cfg], tmp_path / "split.json", "kfold", folds=3, extra=["--data.seed=5"])
    split = json.loads((tmp_path / "split.json").read_text())
    tests = [set(f["test"]) for f in split["folds"]]
    assert sum(len(t) for t in tests) == 15 and len(set().union(*tests)) == 15
    assert split["seed"] == 5  # --data.* extra args reach the data module


def test_by_centre_needs_two_centres(tmp_path):
    cfg = data_config(tmp_path, {"busi": 10})
    with pytest.raises(ValueError, match="two centres"):
        make_split([cfg], tmp_path / "split.json", "by_centre")
