"""The one LightningModule: any ``bus_mtl.models`` variant, two losses, a weighting, metrics."""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from bus_mtl.training.checkpoint import build_metadata, net_config
from bus_mtl.training.losses import BCEClassLoss, CrossEntropyClassLoss, DiceBCELoss
from bus_mtl.training.metrics import ClassificationMetrics, SegmentationMetrics
from bus_mtl.training.reproducibility import collect_rng_states, seed_epoch, set_rng_states
from bus_mtl.training.weighting import FixedWeighting

STAGES = ("train", "val", "test")
# Per-image segmentation values of a test row, and the keys SegmentationMetrics.compute gives.
SEG_ROW_KEYS = ("dice", "iou", "hd95", "mask_area")
SEG_SUMMARY_KEYS = ("dice", "iou", "hd95", "hd95_undefined", "dice_lesion")
_MODULE_ARGS = ("net", "seg_loss", "cls_loss", "weighting", "optimizer", "scheduler")


def default_optimizer(params: Any) -> torch.optim.Optimizer:
    """AdamW, lr 1e-3, weight decay 1e-4: the recipe's default when none is configured."""
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)


class WarmupCosine(torch.optim.lr_scheduler.LambdaLR):
    """Linear warmup from 1 % of the learning rate, then cosine decay to 0, stepped per batch.

    ``total_steps`` and ``warmup_steps`` are attributes the factor reads at every step, so a
    run whose length is only known once it is under way (:class:`TimeBudget`) can re-plan
    them and still end its decay at 0 exactly on its last step.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int
    ) -> None:
        self.replan(total_steps, warmup_steps)
        super().__init__(optimizer, self.factor)

    def replan(self, total_steps: int, warmup_steps: int | None = None) -> None:
        self.total_steps = max(int(total_steps), 1)
        if warmup_steps is None:
            warmup_steps = self.warmup_steps
        self.warmup_steps = min(max(int(warmup_steps), 0), self.total_steps - 1)

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return 0.01 + 0.99 * step / self.warmup_steps
        progress = (step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    def state_dict(self) -> dict[str, Any]:
        # LambdaLR would try to pickle the bound method; the plan is what needs saving.
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambdas")}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update(state_dict)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int
) -> WarmupCosine:
    """Linear warmup from 1 % of the learning rate, then cosine decay to 0, stepped per batch."""
    return WarmupCosine(optimizer, total_steps, warmup_steps)


def malignancy_probability(logits: Tensor, temperature: Tensor | float = 1.0) -> Tensor:
    """B×K logits -> (B,) probability of class 1 (sigmoid for K = 1, softmax for K = 3)."""
    scaled = logits.float() / temperature
    if scaled.shape[1] == 1:
        return torch.sigmoid(scaled[:, 0])
    return torch.softmax(scaled, dim=1)[:, 1]


def class_probabilities(logits: Tensor, temperature: Tensor | float = 1.0) -> Tensor:
    """B×K logits -> (B,) malignancy probability for K = 1, B×K softmax for K = 3."""
    scaled = logits.float() / temperature
    if scaled.shape[1] == 1:
        return torch.sigmoid(scaled[:, 0])
    return torch.softmax(scaled, dim=1)


class MultiTaskModule(pl.LightningModule):
    """Trains one multi-task variant: mask loss + class loss, combined by a weighting.

    Args:
        net: a ``bus_mtl.models`` variant returning ``MTLOutput(mask, logits)``; a head that
            returns ``None`` contributes no loss and no metric.
        seg_loss: mask loss on B×1×H×W logits; ``None``: :class:`DiceBCELoss`.
        cls_loss: class loss on B×K logits and (B,) labels (-1 ignored); ``None``:
            :class:`BCEClassLoss` with ``pos_weight="auto"`` for K = 1,
            :class:`CrossEntropyClassLoss` with ``weight="auto"`` for K = 3. ``"auto"``
            weights come from the class counts of the fold's *training* part, resolved in
            ``setup("fit")``; give ``BCEClassLoss()`` to train without class weighting.
        weighting: combines ``{"seg": ..., "cls": ...}``; ``None``: fixed weights 1, 1.
        optimizer: LightningCLI optimizer callable; default AdamW(lr=1e-3, wd=1e-4).
        scheduler: LightningCLI scheduler callable (stepped per epoch, ``ReduceLROnPlateau``
            monitors ``val/loss``); ``None``: linear warmup over ``warmup_epochs`` then
            cosine decay to 0 over the whole run, stepped per batch.
        warmup_epochs: length of the default scheduler's warmup (may be fractional).
        threshold: probability above which a pixel is lesion, and an image malignant until
            a decision threshold is fitted. ``TemperatureCalibration`` fits the image-level
            one on the validation part at the end of fit (``decision_threshold`` buffer,
            stored in checkpoints); test metrics, ``predict`` and exports use that one.
        compile: run the net through ``torch.compile``.
        channels_last: channels-last memory format on GPU (ignored on CPU).
        log_images: how many validation images the ``ValidationImages`` callback draws.

    Shapes: ``batch["image"]`` B×C×H×W, ``batch["mask"]`` B×1×H×W, ``batch["label"]`` (B,).
    """

    def __init__(
        self,
        net: nn.Module,
        seg_loss: nn.Module | None = None,
        cls_loss: nn.Module | None = None,
        weighting: nn.Module | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
        warmup_epochs: float = 1.0,
        threshold: float = 0.5,
        compile: bool = False,
        channels_last: bool = True,
        log_images: int = 4,
    ) -> None:
        super().__init__()
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs!r}")
        if log_images < 0:
            raise ValueError(f"log_images must be >= 0, got {log_images!r}")
        self.has_seg = bool(getattr(net, "has_seg", True))
        self.has_cls = bool(getattr(net, "has_cls", True))
        if not (self.has_seg or self.has_cls):
            raise ValueError(f"{type(net).__name__} has neither a mask nor a class head")
        # Under LightningCLI the hparams are the sub-configs (class_path + init_args): kept, so
        # load_from_checkpoint can rebuild everything. Outside it they would be module
        # instances, pickled a second time beside the state_dict.
        cli_hparams = _cli_hparams()
        self.save_hyperparameters(ignore=None if cli_hparams is not None else list(_MODULE_ARGS))
        self.net_config = net_config(net, cli_hparams)
        self.net = net
        self.num_classes = int(getattr(net, "num_classes", 1))
        self.seg_loss = (seg_loss or DiceBCELoss()) if self.has_seg else None
        if cls_loss is None and self.has_cls:
            cls_loss = (
                BCEClassLoss(pos_weight="auto")
                if self.num_classes == 1
                else CrossEntropyClassLoss(weight="auto")
            )
        self.cls_loss = cls_loss if self.has_cls else None
        self.weighting = weighting or FixedWeighting()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.warmup_epochs = warmup_epochs
        self.threshold = threshold
        self.compile = compile
        self.channels_last = channels_last
        self.log_images = log_images
        self.register_buffer("temperature", torch.ones(()))
        # Image-level decision threshold on the calibrated malignancy probability; fitted on
        # the validation part by TemperatureCalibration (Youden's J by default).
        self.register_buffer("decision_threshold", torch.tensor(float(threshold)))
        self.threshold_rule = "fixed"
        # (n_benign, n_malignant[, n_normal]) of the fold's training part, set in setup().
        self.class_counts: list[int] | None = None
        for stage in STAGES:
            # HD95 runs on the CPU: computing it every training step would stall the GPU.
            seg = (
                SegmentationMetrics(threshold=threshold, with_hd95=stage != "train")
                if self.has_seg
                else None
            )
            cls = ClassificationMetrics(num_classes=self.num_classes, threshold=threshold)
            setattr(self, f"{stage}_seg_metrics", seg)
            setattr(self, f"{stage}_cls_metrics", cls if self.has_cls else None)
        # Test segmentation at each image's original size (the batch's ``orig_mask``); the
        # working-resolution figures above are then logged beside them as ``*_input``.
        self.test_seg_orig_metrics = (
            SegmentationMetrics(threshold=threshold) if self.has_seg else None
        )
        self._compiled: nn.Module | None = None
        self._pending_rng_states: tuple[int, dict[str, Any]] | None = None
        # The loss terms of the latest training step, for the FiniteLossGuard callback.
        self.last_losses: dict[str, Tensor] = {}

    # ------------------------------------------------------------------ forward
    def setup(self, stage: str) -> None:
        self._resolve_class_weights(stage)
        if self.compile and self._compiled is None:
            # Kept out of the module tree so state_dict keys stay "net.*".
            object.__setattr__(self, "_compiled", torch.compile(self.net))

    def _resolve_class_weights(self, stage: str) -> None:
        """Give a class loss with ``"auto"`` weights the training part's class counts."""
        resolve = getattr(self.cls_loss, "set_class_counts", None)
        if resolve is None or stage == "predict":
            return  # (val/test losses are logged too, so every other stage needs weights)
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        counts = getattr(datamodule, "class_counts", None)
        k = max(self.num_classes, 2)
        if counts is None:
            if _wants_auto(self.cls_loss):
                warnings.warn(
                    f"{type(self.cls_loss).__name__}: class weighting 'auto' needs a datamodule "
                    "with class_counts() (BUSDataModule); training without one, so the classes "
                    "are weighted equally",
                    RuntimeWarning,
                    stacklevel=2,
                )
                resolve([1] * k)
            return
        self.class_counts = list(counts("train"))
        resolve(self.class_counts[:k])

    def on_fit_start(self) -> None:
        weights = {
            k: v
            for k, v in (
                ("pos_weight", getattr(self.cls_loss, "resolved_pos_weight", None)),
                ("focal_alpha", getattr(self.cls_loss, "resolved_alpha", None)),
            )
            if v is not None
        }
        if self.class_counts is not None:
            weights["train_class_counts"] = self.class_counts
        if weights:
            for logger in self.loggers:
                logger.log_hyperparams(weights)
        if self._use_channels_last():
            self.net.to(memory_format=torch.channels_last)

    def _use_channels_last(self) -> bool:
        return self.channels_last and self.device.type == "cuda"

    def forward(self, image: Tensor) -> Any:
        """B×C×H×W normalised image -> ``MTLOutput(mask=B×1×H×W | None, logits=B×K | None)``."""
        if image.dtype == torch.uint8:
            raise TypeError(
                "MultiTaskModule got a uint8 image: BUSDataModule's loaders yield raw pixels, "
                "normalised on the device by its on_after_batch_transfer; pass the datamodule "
                "(trainer.fit/validate/test/predict(model, datamodule=dm)), or normalise a "
                "batch you iterate yourself with dm.normalize_batch(batch)"
            )
        if self._use_channels_last():
            image = image.contiguous(memory_format=torch.channels_last)
        net = self._compiled if self._compiled is not None else self.net
        return net(image)

    # ------------------------------------------------------------------ steps
    def _losses(self, out: Any, batch: dict[str, Any]) -> dict[str, Tensor]:
        losses: dict[str, Tensor] = {}
        # Losses in float32 even under bf16/16-mixed autocast.
        if self.seg_loss is not None and out.mask is not None:
            losses["seg"] = self.seg_loss(out.mask.float(), batch["mask"].float())
        if self.cls_loss is not None and out.logits is not None:
            losses["cls"] = self.cls_loss(out.logits.float(), batch["label"])
        return losses

    def _shared_step(self, batch: dict[str, Any], stage: str) -> tuple[Any, Tensor]:
        out = self(batch["image"])
        losses = self._losses(out, batch)
        total, weights = self.weighting(losses)
        bs = batch["image"].shape[0]
        on_step = stage == "train"
        log = {f"{stage}/loss": total}
        log.update({f"{stage}/loss_{k}": v for k, v in losses.items()})
        self.log_dict(
            log, on_step=on_step, on_epoch=True, prog_bar=False, batch_size=bs, sync_dist=True
        )
        if stage == "train":
            self.last_losses = {"loss": total.detach()}
            self.last_losses.update({f"loss_{k}": v.detach() for k, v in losses.items()})
            self.log_dict(
                {f"train/w_{k}": v for k, v in weights.items()},
                on_step=True,
                on_epoch=False,
                batch_size=bs,
            )
        self._update_metrics(stage, out, batch)
        return out, total

    def _update_metrics(self, stage: str, out: Any, batch: dict[str, Any]) -> None:
        seg = getattr(self, f"{stage}_seg_metrics")
        cls = getattr(self, f"{stage}_cls_metrics")
        if seg is not None and out.mask is not None:
            seg.update(out.mask.detach().float(), batch["mask"])
        if cls is not None and out.logits is not None:
            cls.update(out.logits.detach().float() / self.temperature, batch["label"])

    def _log_epoch_metrics(self, stage: str) -> None:
        values: dict[str, Tensor] = {}
        for kind in ("seg", "cls"):
            metric = getattr(self, f"{stage}_{kind}_metrics")
            if metric is not None and metric.update_called:
                values.update(metric.compute())
                metric.reset()
        orig = self.test_seg_orig_metrics if stage == "test" else None
        if orig is not None and orig.update_called:
            # Reported at the original size; the working-resolution figures stay beside
            # them, labelled ``*_input``.
            seg_keys = [k for k in values if k in SEG_SUMMARY_KEYS]
            values.update({f"{k}_input": values.pop(k) for k in seg_keys})
            values.update(orig.compute())
            orig.reset()
        if not values:
            return
        score_parts = [values[k] for k in ("dice", "auc") if k in values]
        if score_parts:
            # One number to select checkpoints by: both tasks count when both heads exist.
            values["score"] = torch.stack([torch.as_tensor(v).float() for v in score_parts]).mean()
        # Values come from synced torchmetrics states already.
        self.log_dict(
            {f"{stage}/{k}": torch.as_tensor(v).float() for k, v in values.items()},
            prog_bar=False,
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        _, total = self._shared_step(batch, "train")
        return total

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        out, _ = self._shared_step(batch, "val")
        return self._outputs(out, batch)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_start(self) -> None:
        # Test decisions use the operating point fitted on validation, never one fitted here.
        if self.test_cls_metrics is not None:
            self.test_cls_metrics.threshold = float(self.decision_threshold)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        out, _ = self._shared_step(batch, "test")
        row = self._per_image(out, batch)
        orig = self.test_seg_orig_metrics
        if out.mask is not None and orig is not None and "orig_mask" in batch:
            orig.update(out.mask.detach().float(), batch["orig_mask"])
            # The per-image rows report what the summary reports: the original size.
            row.update({f"{k}_input": row[k] for k in SEG_ROW_KEYS})
            row.update({k: orig.last_per_image[k] for k in SEG_ROW_KEYS})
        return row

    def on_test_epoch_end(self) -> None:
        if self.test_cls_metrics is not None and self.test_cls_metrics.update_called:
            # Say which operating point the sensitivity/specificity/accuracy were taken at.
            self.log("test/decision_threshold", self.decision_threshold.float())
        self._log_epoch_metrics("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        out = self(batch["image"])
        bs = batch["image"].shape[0]
        nan = torch.full((bs,), float("nan"), device=batch["image"].device)
        return {
            "id": list(batch["id"]),
            "mask_prob": torch.sigmoid(out.mask.float()) if out.mask is not None else None,
            "prob": class_probabilities(out.logits, self.temperature)
            if out.logits is not None
            else nan,
        }

    def _outputs(self, out: Any, batch: dict[str, Any]) -> dict[str, Any]:
        """Detached probabilities for callbacks (overlays, ROC)."""
        bs = batch["image"].shape[0]
        device = batch["image"].device
        return {
            "mask_prob": torch.sigmoid(out.mask.detach().float()) if out.mask is not None else None,
            "prob": malignancy_probability(out.logits.detach(), self.temperature)
            if out.logits is not None
            else torch.full((bs,), float("nan"), device=device),
            "label": batch["label"],
        }

    def _per_image(self, out: Any, batch: dict[str, Any]) -> dict[str, Any]:
        """The per-image values of the contract (see ARCHITECTURE.md, ``test_step``)."""
        bs = batch["image"].shape[0]
        device = batch["image"].device
        nan = torch.full((bs,), float("nan"), device=device)
        row: dict[str, Any] = {
            "id": list(batch["id"]),
            "centre": list(batch.get("centre", [""] * bs)),
            "label": batch["label"].detach(),
            "prob": malignancy_probability(out.logits.detach(), self.temperature)
            if out.logits is not None
            else nan,
            "dice": nan,
            "iou": nan,
            "hd95": nan,
            "mask_area": nan,
        }
        seg = self.test_seg_metrics
        if out.mask is not None and seg is not None and seg.last_per_image is not None:
            # The values test metrics just computed for this batch (HD95 is not cheap).
            row.update({k: seg.last_per_image[k] for k in SEG_ROW_KEYS})
        return row

    # ------------------------------------------------------------------ optimisation
    def param_groups(self) -> list[dict[str, Any]]:
        """The net's parameters, and the loss weighting's (Kendall log-variances) in a group
        of their own without weight decay: decay would pull every task weight towards 1."""
        weighting = [p for p in self.weighting.parameters() if p.requires_grad]
        ids = {id(p) for p in weighting}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        groups: list[dict[str, Any]] = [{"params": rest}]
        if weighting:
            groups.append({"params": weighting, "weight_decay": 0.0})
        return groups

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.param_groups())
        if self.scheduler_factory is not None:
            scheduler = self.scheduler_factory(optimizer)
            config: dict[str, Any] = {"scheduler": scheduler, "interval": "epoch"}
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                config["monitor"] = "val/loss"
            return {"optimizer": optimizer, "lr_scheduler": config}
        total = int(self.trainer.estimated_stepping_batches)
        max_epochs = max(int(self.trainer.max_epochs or 1), 1)
        warmup = round(self.warmup_epochs * total / max_epochs)
        scheduler = warmup_cosine(optimizer, total_steps=total, warmup_steps=warmup)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        checkpoint["bus_mtl"] = build_metadata(self, datamodule)
        checkpoint["rng_states"] = collect_rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict", {})
        if "decision_threshold" not in state:
            # Checkpoints from before the fitted operating point: the fixed threshold.
            state["decision_threshold"] = torch.tensor(float(self.threshold))
        self.threshold_rule = str(checkpoint.get("bus_mtl", {}).get("threshold_rule", "fixed"))
        states = checkpoint.get("rng_states")
        self._pending_rng_states = (int(checkpoint.get("epoch", -1)), states) if states else None

    def _apply_pending_rng_states(self) -> None:
        if self._pending_rng_states is not None:
            set_rng_states(self._pending_rng_states[1])
            self._pending_rng_states = None

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0:
            # With a global seed (seed_everything), every epoch's dropout & co. draw from RNGs
            # seeded by (seed, epoch): a resumed run then draws what the uninterrupted one
            # did, whatever Lightning consumed before (sanity check, creating the loader
            # iterator, which draws from the global RNG at a point that differs on resume).
            # Seeding at the first batch, not at epoch start, puts it after all of that.
            seed = os.environ.get("PL_GLOBAL_SEED")
            if seed is not None:
                self._pending_rng_states = None
                seed_epoch(int(seed), self.current_epoch)
                return
            # No global seed: an end-of-epoch checkpoint's RNG states are the best we have.
            pending = self._pending_rng_states
            if pending is not None and self.current_epoch > pending[0]:
                self._apply_pending_rng_states()
            return
        self._apply_pending_rng_states()  # mid-epoch checkpoint: best effort


def _wants_auto(loss: nn.Module | None) -> bool:
    from bus_mtl.training.losses import AUTO

    return any(getattr(loss, name, None) == AUTO for name in ("pos_weight", "alpha")) or bool(
        getattr(loss, "auto_weight", False)
    )


def _cli_hparams() -> dict[str, Any] | None:
    """The config dict LightningCLI instantiates this module from, ``None`` outside the CLI."""
    try:
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
    except ImportError:  # pragma: no cover - private API moved; fall back to introspection
        return None
    return _given_hyperparameters.get()
