"""``BUSDataModule``: sources → validated, cached, split, augmented batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from bus_mtl.data.cache import DecodeCache
from bus_mtl.data.check import DataReport, check_data
from bus_mtl.data.dataset import (
    BUSDataset,
    EpochSampler,
    collate_samples,
    normalize_batch,
    seed_worker_augmentation,
)
from bus_mtl.data.duplicates import DEFAULT_DUP_THRESHOLD
from bus_mtl.data.errors import DataError
from bus_mtl.data.io import check_resize
from bus_mtl.data.paths import default_cache_dir
from bus_mtl.data.sample import CLASS_NAMES
from bus_mtl.data.sources.base import Source, as_source
from bus_mtl.data.splits import Split, SplitSettings, make_split, tuning_fingerprint
from bus_mtl.data.transforms import build_augmentation, build_pipeline


class BUSDataModule(L.LightningDataModule):
    """Breast-ultrasound batches for joint segmentation + classification.

    Batches are dicts: ``image`` B×C×H×W, ``mask`` B×1×H×W in {0,1}, ``label`` long B (-1 =
    no class label), ``id`` list[str], ``centre`` list[str]. The loaders yield ``image`` and
    ``mask`` as **uint8** (raw pixels: 4× less worker-to-trainer traffic than float32);
    :meth:`on_after_batch_transfer`, which Lightning calls once the batch is on the device,
    turns them into what every step and callback sees: ``image`` float32 normalised with
    :attr:`normalization`, ``mask`` float32. Code that iterates a loader itself calls
    :meth:`normalize_batch` (idempotent: a float image is not normalised twice).

    ``setup()`` checks the whole dataset first (every file decoded once into the cache) and
    raises one :class:`~bus_mtl.data.errors.DataError` listing every problem, so bad data
    fails before the first training step. Images become a square ``image_size`` input as
    ``resize`` says: stretched (``squash``, as most BUS papers do) or letterboxed. Normalisation
    statistics are the mean/std of the fold's training images unless ``mean``/``std`` are given.

    Args:
        sources: one source or a list (their samples are concatenated; ids must differ).
        split: ``"kfold"`` (stratified grouped k-fold), ``"by_centre"`` (test on
            ``test_centres``) or ``"file"`` (read ``split_file``).
        n_folds: number of folds for ``kfold``.
        fold: the fold used (its test part is test/predict; val is carved from the rest).
        split_file: split JSON to read when ``split="file"``.
        test_centres: held-out centres for ``by_centre``.
        val_fraction: grouped, stratified share of the non-test data used for validation.
        dup_threshold: pHash Hamming distance for near-duplicate groups (-1 disables).
        drop_conflicting: drop every image of a near-duplicate group whose labels disagree
            (e.g. ``benign (333)`` and ``malignant (77)``: 6 groups, 14 images of BUSI's
            647) from training, validation and test. Off by default: the paper kept the
            data as published. The split is made on all images either way (so folds are the
            same with and without dropping, and a whole group is dropped, never part of
            one); the fold's parts then leave the dropped images out, also when they come
            from a split file, and ``setup()`` prints the groups and images dropped.
        image_size: side of the square network input; a multiple of 32.
        in_channels: 1, or 3 (gray replicated, for ImageNet-style encoders).
        batch_size: batch size of every loader.
        num_workers: DataLoader worker processes.
        augmentation: preset ``none|light|strong`` or a list of transform dicts.
        cache_dir: decode cache (default ``$BUS_MTL_CACHE`` or ``~/.cache/bus_mtl``).
        seed: split and augmentation seed.
        split_out: where to write the split JSON (default: not written).
        mean: fixed normalisation mean (in [0, 1] units); default: from training images.
        std: fixed normalisation std; default: from training images.
        tuning: the tuning hold-out, a grouped, (centre, label)-stratified
            ``tuning_fraction`` of all images drawn with ``seed`` (near-duplicate groups
            whole; see :func:`~bus_mtl.data.splits.tuning_holdout`). ``"off"`` (default):
            no hold-out, every image is in the folds. ``"tune"``: train on every image
            outside the hold-out and validate on the hold-out (test part empty; what sweep
            trials use). ``"exclude"``: the hold-out is in no fold's train, validation or
            test part (what ``bus-mtl cv`` uses after a sweep). ``"train"``: the folds of
            ``exclude``, with the hold-out added to the training part (a final model that
            also learns from the images its recipe was chosen on; its validation and test
            parts are those of ``exclude``). The split records it as
            ``tuning`` (with its fingerprint); a split file that has one is used as is.
        tuning_fraction: share of the images in the tuning hold-out, in (0, 1).
        preload: hold each part's decoded arrays in RAM (N×2×size² uint8; all of BUSI at
            256² is 85 MB), shared with the loader workers, instead of reading one cached
            ``.npy`` per item.
        resize: how an image becomes the square input (:func:`~bus_mtl.data.io.fit_to_square`):
            ``"squash"`` (default) stretches it to ``image_size``², losing the aspect ratio;
            ``"letterbox"`` scales the longer side to ``image_size`` and pads the shorter one
            symmetrically with 0 (image and mask), so a lesion keeps its shape (taller than
            wide is a malignancy cue) whatever the centre's image format. Augmentation runs on
            the padded square. Recorded in checkpoints (``checkpoint["bus_mtl"]["resize"]``),
            so prediction, export and original-size test metrics undo the same geometry.
    """

    def __init__(
        self,
        sources: Source | list[Source],
        split: str = "kfold",
        n_folds: int = 5,
        fold: int = 0,
        split_file: str | None = None,
        test_centres: list[str] | None = None,
        val_fraction: float = 0.15,
        dup_threshold: int = DEFAULT_DUP_THRESHOLD,
        drop_conflicting: bool = False,
        image_size: int = 256,
        in_channels: int = 1,
        batch_size: int = 16,
        num_workers: int = 0,
        augmentation: str | list[dict[str, Any]] = "light",
        cache_dir: str | None = None,
        seed: int = 42,
        split_out: str | None = None,
        mean: float | None = None,
        std: float | None = None,
        tuning: str = "off",
        tuning_fraction: float = 0.15,
        preload: bool = True,
        resize: Literal["squash", "letterbox"] = "squash",
    ) -> None:
        super().__init__()
        check_resize(resize)
        SplitSettings(  # raises ValueError naming a bad split, n_folds, tuning, ... option
            kind=split,
            n_folds=n_folds,
            seed=seed,
            val_fraction=val_fraction,
            dup_threshold=dup_threshold,
            test_centres=test_centres,
            split_file=split_file,
            tuning=tuning,
            tuning_fraction=tuning_fraction,
        )
        if split == "kfold" and not 0 <= fold < n_folds:
            raise ValueError(f"fold: {fold} out of range for n_folds={n_folds}")
        if split != "kfold" and fold < 0:
            raise ValueError(f"fold: must be >= 0, got {fold}")
        if split == "by_centre" and fold != 0:
            raise ValueError(f"fold: a by_centre split has one fold (0), got {fold}")
        if split == "by_centre" and not test_centres:
            raise ValueError("test_centres: required when split='by_centre'")
        if not isinstance(drop_conflicting, bool):
            raise ValueError(
                f"drop_conflicting: must be true or false, got {drop_conflicting!r}; "
                "set data.drop_conflicting: true to drop cross-class near-duplicate groups"
            )
        if drop_conflicting and dup_threshold < 0:
            raise ValueError(
                f"drop_conflicting: needs near-duplicate groups, but dup_threshold is "
                f"{dup_threshold} (detection off); set dup_threshold >= 0 (default "
                f"{DEFAULT_DUP_THRESHOLD}) or drop_conflicting: false"
            )
        if image_size < 32 or image_size % 32:
            raise ValueError(f"image_size: must be a positive multiple of 32, got {image_size}")
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels: must be 1 or 3, got {in_channels}")
        if batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers: must be >= 0, got {num_workers}")
        if std is not None and std <= 0:
            raise ValueError(f"std: must be positive, got {std}")
        build_augmentation(augmentation)  # raises ValueError naming a bad preset/transform
        self.source = as_source(sources)
        self.split_kind = split
        self.n_folds = n_folds
        self.fold = fold
        self.split_file = split_file
        self.test_centres = list(test_centres) if test_centres else None
        self.val_fraction = val_fraction
        self.dup_threshold = dup_threshold
        self.drop_conflicting = drop_conflicting
        self._image_size = image_size
        self._resize = resize
        self._in_channels = in_channels
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.augmentation = augmentation
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self._check_cache_outside_data()
        self.seed = seed
        self.split_out = split_out
        self._fixed_norm = (mean, std)
        self.tuning = tuning
        self.tuning_fraction = float(tuning_fraction)
        self.preload = bool(preload)
        self._num_classes = 3 if self.source.has_normal_class else 1
        self.report: DataReport | None = None
        self.split: Split | None = None
        self.datasets: dict[str, BUSDataset] = {}
        #: ``{group id: [ids]}`` removed by ``drop_conflicting`` in ``setup()``.
        self.dropped_groups: dict[int, list[str]] = {}
        self._normalization: dict[str, float] | None = None

    def _check_cache_outside_data(self) -> None:
        cache = self.cache_dir.resolve()
        roots = [getattr(s, "root", None) for s in getattr(self.source, "sources", [self.source])]
        for root in roots:
            if root is None or not Path(root).exists():
                continue
            if cache == Path(root).resolve() or Path(root).resolve() in cache.parents:
                raise ValueError(
                    f"cache_dir: {cache} is inside the data folder {root}; choose another"
                )

    # Properties for LightningCLI link_arguments and for checkpoint metadata.
    @property
    def in_channels(self) -> int:
        return self._in_channels

    @property
    def num_classes(self) -> int:
        """1 (one malignancy logit) or 3 (benign/malignant/normal)."""
        return self._num_classes

    @property
    def image_size(self) -> int:
        return self._image_size

    @property
    def resize(self) -> str:
        """``"squash"`` or ``"letterbox"``: how images became the square input."""
        return self._resize

    @property
    def class_names(self) -> list[str]:
        return list(CLASS_NAMES[:3] if self._num_classes == 3 else CLASS_NAMES[:2])

    @property
    def normalization(self) -> dict[str, float]:
        """``{"mean", "std"}`` in [0, 1] units, computed in ``setup()``."""
        if self._normalization is None:
            mean, std = self._fixed_norm
            if mean is not None and std is not None:
                return {"mean": float(mean), "std": float(std)}
            raise RuntimeError(
                "normalization: call setup() first (it is computed from the training images)"
            )
        return dict(self._normalization)

    def class_counts(self, part: str = "train") -> list[int]:
        """Images per class label (0..K-1; label -1 not counted) in a part of the fold.

        What ``pos_weight="auto"`` and the other class weightings are computed from: the
        *training* part only, so the validation and test images never shape the loss.
        """
        if part not in self.datasets:
            raise RuntimeError(f"class_counts: no {part!r} part; call setup() first")
        k = max(self._num_classes, 2)
        counts = [0] * k
        for sample in self.datasets[part].samples:
            if 0 <= sample.label < k:
                counts[sample.label] += 1
        return counts

    @property
    def split_settings(self) -> SplitSettings:
        """The options that decide the split (what :func:`~bus_mtl.data.splits.make_split`
        draws in ``setup()``; ``bus-mtl cv`` draws its split file from them too)."""
        return SplitSettings(
            self.split_kind,
            self.n_folds,
            self.seed,
            self.val_fraction,
            self.dup_threshold,
            self.test_centres,
            self.split_file,
            self.tuning,
            self.tuning_fraction,
        )

    def check(self) -> DataReport:
        """Check the whole dataset (every file decoded once into the cache) and keep the
        report; raises one :class:`~bus_mtl.data.errors.DataError` listing every problem."""
        if self.report is None:
            report = check_data(
                self.source,
                self._image_size,
                self.cache_dir,
                self.dup_threshold,
                self.num_workers or None,
                self._resize,
            )
            report.raise_if_errors()
            self.report = report
        return self.report

    def _tested_centres(self) -> set[str]:
        """The centres this fold of a ``by_centre`` split tests on (none for other splits):
        fold k's of a leave-one-centre-out split, all of ``test_centres`` for a one-fold one."""
        split = self.split
        if split is None or split.kind != "by_centre" or not split.test_centres:
            return set()
        if split.n_folds > 1:
            return {split.test_centres[self.fold]}
        return set(split.test_centres)

    def _apply_tuning(
        self, parts: dict[str, list[str]], centre_of: dict[str, str]
    ) -> dict[str, list[str]]:
        """The fold's parts without the hold-out (``exclude``), or with it in the training
        part only (``train``; for a ``by_centre`` fold, only its images from the centres
        trained on), and a line saying so."""
        split = self.split
        if self.tuning == "off" or split is None or not split.tuning:
            return parts
        held = split.tuning
        fingerprint = tuning_fingerprint(held)
        if self.tuning == "tune":
            print(
                f"data.tuning=tune: training on {len(parts['train'])} image(s), validating on "
                f"the tuning hold-out of {len(held)} image(s) (fingerprint {fingerprint}, "
                f"seed {self.seed}, fraction {split.tuning_fraction})",
                flush=True,
            )
            self._log_tuning(fingerprint, len(held))
            return parts
        drop = set(held)
        kept = {name: [i for i in ids if i not in drop] for name, ids in parts.items()}
        removed = sum(len(ids) - len(kept[name]) for name, ids in parts.items())
        note = (
            f"; {removed} of them were in the parts of {self.split_file} and are left out here"
            if removed
            else ""
        )
        where = f"is in no part of fold {self.fold}"
        if self.tuning == "train":
            # A cross-centre fold never trains on the centre it tests: the hold-out's images
            # from that centre stay out of every part, as with exclude.
            tested = self._tested_centres()
            added = [i for i in sorted(drop) if centre_of[i] not in tested]
            kept["train"] = kept["train"] + added
            where = (
                f"joins fold {self.fold}'s training part ({len(kept['train'])} image(s)); it "
                "is in no validation or test part"
            )
            if len(added) < len(drop):
                where += (
                    f"; {len(drop) - len(added)} of its images, from the tested centre(s) "
                    f"{', '.join(sorted(tested))}, are in no part"
                )
        print(
            f"data.tuning={self.tuning}: the tuning hold-out of {len(held)} image(s) "
            f"(fingerprint {fingerprint}) {where}{note}",
            flush=True,
        )
        self._log_tuning(fingerprint, len(held))
        return kept

    def _log_tuning(self, fingerprint: str, n: int) -> None:
        """Put the hold-out's fingerprint into the run's logged config (e.g. W&B's)."""
        trainer = getattr(self, "trainer", None)
        for logger in getattr(trainer, "loggers", None) or []:
            logger.log_hyperparams({"tuning/fingerprint": fingerprint, "tuning/images": n})

    def _drop_conflicting(
        self, report: DataReport, parts: dict[str, list[str]]
    ) -> dict[str, list[str]]:
        """``parts`` without the images of cross-class near-duplicate groups (printed)."""
        self.dropped_groups = dict(report.conflicting_groups)
        drop = {i for g in self.dropped_groups.values() for i in g}
        kept = {name: [i for i in ids if i not in drop] for name, ids in parts.items()}
        where = ", ".join(f"{name} {len(ids) - len(kept[name])}" for name, ids in parts.items())
        named = sum(len(ids) - len(kept[name]) for name, ids in parts.items())
        note = ""
        if self.split_kind == "file" and named:
            note = (
                f"; the split file {self.split_file} names {named} of them: they are left "
                "out here, the file is unchanged"
            )
        listing = "; ".join(f"group {k}: {', '.join(g)}" for k, g in self.dropped_groups.items())
        print(
            f"data.drop_conflicting: dropped {len(drop)} image(s) of "
            f"{len(self.dropped_groups)} cross-class near-duplicate group(s) from fold "
            f"{self.fold} ({where}){note}" + (f": {listing}" if listing else ""),
            flush=True,
        )
        return kept

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        report = self.check()
        samples = report.samples
        self.split = make_split(samples, report.groups, self.split_settings)
        n = len(self.split.folds)
        if self.split_kind == "file" and self.tuning != "tune" and not 0 <= self.fold < n:
            raise DataError(f"fold: {self.fold} out of range; {self.split_file} has {n} fold(s)")
        if self.split_out:
            self.split.save(self.split_out)
        centre_of = {s.id: s.centre for s in samples}
        parts = self._apply_tuning(
            self.split.fold(0 if self.tuning == "tune" else self.fold), centre_of
        )
        if self.drop_conflicting:
            parts = self._drop_conflicting(report, parts)
        by_id = {s.id: s for s in samples}
        cache = DecodeCache(self._image_size, self.cache_dir, self._resize)
        chosen = {
            name: [by_id[i] for i in parts.get(name, [])] for name in ("train", "val", "test")
        }
        if not chosen["train"]:
            raise DataError(f"fold {self.fold}: the training part is empty")
        for name, subset in chosen.items():
            aug = self.augmentation if name == "train" else "none"
            # Augmentation only: images stay uint8 until on_after_batch_transfer.
            self.datasets[name] = BUSDataset(
                subset,
                cache,
                build_pipeline(aug, seed=self.seed),
                self._in_channels,
                report.keys,
                # Test metrics are reported on the clinician's mask at its own size.
                original_masks=name == "test",
            )
            if self.preload:
                self.datasets[name].preload()
        self._normalization = self._compute_normalization(self.datasets["train"])

    def _compute_normalization(self, train: BUSDataset) -> dict[str, float]:
        mean, std = self._fixed_norm
        if mean is not None and std is not None:
            return {"mean": float(mean), "std": float(std)}
        total, total_sq, count = 0.0, 0.0, 0
        for i in range(len(train)):
            img = train.load_pair(i)[0].astype(np.float64) / 255.0
            total += img.sum()
            total_sq += (img**2).sum()
            count += img.size
        m = total / count
        sd = max(np.sqrt(max(total_sq / count - m * m, 0.0)), 1e-3)
        return {
            "mean": round(float(m if mean is None else mean), 6),
            "std": round(float(sd if std is None else std), 6),
        }

    def _loader(self, name: str, train: bool = False) -> DataLoader:
        if not self.datasets:
            raise RuntimeError("call setup() before asking for a dataloader")
        return self.loader_for(self.datasets[name], train)

    def loader_for(self, ds: BUSDataset, train: bool = False) -> DataLoader:
        """The DataLoader this module builds (sampler, workers, collation) over ``ds``."""
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            sampler=EpochSampler(len(ds), seed=self.seed) if train else None,
            drop_last=train and len(ds) % self.batch_size == 1,  # no size-1 batch for BatchNorm
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            worker_init_fn=seed_worker_augmentation,
            collate_fn=collate_samples,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        """The fold's test part."""
        return self._loader("test")

    def normalize_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A loader batch as the steps take it: ``image`` float32 normalised with
        :attr:`normalization`, ``mask`` float32 (see
        :func:`~bus_mtl.data.dataset.normalize_batch`; a float image is left alone)."""
        norm = self.normalization
        return normalize_batch(batch, norm["mean"], norm["std"])

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Normalise on the device, once per batch (uint8 crossed the worker boundary)."""
        if not isinstance(batch, dict):
            return batch
        batch = self.normalize_batch(batch)
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            # Lightning cast the batch's float tensors for "*-true" precisions before the
            # transfer, when image and mask were still uint8: cast the new floats the same
            # way (a no-op for 32-true and the mixed precisions).
            batch = trainer.precision_plugin.convert_input(batch)
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "fold": self.fold,
            "resize": self._resize,
            "normalization": self._normalization,
            "class_names": self.class_names,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("normalization"):
            self._normalization = dict(state_dict["normalization"])
