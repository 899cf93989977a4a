"""Loader batches: uint8 through the workers, augmentation a function of (seed, epoch, index)
whatever the worker count, preloading or resume, and ``bus-mtl bench data`` on a tiny set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bus_mtl.data import BUSDataModule
from bus_mtl.data.dataset import normalize_batch, normalize_image


def _dm(source, tmp_path: Path, **kw) -> BUSDataModule:
    args = dict(
        image_size=64,
        batch_size=4,
        n_folds=4,
        val_fraction=0.0,
        cache_dir=str(tmp_path / "cache"),
        seed=0,
        augmentation="strong",
    )
    args.update(kw)
    dm = BUSDataModule(source, **args)
    dm.setup("fit")
    return dm


def _epoch(loader) -> dict[str, tuple[bytes, bytes]]:
    out = {}
    for b in loader:
        assert b["image"].dtype == torch.uint8 and b["mask"].dtype == torch.uint8
        for i, sample_id in enumerate(b["id"]):
            out[sample_id] = (b["image"][i].numpy().tobytes(), b["mask"][i].numpy().tobytes())
    return out


def test_augmentation_depends_only_on_seed_epoch_and_index(synthetic_source, tmp_path: Path):
    inline = _dm(synthetic_source, tmp_path)  # preloaded arrays, no workers
    assert inline.datasets["train"].pixels is not None
    loader = inline.train_dataloader()
    first = [_epoch(loader) for _ in range(2)]
    assert first[0].keys() == first[1].keys()
    assert any(first[0][k] != first[1][k] for k in first[0])  # epochs draw differently
    # Two workers, each sample read from its cached .npy: the same pixels, epoch by epoch.
    workers = _dm(synthetic_source, tmp_path, num_workers=2, preload=False)
    assert workers.datasets["train"].pixels is None
    loader = workers.train_dataloader()
    assert [_epoch(loader) for _ in range(2)] == first
    # A resumed run (sampler at epoch 1 from the start) draws what epoch 1 drew.
    resumed = _dm(synthetic_source, tmp_path)
    loader = resumed.train_dataloader()
    loader.sampler.set_epoch(1)
    assert _epoch(loader) == first[1]


def test_items_never_alias_the_preloaded_arrays(synthetic_source, tmp_path: Path):
    dm = _dm(synthetic_source, tmp_path, augmentation="none")
    ds = dm.datasets["train"]
    before = ds.pixels.copy()
    item = ds[0]
    item["image"].fill_(7)
    item["mask"].fill_(1)
    assert np.array_equal(ds.pixels, before)
    assert np.array_equal(ds[0]["image"][0].numpy(), before[0, 0])


def test_normalize_image_and_batch() -> None:
    x = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    y = normalize_image(x, 0.25, 0.5)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, (x.double() / 255 - 0.25).div(0.5).float())
    assert normalize_image(y, 0.25, 0.5) is y  # float = normalised already
    with pytest.raises(TypeError, match="int32"):
        normalize_image(x.int(), 0.25, 0.5)
    batch = {"image": x, "mask": (x > 100).to(torch.uint8), "id": ["a"]}
    out = normalize_batch(batch, 0.25, 0.5)
    assert out["mask"].dtype == torch.float32 and out["id"] == ["a"]
    assert batch["image"] is x  # the loader's batch is not modified
    twice = normalize_batch(out, 0.25, 0.5)
    assert torch.equal(twice["image"], out["image"])


def test_loader_bench_runs_on_a_tiny_set(busi_tree: Path, tmp_path: Path, monkeypatch, capsys):
    from bus_mtl.benchmarks import data as bench

    monkeypatch.setenv("BUS_MTL_DATA", str(busi_tree))
    out = tmp_path / "bench.json"
    args = ["--image-size", "32", "--batch-size", "2", "--workers", "0", "--rounds", "2"]
    assert bench.main([*args, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "using BUSI at" in text and "image uint8" in text
    assert "warm / naive = " in text and "goal >= 5x" in text
    numbers = json.loads(out.read_text())
    assert len(numbers["warm_images_per_s"]) == len(numbers["naive_images_per_s"]) == 2
    assert numbers["ratio"] == pytest.approx(numbers["warm_median"] / numbers["naive_median"])
    assert numbers["batch_image_dtype"] == "torch.uint8" and numbers["preload"] is True
