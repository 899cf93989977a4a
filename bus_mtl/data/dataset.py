"""Torch dataset over cached, decoded samples."""

from __future__ import annotations

import random
from collections.abc import Sequence

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, default_collate

from bus_mtl.data.cache import DecodeCache
from bus_mtl.data.io import read_masks
from bus_mtl.data.sample import Sample


class BUSDataset(Dataset):
    """Items are dicts: ``image`` C×H×W **uint8** (raw pixels, 0-255), ``mask`` 1×H×W uint8
    in {0,1}, ``label`` long scalar (-1 = no class label), ``id`` str, ``centre`` str; with
    ``original_masks=True`` also ``orig_mask``, the H0×W0 uint8 lesion mask at the image's
    original size (what test metrics are reported on; batch them with
    :func:`collate_samples`, which keeps these as a list).

    Images cross the worker boundary as uint8 (4× fewer bytes than float32); they are
    normalised once per batch, on the device, by :func:`normalize_batch`
    (``BUSDataModule.on_after_batch_transfer``). A ``transform`` that normalises itself
    (ends in ``A.Normalize``) gives float32 images instead, which ``normalize_batch`` leaves
    alone: the dtype says whether a batch is normalised.

    Args:
        samples: the samples to serve.
        cache: decode cache at the training size.
        transform: albumentations pipeline on uint8 image + mask (augmentation only:
            :func:`~bus_mtl.data.transforms.build_pipeline`).
        in_channels: 1, or 3 to replicate the grayscale channel.
        keys: precomputed cache keys by sample id (avoids ``stat`` calls per item).
        original_masks: also serve the mask at the original resolution (read from the
            source files on every access: meant for the test part, not for training).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        cache: DecodeCache,
        transform: A.Compose,
        in_channels: int = 1,
        keys: dict[str, str] | None = None,
        original_masks: bool = False,
    ) -> None:
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels: must be 1 or 3, got {in_channels}")
        self.samples = list(samples)
        self.cache = cache
        self.transform = transform
        self.in_channels = in_channels
        self.keys = keys or {}
        self.original_masks = original_masks
        #: N×2×H×W uint8 (image, mask) of every sample once :meth:`preload` ran, else None.
        self.pixels: np.ndarray | None = None

    def preload(self) -> np.ndarray:
        """Hold every sample's cached (image, mask) pair in one N×2×H×W uint8 array.

        Items are then slices of it: no file is opened or ``.npy`` header parsed per item.
        DataLoader workers inherit it from the parent by ``fork`` without copying (it is
        never written); under ``spawn`` each worker receives a copy once.
        """
        if self.pixels is None:
            size = self.cache.image_size
            pixels = np.empty((len(self.samples), 2, size, size), np.uint8)
            for i, s in enumerate(self.samples):
                pixels[i] = self.cache.load(s, self.keys.get(s.id))
            self.pixels = pixels
        return self.pixels

    def __len__(self) -> int:
        return len(self.samples)

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self.pixels is not None:
            return self.pixels[index, 0], self.pixels[index, 1]
        s = self.samples[index]
        arr = self.cache.load(s, self.keys.get(s.id))
        return arr[0], arr[1]

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, object]:
        # EpochSampler yields (index, augmentation seed): the augmentation of a sample then
        # depends only on (seed, epoch, index), not on worker count or on a resume.
        index, aug_seed = index if isinstance(index, tuple) else (index, None)
        s = self.samples[index]
        image, mask = self.load_pair(index)
        if aug_seed is not None:
            reseed_transform(self.transform, aug_seed)
        out = self.transform(image=image, mask=mask)
        img, msk = out["image"], out["mask"]
        if self.pixels is not None:
            # An untouched image is a view of the preloaded array: never hand that out.
            img = img.copy() if np.may_share_memory(img, self.pixels) else img
            msk = msk.copy() if np.may_share_memory(msk, self.pixels) else msk
        # uint8 stays uint8 (normalised on the device); a self-normalising transform's
        # float output is served as float32.
        dtype = np.uint8 if img.dtype == np.uint8 else np.float32
        img = torch.from_numpy(np.ascontiguousarray(img, dtype=dtype))
        img = img.unsqueeze(0) if img.ndim == 2 else img.permute(2, 0, 1)
        if self.in_channels == 3 and img.shape[0] == 1:
            img = img.expand(3, -1, -1).contiguous()
        msk = torch.from_numpy(np.ascontiguousarray(msk, dtype=np.uint8))
        item: dict[str, object] = {
            "image": img,
            "mask": msk.reshape(1, *msk.shape[-2:]),
            "label": torch.tensor(s.label, dtype=torch.long),
            "id": s.id,
            "centre": s.centre,
        }
        if self.original_masks:
            item["orig_mask"] = torch.from_numpy(self.original_mask(index))
        return item

    def original_mask(self, index: int) -> np.ndarray:
        """H0×W0 uint8 lesion mask in {0, 1} at the image's original size."""
        s = self.samples[index]
        info = self.cache.inspect(s, self.keys.get(s.id))
        return read_masks(s.masks, (info.height, info.width))


