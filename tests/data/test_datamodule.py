import os
from pathlib import Path

import numpy as np
import pytest
import torch

import bus_mtl.data.cache as cache_mod
from bus_mtl.data import BUSDataModule, BUSISource, DataError, ManifestSource, SyntheticSource


def _dm(source, tmp_path: Path, **kw) -> BUSDataModule:
    args = dict(image_size=64, batch_size=4, n_folds=4, cache_dir=str(tmp_path / "cache"), seed=0)
    args.update(kw)
    return BUSDataModule(source, **args)


def test_batch_contract(synthetic_source, tmp_path: Path) -> None:
    dm = _dm(synthetic_source, tmp_path, split_out=str(tmp_path / "split.json"))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    # Loader batches carry raw uint8 pixels (normalised on the device, see below).
    assert batch["image"].shape == (4, 1, 64, 64) and batch["image"].dtype == torch.uint8
    assert batch["mask"].shape == (4, 1, 64, 64) and batch["mask"].dtype == torch.uint8
    assert set(batch["mask"].unique().tolist()) <= {0, 1}
    assert batch["label"].dtype == torch.long and batch["label"].shape == (4,)
    assert (
        isinstance(batch["id"], list)
        and isinstance(batch["centre"], list)
        and batch["centre"][0] == "synthetic"
    )
    assert dm.num_classes == 1 and dm.class_names == ["benign", "malignant"] and dm.in_channels == 1
    # Normalisation is that of the training images: un-augmented training batches are ~N(0, 1).
    norm = dm.normalization
    raw = (
        np.stack([dm.datasets["train"].load_pair(i)[0] for i in range(len(dm.datasets["train"]))])
        / 255
    )
    assert norm["mean"] == pytest.approx(raw.mean(), abs=1e-4) and norm["std"] == pytest.approx(
        raw.std(), abs=1e-4
    )
    raw_test = next(iter(dm.test_dataloader()))
    test = dm.on_after_batch_transfer(raw_test, 0)  # what Lightning's steps receive
    assert test["image"].dtype == torch.float32 and test["mask"].dtype == torch.float32
    assert set(test["mask"].unique().tolist()) <= {0.0, 1.0}
    expected = (dm.datasets["test"].load_pair(0)[0] / 255 - norm["mean"]) / norm["std"]
    np.testing.assert_allclose(test["image"][0, 0].numpy(), expected, atol=1e-4)
    assert (tmp_path / "split.json").is_file()
    sizes = {k: len(v) for k, v in dm.datasets.items()}
    assert sizes["test"] == 8 and sizes["train"] + sizes["val"] == 24


def test_test_part_carries_original_size_masks(busi_tree: Path, tmp_path: Path) -> None:
    from bus_mtl.data.io import read_image, read_masks

    dm = _dm(BUSISource(busi_tree, normal="class"), tmp_path, image_size=32, n_folds=3)
    dm.setup("test")
    assert "orig_mask" not in next(iter(dm.train_dataloader()))
    batch = next(iter(dm.test_dataloader()))
    assert batch["mask"].shape[-2:] == (32, 32)
    assert isinstance(batch["orig_mask"], list) and len(batch["orig_mask"]) == len(batch["id"])
    samples = {s.id: s for s in dm.datasets["test"].samples}
    for sample_id, mask in zip(batch["id"], batch["orig_mask"]):
        s = samples[sample_id]
        expected = read_masks(s.masks, read_image(s.image).shape)
        assert mask.shape == (64, 64) and torch.equal(mask, torch.from_numpy(expected))


def test_three_channels_and_normal_class(busi_tree: Path, tmp_path: Path) -> None:
    dm = _dm(
        BUSISource(busi_tree, normal="class"),
        tmp_path,
        in_channels=3,
        n_folds=3,
        val_fraction=0.0,
        dup_threshold=-1,
    )
    assert dm.num_classes == 3 and dm.class_names == ["benign", "malignant", "normal"]
    dm.setup("fit")
    b = next(iter(dm.test_dataloader()))
    assert b["image"].shape[1] == 3
    assert torch.equal(b["image"][:, 0], b["image"][:, 2])
    assert sorted(len(dm.datasets["test"].samples) for _ in range(1)) == [3]


