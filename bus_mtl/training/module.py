"""The one LightningModule: any ``bus_mtl.models`` variant, two losses, a weighting, metrics."""

from __future__ import annotations

import inspect
import math
import os
import warnings
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection

from bus_mtl.models.rebuild import (
    UnrecordedNetError,
    build_net,
    checkpoint_net_config,
    is_plain_value,
    net_config,
)
from bus_mtl.models.tta import FlipTTA, check_tta, hflip_average, with_tta
from bus_mtl.training.checkpoint import build_metadata
from bus_mtl.training.losses import (
    BCEClassLoss,
    CrossEntropyClassLoss,
    DiceBCELoss,
    calibrated_prior,
)
from bus_mtl.training.metrics import ClassificationMetrics, SegmentationMetrics
from bus_mtl.training.reproducibility import collect_rng_states, seed_epoch, set_rng_states
from bus_mtl.training.weighting import FixedWeighting

STAGES = ("train", "val", "test")
# Per-image segmentation values of a test row, and the keys SegmentationMetrics.compute gives.
SEG_ROW_KEYS = ("dice", "iou", "hd95", "mask_area")
SEG_SUMMARY_KEYS = ("dice", "iou", "hd95", "hd95_undefined", "dice_lesion")


def default_optimizer(params: Any) -> torch.optim.Optimizer:
    """AdamW, lr 1e-3, weight decay 1e-4: the recipe's default when none is configured."""
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)


class WarmupCosine(torch.optim.lr_scheduler.LambdaLR):
    """Linear warmup from 1 % of the learning rate, then cosine decay to 0, stepped per batch.

    A run whose length is only known once it is under way (:class:`TimeBudget`) re-plans it
    with :meth:`replan`: from the current step on, the cosine's progress goes linearly from
    where it is to 1 at the new ``total_steps``, and still reaches 0 exactly on the last step.
    Shortening keeps the current rate (no jump; the decay steepens). Lengthening keeps it
    too unless an earlier, shorter plan had decayed it below a plain cosine over the new
    length at this step: then the rate goes back up to that cosine's.
    The plan (``total_steps``, ``warmup_steps`` and the anchor of the latest re-plan) is the
    scheduler's state, saved in checkpoints.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int
    ) -> None:
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = min(max(int(warmup_steps), 0), self.total_steps - 1)
        # The cosine's progress is anchor_progress at anchor_step and 1 at total_steps.
        self.anchor_step, self.anchor_progress = self.warmup_steps, 0.0
        super().__init__(optimizer, self.factor)

    def replan(self, total_steps: int, warmup_steps: int | None = None) -> None:
        """End the decay at ``total_steps`` (never before the current step) instead.

        During warmup the cosine has not begun: the plan is as if made at the start
        (``warmup_steps`` may change too). Past it, the progress at the current step is the
        smaller of the old plan's and a plain cosine's over the new length.
        """
        step = max(int(self.last_epoch), 0)
        if step > self.warmup_steps:
            total = max(int(total_steps), step, 1)
            # Never further along than a plain cosine over the new length: a plan that was
            # too short (e.g. epochs slowed by another job) had decayed the rate early, and
            # lengthening it gives that rate back instead of training on at its remains.
            plain = (step - self.warmup_steps) / max(total - self.warmup_steps, 1)
            self.anchor_progress = min(self.progress(step), plain)  # progress(): the old plan
            self.anchor_step = step
            self.total_steps = total
            return
        self.total_steps = max(int(total_steps), step, 1)
        if warmup_steps is not None:
            self.warmup_steps = int(warmup_steps)
        self.warmup_steps = min(max(self.warmup_steps, 0), self.total_steps - 1)
        self.anchor_step, self.anchor_progress = self.warmup_steps, 0.0

    def progress(self, step: int) -> float:
        """The cosine's progress at ``step`` (0 at the end of warmup, 1 at ``total_steps``)."""
        span = self.total_steps - self.anchor_step
        if span <= 0 or step >= self.total_steps:
            return 1.0  # exactly: the learning rate is 0, not a rounding error away from it
        done = (step - self.anchor_step) / span
        return min(self.anchor_progress + (1.0 - self.anchor_progress) * done, 1.0)

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return 0.01 + 0.99 * step / self.warmup_steps
        return 0.5 * (1.0 + math.cos(math.pi * self.progress(step)))

    def state_dict(self) -> dict[str, Any]:
        # LambdaLR would try to pickle the bound method; the plan is what needs saving.
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambdas")}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update(state_dict)
        if "anchor_step" not in state_dict:
            # Checkpoints from before re-plans kept their progress: one plain cosine.
            self.anchor_step, self.anchor_progress = self.warmup_steps, 0.0


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