# Items whose size differs between images: batched as lists, not stacked.
RAGGED_KEYS = ("orig_mask",)


def collate_samples(items: list[dict[str, object]]) -> dict[str, object]:
    """``default_collate`` for :class:`BUSDataset` items, with the variable-size entries
    (``orig_mask``) kept as a list of tensors. In a worker, ``default_collate`` stacks each
    tensor straight into shared memory, so the uint8 batch is copied once."""
    ragged = {k: [it.pop(k) for it in items] for k in RAGGED_KEYS if k in items[0]}
    batch = default_collate(items)
    batch.update(ragged)
    return batch


def normalize_image(image: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 B×C×H×W (or C×H×W) -> float32 ``(x/255 - mean) / std``, on ``image``'s device.

    The arithmetic of albumentations' ``Normalize(mean, std, max_pixel_value=255)`` on uint8
    (``(x - 255·mean) · 1/(255·std)`` in float32): the values the loaders gave when they
    normalised in the workers, to float32 rounding. A floating-point image is returned
    unchanged: it is normalised already.
    """
    if image.is_floating_point():
        return image
    if image.dtype != torch.uint8:
        raise TypeError(f"normalize_image: expected uint8 or float pixels, got {image.dtype}")
    return image.float().sub_(mean * 255.0).mul_(1.0 / (std * 255.0))


def normalize_batch(batch: dict[str, object], mean: float, std: float) -> dict[str, object]:
    """A loader batch (uint8 ``image`` and ``mask``) as the training/evaluation steps take it:
    ``image`` float32 normalised, ``mask`` float32 in {0, 1}; other keys untouched.

    Idempotent: a batch whose image is floating-point already is not normalised again, so
    normalisation happens exactly once whichever path calls this. Returns a new dict.
    """
    out = dict(batch)
    image = out.get("image")
    if isinstance(image, torch.Tensor):
        out["image"] = normalize_image(image, mean, std)
    mask = out.get("mask")
    if isinstance(mask, torch.Tensor) and not mask.is_floating_point():
        out["mask"] = mask.float()
    return out


def seed_worker_augmentation(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: give each worker its own augmentation stream.

    albumentations ``Compose`` keeps its own RNG, which forked workers would otherwise
    share (every worker would draw the same flips); torch's per-worker seed is distinct
    and follows ``seed_everything``. OpenCV's own thread pool is off library-wide (see
    ``bus_mtl.data.io``), so workers do not oversubscribe the cores.
    """
    info = torch.utils.data.get_worker_info()
    if info is None:
        return
    ds = info.dataset
    while hasattr(ds, "dataset"):  # Subset and friends
        ds = ds.dataset
    transform = getattr(ds, "transform", None)
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(info.seed % 2**32)


def reseed_transform(transform: A.BaseCompose, seed: int) -> None:
    """Seed an albumentations pipeline for one sample.

    ``Compose.set_random_seed`` gives every transform its *own generator with the same
    seed*, so e.g. a horizontal and a vertical flip with equal ``p`` always fire together.
    ``set_random_state`` instead shares one generator pair across the pipeline, and the
    transforms draw from it in turn; it is also ~10x cheaper per sample than reseeding each
    transform.
    """
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


class EpochSampler(Sampler[tuple[int, int]]):
    """Shuffles with ``torch.Generator().manual_seed(seed + epoch)`` and yields
    ``(index, augmentation_seed)`` pairs for :class:`BUSDataset`.

    Lightning calls ``set_epoch`` before each training epoch; when wrapped by its
    ``DistributedSamplerWrapper`` (which does not forward ``set_epoch``) the epoch advances
    by itself on every pass instead.
    """

    def __init__(self, length: int, seed: int = 0, shuffle: bool = True) -> None:
        self.length = length
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = (
            torch.randperm(self.length, generator=g) if self.shuffle else torch.arange(self.length)
        )
        seeds = torch.randint(0, 2**31 - 1, (self.length,), generator=g)
        self.epoch += 1
        return iter([(int(i), int(seeds[i])) for i in order])