def test_cache_no_png_decode_after_setup_and_invalidation(
    synthetic_root: Path, tmp_path: Path, monkeypatch
) -> None:
    src = ManifestSource(synthetic_root / "manifest.csv", centre="synthetic")
    dm = _dm(src, tmp_path)
    dm.setup("fit")

    def boom(*a, **k):
        raise AssertionError("a PNG was decoded after setup")

    monkeypatch.setattr(cache_mod, "read_image", boom)
    for _ in range(2):
        n = sum(len(b["id"]) for b in dm.train_dataloader())
        assert n > 0
    # A second DataModule over the same files also decodes nothing (setup included).
    _dm(src, tmp_path).setup("fit")
    monkeypatch.undo()
    # Changing a file changes its key: its entry is rebuilt from the new pixels.
    sample = dm.datasets["train"].samples[0]
    key_before = cache_mod.sample_key(sample)
    st = sample.image.stat()
    os.utime(sample.image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cache_mod.sample_key(sample) != key_before


def test_workers(synthetic_source, tmp_path: Path) -> None:
    dm = _dm(synthetic_source, tmp_path, num_workers=2, augmentation="strong")
    dm.setup("fit")
    ids = [i for b in dm.train_dataloader() for i in b["id"]]
    assert sorted(ids) == sorted(s.id for s in dm.datasets["train"].samples)


def test_custom_augmentation_keeps_masks_binary(synthetic_source, tmp_path: Path) -> None:
    aug = [
        {"name": "Affine", "rotate": (20, 20), "p": 1.0},
        {"class_path": "albumentations.VerticalFlip", "init_args": {"p": 1.0}},
    ]
    dm = _dm(synthetic_source, tmp_path, augmentation=aug)
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    assert set(b["mask"].unique().tolist()) == {0.0, 1.0}
    item = dm.datasets["train"][0]
    raw_mask = dm.datasets["train"].load_pair(0)[1]
    assert not np.array_equal(item["mask"][0].numpy(), raw_mask)  # the flip/rotation applied


@pytest.mark.parametrize(
    "kw,key",
    [
        ({"fold": 5}, "fold"),
        ({"image_size": 100}, "image_size"),
        ({"augmentation": "medium"}, "augmentation"),
        ({"augmentation": [{"name": "NoSuchTransform"}]}, "NoSuchTransform"),
        ({"split": "random"}, "split"),
        ({"split": "file"}, "split_file"),
        ({"split": "by_centre"}, "test_centres"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"in_channels": 2}, "in_channels"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_config_names_the_key(synthetic_source, tmp_path: Path, kw: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        _dm(synthetic_source, tmp_path, **kw)


def test_cache_inside_data_folder_refused(synthetic_root: Path) -> None:
    with pytest.raises(ValueError, match="cache_dir"):
        BUSDataModule(
            SyntheticSource(n=32, image_size=64, seed=0, root=synthetic_root),
            cache_dir=str(synthetic_root / "c"),
        )


def test_split_file_roundtrip(synthetic_source, tmp_path: Path) -> None:
    first = _dm(synthetic_source, tmp_path, split_out=str(tmp_path / "s.json"), fold=2)
    first.setup("fit")
    again = _dm(
        synthetic_source, tmp_path, split="file", split_file=str(tmp_path / "s.json"), fold=2
    )
    again.setup("fit")
    for part in ("train", "val", "test"):
        assert [s.id for s in again.datasets[part].samples] == [
            s.id for s in first.datasets[part].samples
        ]
    bad = tmp_path / "other.json"
    bad.write_text((tmp_path / "s.json").read_text().replace("phantom_00001", "phantom_99999"))
    with pytest.raises(DataError, match="other.json"):
        _dm(synthetic_source, tmp_path, split="file", split_file=str(bad)).setup("fit")