def check_lr_scales(lr_scales: dict[str, float] | None) -> dict[str, float]:
    """``lr_scales`` as a plain dict, or a ValueError naming the bad entry."""
    if lr_scales is None:
        return {}
    checked: dict[str, float] = {}
    for prefix, scale in dict(lr_scales).items():
        if not isinstance(prefix, str) or not prefix or prefix.endswith("."):
            raise ValueError(
                f"lr_scales: keys are parameter-name prefixes such as 'net.effnet', got {prefix!r}"
            )
        if (
            isinstance(scale, bool)
            or not isinstance(scale, int | float)
            or not (math.isfinite(scale) and scale > 0)
        ):
            raise ValueError(f"lr_scales[{prefix!r}] must be a number > 0, got {scale!r}")
        checked[prefix] = float(scale)
    return checked


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
        channels_last: channels-last memory format for the net and its input batches (CPU
            and GPU: faster or equal for every variant on the 2-core CPU once SegResNet's
            GroupNorm runs contiguous, see ``ChannelsFirstGroupNorm``).
        log_images: how many validation images the ``ValidationImages`` callback draws.
        tta: test-time augmentation of every evaluation of the net: ``"none"``, or
            ``"hflip"``: the mean of the logits on the image and on its left-right mirror
            (:class:`~bus_mtl.models.tta.FlipTTA`). Training steps never use it; validation,
            test and predict steps, ``TemperatureCalibration`` (so the temperature and the
            decision threshold are fitted on the outputs they are applied to) and every
            predictor or export of a checkpoint (``checkpoint["bus_mtl"]["tta"]``) do.
        lr_scales: parameter-name prefix -> factor on the optimizer's learning rate for the
            parameters under it (longest prefix wins), e.g. ``{"net.effnet": 0.25}`` trains
            ImageNet-initialised EfficientNet blocks at a quarter of the rate of the
            randomly initialised SegResNet. The schedule scales every group alike.

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
        tta: Literal["none", "hflip"] = "none",
        lr_scales: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        check_tta(tta)
        if isinstance(net, FlipTTA):
            raise ValueError(
                "MultiTaskModule got a FlipTTA-wrapped net: pass the bare net and "
                "tta='hflip', so training steps run the net alone and checkpoints rebuild it"
            )
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
        try:
            # The net's own record (MTLNet writes it): checkpoint["bus_mtl"] and
            # hyper_parameters["net"] both come from it, in and out of the LightningCLI.
            self.net_config: dict[str, Any] | None = net_config(net)
        except UnrecordedNetError as err:
            warnings.warn(
                f"{err}; until then, checkpoints of this run will not rebuild with "
                "load_net, MultiTaskModule.load_from_checkpoint or bus-mtl predict/export",
                UserWarning,
                stacklevel=2,
            )
            self.net_config = None
        self._save_hparams(self.net_config)
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
        self.tta = str(tta)
        self.lr_scales = check_lr_scales(lr_scales)
        self.register_buffer("temperature", torch.ones(()))
        # Image-level decision threshold on the calibrated malignancy probability; fitted on
        # the validation part by TemperatureCalibration (Youden's J, binormal, by default).
        self.register_buffer("decision_threshold", torch.tensor(float(threshold)))
        self.threshold_rule = "fixed"
        # Per test-time augmentation mode, the operating point fitted for it (a TTA module's
        # single pass too); set by TemperatureCalibration, saved in checkpoint["bus_mtl"].
        self.operating_points: dict[str, dict[str, Any]] | None = None
        # (n_benign, n_malignant[, n_normal]) of the fold's training part, set in setup().
        self.class_counts: list[int] | None = None
        self._build_metrics(threshold)
        self._compiled: nn.Module | None = None
        self._pending_rng_states: tuple[int, dict[str, Any]] | None = None
        # The loss terms of the latest training step, for the FiniteLossGuard callback.
        self.last_losses: dict[str, Tensor] = {}

    def _build_metrics(self, threshold: float) -> None:
        """``self.metrics`` (one collection per stage) and ``self.orig_size_metrics``."""
        # One collection per stage, cloned from one template: ``compute()`` merges the
        # members' dicts under the stage's prefix (``val/dice``, ``val/auc``, ...). The seg and
        # cls keys must never collide: MetricCollection would then rename every key. A head
        # the net lacks gets no member. No compute groups: the seg and cls members never
        # share a state, so comparing their states after the first update would be wasted.
        members: dict[str, Metric] = {}
        if self.has_seg:
            members["seg"] = SegmentationMetrics(threshold=threshold)
        if self.has_cls:
            members["cls"] = ClassificationMetrics(
                num_classes=self.num_classes, threshold=threshold
            )
        template = MetricCollection(members, compute_groups=False)
        # Keys "<stage>_metrics": nn.ModuleDict refuses "train", the name of nn.Module.train.
        self.metrics = nn.ModuleDict(
            {f"{stage}_metrics": template.clone(prefix=f"{stage}/") for stage in STAGES}
        )
        if self.has_seg:
            # HD95 runs on the CPU: computing it every training step would stall the GPU.
            self.stage_metrics("train")["seg"].with_hd95 = False
        # Test segmentation at each image's original size (the batch's ``orig_mask``), logged
        # as ``test/dice`` & co.; the test stage's working-resolution figures are then logged
        # beside them as ``test/dice_input`` & co. A collection of its own: in the test one,
        # its keys would collide with the working-resolution ones.
        self.orig_size_metrics = (
            MetricCollection(
                {"seg": SegmentationMetrics(threshold=threshold)},
                prefix="test/",
                compute_groups=False,
            )
            if self.has_seg
            else None
        )

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

    @property
    def source_prior(self) -> float | None:
        """The malignancy prevalence the class loss trained the probabilities for
        (:func:`~bus_mtl.training.losses.calibrated_prior`); ``None`` before the training
        part's class counts are known or for a loss that is not binary."""
        if self.class_counts is None or self.num_classes != 1:
            return None
        return calibrated_prior(self.cls_loss, self.class_counts)

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
        return self.channels_last

    def forward(self, image: Tensor, tta: bool | None = None) -> Any:
        """B×C×H×W normalised image -> ``MTLOutput(mask=B×1×H×W | None, logits=B×K | None)``.

        ``tta``: apply the module's test-time augmentation (``self.tta``; nothing when it is
        ``"none"``); ``None``: when the module is in eval mode. Training steps pass
        ``False``; validation, test and predict steps ``True``.
        """
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
        if tta is None:
            tta = not self.training
        if tta and self.tta == "hflip":
            return hflip_average(net, image)
        return net(image)

    def eval_net(self, net: nn.Module | None = None) -> nn.Module:
        """The network as this module evaluates it: ``net`` (default: ``self.net``) wrapped
        in the module's test-time augmentation (:func:`~bus_mtl.models.tta.with_tta`)."""
        return with_tta(self.net if net is None else net, self.tta)

    # ------------------------------------------------------------------ steps
    def _losses(self, out: Any, batch: dict[str, Any]) -> dict[str, Tensor]:
        losses: dict[str, Tensor] = {}
        # Losses in float32 even under bf16/16-mixed autocast.
        if self.seg_loss is not None and out.mask is not None:
            losses["seg"] = self.seg_loss(out.mask.float(), batch["mask"].float())
        if self.cls_loss is not None and out.logits is not None:
            losses["cls"] = self.cls_loss(out.logits.float(), batch["label"])
        return losses

    def stage_metrics(self, stage: str) -> MetricCollection:
        """The metrics of ``stage`` (train, val or test): members ``seg``
        (:class:`SegmentationMetrics`, at the working resolution) and ``cls``
        (:class:`ClassificationMetrics`) for the heads the net has, keys ``{stage}/...``."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}.")
        return self.metrics[f"{stage}_metrics"]

    def _shared_step(
        self, batch: dict[str, Any], stage: str
    ) -> tuple[Any, Tensor, dict[str, Tensor] | None]:
        """Forward, losses and their logs, metric updates. Returns the net's output, the
        weighted total loss and the per-image segmentation values the metrics were given
        (:meth:`_update_metrics`)."""
        # Training sees the net alone; every evaluation its test-time augmentation.
        out = self(batch["image"], tta=stage != "train")
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
        seg_values = self._update_metrics(stage, out, batch)
        return out, total, seg_values

    def _update_metrics(
        self, stage: str, out: Any, batch: dict[str, Any]
    ) -> dict[str, Tensor] | None:
        """Add the batch to ``stage``'s metrics. Returns the per-image segmentation values
        added (``SegmentationMetrics.per_image_values``: (B,) tensors, HD95 NaN for the
        training stage), ``None`` without a mask; ``test_step`` puts them in its rows, so
        HD95 is computed once per image."""
        metrics = self.stage_metrics(stage)
        seg_values = None
        if "seg" in metrics and out.mask is not None:
            seg = metrics["seg"]
            seg_values = seg.per_image_values(out.mask.detach().float(), batch["mask"])
            seg.update(per_image=seg_values)
        if "cls" in metrics and out.logits is not None:
            metrics["cls"].update(out.logits.detach().float() / self.temperature, batch["label"])
        return seg_values

    def _log_epoch_metrics(self, stage: str) -> None:
        values = _compute_and_reset(self.stage_metrics(stage))
        orig = self.orig_size_metrics if stage == "test" else None
        orig_values = _compute_and_reset(orig) if orig is not None else {}
        if orig_values:
            # Reported at the original size; the working-resolution figures stay beside
            # them, labelled ``*_input``.
            input_res = {f"{stage}/{k}" for k in SEG_SUMMARY_KEYS}
            values = {(f"{k}_input" if k in input_res else k): v for k, v in values.items()}
            values.update(orig_values)
        if not values:
            return
        score_parts = [values[f"{stage}/{k}"] for k in ("dice", "auc") if f"{stage}/{k}" in values]
        if score_parts:
            # One number to select checkpoints by: both tasks count when both heads exist.
            values[f"{stage}/score"] = torch.stack(
                [torch.as_tensor(v).float() for v in score_parts]
            ).mean()
        # Values come from synced torchmetrics states already.
        self.log_dict({k: torch.as_tensor(v).float() for k, v in values.items()}, prog_bar=False)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        _, total, _ = self._shared_step(batch, "train")
        return total

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        out, _, _ = self._shared_step(batch, "val")
        return self._outputs(out, batch)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_start(self) -> None:
        # Test decisions use the operating point fitted on validation, never one fitted here.
        metrics = self.stage_metrics("test")
        if "cls" in metrics:
            metrics["cls"].threshold = float(self.decision_threshold)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        out, _, seg_values = self._shared_step(batch, "test")
        row = self._per_image(out, batch, seg_values)
        orig = self.orig_size_metrics
        if out.mask is not None and orig is not None and "orig_mask" in batch:
            seg = orig["seg"]
            # Undo the datamodule's squash or letterbox (data.resize) to reach each original.
            datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
            resize = str(getattr(datamodule, "resize", "squash"))
            orig_values = seg.per_image_values(
                out.mask.detach().float(), batch["orig_mask"], resize=resize
            )
            seg.update(per_image=orig_values)
            # The per-image rows report what the summary reports: the original size.
            row.update({f"{k}_input": row[k] for k in SEG_ROW_KEYS})
            row.update({k: orig_values[k] for k in SEG_ROW_KEYS})
        return row

    def on_test_epoch_end(self) -> None:
        metrics = self.stage_metrics("test")
        if "cls" in metrics and metrics["cls"].update_called:
            # Say which operating point the sensitivity/specificity/accuracy were taken at.
            self.log("test/decision_threshold", self.decision_threshold.float())
        self._log_epoch_metrics("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        out = self(batch["image"], tta=True)
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

    def _per_image(
        self, out: Any, batch: dict[str, Any], seg_values: dict[str, Tensor] | None
    ) -> dict[str, Any]:
        """The per-image values of the contract (see ARCHITECTURE.md, ``test_step``);
        ``seg_values``: the batch's per-image segmentation values the test metrics were
        given (HD95 is not cheap), ``None`` without a mask."""
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
        if seg_values is not None:
            row.update({k: seg_values[k] for k in SEG_ROW_KEYS})
        return row

    # ------------------------------------------------------------------ optimisation
    def param_groups(self) -> list[dict[str, Any]]:
        """The net's parameters, one group per ``lr_scales`` prefix that holds any (with an
        ``lr_scale`` entry), and the loss weighting's (Kendall log-variances) in a group of
        their own without weight decay: decay would pull every task weight towards 1."""
        weighting = [p for p in self.weighting.parameters() if p.requires_grad]
        ids = {id(p) for p in weighting}
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad and id(p) not in ids]
        prefixes = sorted(self.lr_scales, key=len, reverse=True)
        by_prefix: dict[str, list[Tensor]] = {prefix: [] for prefix in prefixes}
        rest: list[Tensor] = []
        for name, param in named:
            match = next((q for q in prefixes if name == q or name.startswith(q + ".")), None)
            (by_prefix[match] if match is not None else rest).append(param)
        unmatched = [q for q in prefixes if not by_prefix[q]]
        if unmatched:
            tops = sorted({".".join(n.split(".")[:2]) for n, _ in named})
            raise ValueError(
                f"lr_scales: no trainable parameter under {unmatched}; prefixes are module "
                f"paths of named_parameters(), such as {tops}"
            )
        groups: list[dict[str, Any]] = [{"params": rest}] if rest else []
        groups += [{"params": by_prefix[q], "lr_scale": self.lr_scales[q]} for q in prefixes]
        if weighting:
            groups.append({"params": weighting, "weight_decay": 0.0})
        return groups

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.param_groups())
        for group in optimizer.param_groups:
            # Before any scheduler exists: schedulers read each group's lr as its base.
            group["lr"] = group["lr"] * group.get("lr_scale", 1.0)
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
    def _save_hparams(self, net_config: dict[str, Any] | None) -> None:
        """``self.hparams``: the constructor's plain arguments, ``net`` as its record.

        Lightning saves what the LightningCLI gave (``class_path``/``init_args`` sub-configs
        of the losses, weighting, optimizer and scheduler, which ``load_from_checkpoint``
        re-instantiates) or, outside it, the argument values themselves. Values that are not
        plain data (module instances, the default optimizer function) are in the state_dict
        already, or are code: they are left out, so a checkpoint loads with
        ``torch.load(weights_only=True)``. The net is saved as ``net_config``, the record
        ``checkpoint["bus_mtl"]`` holds too, never as Lightning sees the argument.
        """
        frame = inspect.currentframe().f_back  # __init__'s: Lightning reads its arguments
        with warnings.catch_warnings():
            # Outside the CLI the values are modules, dropped below; no advice to ignore them.
            warnings.filterwarnings("ignore", message=r".*is an instance of `nn.Module`")
            self.save_hyperparameters(ignore=["net"], frame=frame)
        unplain = [k for k, v in self.hparams.items() if not is_plain_value(v)]
        # The second call drops those from the saved and the initial hparams (what loggers
        # record) alike, and adds the net's record.
        self.save_hyperparameters({"net": net_config}, ignore=unplain, frame=frame)

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: Any, *args: Any, **kwargs: Any
    ) -> MultiTaskModule:
        """Lightning's ``load_from_checkpoint``, the net rebuilt from ``checkpoint["bus_mtl"]``
        (unless ``net=`` is given) with its weight sources (``pretrained``,
        ``encoder_weights``) set to ``None``: the checkpoint's weights replace them, and the
        file or download they name need not exist here. The same rebuild as ``load_net``, for
        checkpoints of every version, written by the LightningCLI or not."""
        if "net" not in kwargs:
            meta = _checkpoint_meta(checkpoint_path)
            if meta is not None:
                kwargs["net"] = build_net(checkpoint_net_config(meta, str(checkpoint_path)))
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        checkpoint["bus_mtl"] = build_metadata(self, datamodule)
        checkpoint["rng_states"] = collect_rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict", {})
        if "decision_threshold" not in state:
            # Checkpoints from before the fitted operating point: the fixed threshold.
            state["decision_threshold"] = torch.tensor(float(self.threshold))
        meta = checkpoint.get("bus_mtl", {})
        self.threshold_rule = str(meta.get("threshold_rule", "fixed"))
        self.operating_points = meta.get("operating_points")
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


def _compute_and_reset(collection: MetricCollection) -> dict[str, Tensor]:
    """``collection.compute()`` (keys prefixed, e.g. ``val/dice``), then ``reset()``.

    Only the members that saw an update this epoch are computed: a head whose output was
    ``None`` logs nothing rather than NaN (which would also make ``score`` NaN); ``{}`` when
    none did (a stage that ran no batch).
    """
    updated = {
        name: metric
        for name, metric in collection.items(keep_base=True, copy_state=False)
        if metric.update_called
    }
    if not updated:
        return {}
    if len(updated) < len(collection):
        # The same metric objects in a collection of their own, named as the full one.
        values = MetricCollection(updated, prefix=collection.prefix, compute_groups=False).compute()
    else:
        values = collection.compute()
    collection.reset()
    return values


def _wants_auto(loss: nn.Module | None) -> bool:
    from bus_mtl.training.losses import AUTO

    return any(getattr(loss, name, None) == AUTO for name in ("pos_weight", "alpha")) or bool(
        getattr(loss, "auto_weight", False)
    )


def _checkpoint_meta(checkpoint_path: Any) -> dict[str, Any] | None:
    """``checkpoint["bus_mtl"]`` of a path, URL or open file (left where it was), ``None``
    when the checkpoint has none (Lightning then builds the net from its hparams)."""
    if hasattr(checkpoint_path, "read"):
        position = checkpoint_path.tell()
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        checkpoint_path.seek(position)
    elif os.path.isfile(checkpoint_path):
        # mmap: only the metadata is needed here; Lightning reads the tensors next.
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
    else:
        from lightning.fabric.utilities.cloud_io import get_filesystem

        with get_filesystem(checkpoint_path).open(str(checkpoint_path), "rb") as f:
            checkpoint = torch.load(f, map_location="cpu", weights_only=True)
    meta = checkpoint.get("bus_mtl") if isinstance(checkpoint, dict) else None
    return dict(meta) if isinstance(meta, dict) else None
