"""Segmentation and classification losses for the multi-task models.

All losses are plain ``nn.Module``\\ s with typed ``__init__`` arguments, so LightningCLI can
build them from ``class_path`` / ``init_args``. They are computed in float32 even under
bf16/16-mixed autocast: Dice sums over every pixel of the batch, where half precision loses
the small terms.

Classification labels follow the data contract: ``0`` benign, ``1`` malignant, ``2`` normal
(only with ``num_classes=3``) and ``-1`` = no class label (e.g. ``normal="seg_only"``),
which every classification loss ignores. A batch without any valid label gives a zero
loss that is still attached to the graph (``grad_fn`` set), so ``backward`` and DDP's
gradient all-reduce behave the same on every step.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

__all__ = [
    "AUTO",
    "BCEClassLoss",
    "CrossEntropyClassLoss",
    "DiceBCELoss",
    "FocalLoss",
    "IGNORE_LABEL",
    "calibrated_prior",
]

IGNORE_LABEL = -1
# A class weighting resolved from the class frequencies of the fold's training part:
# ``MultiTaskModule`` calls ``set_class_counts`` on its loss in ``setup("fit")``.
AUTO = "auto"


def _check_auto(name: str, value: object) -> None:
    if isinstance(value, str) and value != AUTO:
        raise ValueError(f"{name} must be a number, None or {AUTO!r}, got {value!r}.")


def _unresolved(loss: nn.Module, name: str) -> ValueError:
    return ValueError(
        f"{type(loss).__name__}({name}={AUTO!r}) has not seen the class counts: "
        "MultiTaskModule resolves it from the fold's training part at setup; standalone, call "
        f".set_class_counts(counts) first or give {name} a number."
    )


def _positive_counts(counts: list[int] | tuple[int, ...], k: int, who: str) -> list[float]:
    if len(counts) < k or any(int(c) <= 0 for c in counts[:k]):
        raise ValueError(
            f"{who}: class weighting from the training part needs at least one image of each "
            f"of the {k} classes, got counts {list(counts)}; give the weight as a number."
        )
    return [float(c) for c in counts[:k]]


def _check_non_negative(name: str, value: float) -> None:
    if not value >= 0.0:  # also rejects NaN
        raise ValueError(f"{name} must be a non-negative number, got {value!r}.")


class DiceBCELoss(nn.Module):
    """Soft Dice + binary cross-entropy on lesion-mask logits (MONAI ``DiceCELoss``).

    ``loss = dice_weight * Dice + bce_weight * BCE`` where, per image ``b``,
    ``Dice_b = 1 - (2 * sum(p * y) + smooth) / (sum(p) + sum(y) + smooth)`` with
    ``p = sigmoid(logits)``, averaged over the batch, and BCE is the mean pixel-wise
    ``BCEWithLogits``.

    Empty masks (normal images, ``normal="seg_only"``): with the default per-image Dice
    (``batch=False``, MONAI's default) an image whose mask is empty gets
    ``Dice_b = 1 - smooth / (sum(p) + smooth)``: exactly 0 when nothing is predicted, close
    to 1 as soon as the soft prediction has any mass, and with a vanishing gradient, so on
    those images the BCE term does the learning. ``batch=True`` pools the numerator and
    denominator over the whole batch instead (one Dice per batch), which keeps a useful
    Dice gradient on batches rich in normal images but weights large lesions more.

    Args:
        dice_weight: weight of the Dice term (MONAI ``lambda_dice``), >= 0.
        bce_weight: weight of the BCE term (MONAI ``lambda_ce``), >= 0.
        smooth: added to the Dice numerator and denominator (MONAI ``smooth_nr`` and
            ``smooth_dr``); it makes an empty prediction on an empty mask a zero loss.
        batch: compute one Dice over the whole batch instead of one per image.

    Shapes:
        ``forward(mask_logits: B×1×H×W, target: B×1×H×W in {0, 1}) -> scalar``.
    """

    def __init__(
        self,
        dice_weight: float = 1.0,
        bce_weight: float = 1.0,
        smooth: float = 1e-5,
        batch: bool = False,
    ) -> None:
        super().__init__()
        _check_non_negative("dice_weight", dice_weight)
        _check_non_negative("bce_weight", bce_weight)
        if dice_weight == 0.0 and bce_weight == 0.0:
            raise ValueError("dice_weight and bce_weight cannot both be 0.")
        if not smooth > 0.0:
            raise ValueError(f"smooth must be > 0, got {smooth!r}.")
        self.dice_weight = dice_weight
        self.bce_weight = bce_weight
        self.smooth = smooth
        self.batch = batch
        self.loss = DiceCELoss(
            sigmoid=True,
            smooth_nr=smooth,
            smooth_dr=smooth,
            batch=batch,
            lambda_dice=dice_weight,
            lambda_ce=bce_weight,
        )

    def forward(self, mask_logits: Tensor, target: Tensor) -> Tensor:
        if mask_logits.ndim != 4 or mask_logits.shape[1] != 1:
            raise ValueError(
                f"DiceBCELoss expects mask logits of shape B×1×H×W, got {tuple(mask_logits.shape)}."
            )
        if target.shape != mask_logits.shape:
            raise ValueError(
                f"mask target shape {tuple(target.shape)} does not match the mask logits "
                f"{tuple(mask_logits.shape)}."
            )
        return self.loss(mask_logits.float(), target.float())


def _binary_logits(logits: Tensor, loss_name: str) -> Tensor:
    """B×1 or B logits -> B logits, or a ValueError that points to the 3-class loss."""
    if logits.ndim == 2 and logits.shape[1] == 1:
        return logits[:, 0]
    if logits.ndim == 1:
        return logits
    raise ValueError(
        f"{loss_name} is a binary (K = 1) loss and expects logits of shape B×1, got "
        f"{tuple(logits.shape)}; use CrossEntropyClassLoss for K = 3 (normal='class')."
    )


def _valid_binary(logits: Tensor, labels: Tensor, loss_name: str) -> tuple[Tensor, Tensor]:
    """Drop label -1; check the rest are 0/1. Returns (logits, float targets) of valid rows."""
    logits = _binary_logits(logits, loss_name)
    if labels.shape != logits.shape:
        raise ValueError(
            f"{loss_name}: labels of shape {tuple(labels.shape)} do not match "
            f"{logits.shape[0]} logits."
        )
    valid = labels != IGNORE_LABEL
    labels = labels[valid]
    if ((labels != 0) & (labels != 1)).any():
        bad = sorted({int(v) for v in labels[(labels != 0) & (labels != 1)].tolist()})
        raise ValueError(
            f"{loss_name}: labels must be 0 (benign), 1 (malignant) or -1 (ignored) for K = 1, "
            f"got {bad}; with the normal class (label 2) use num_classes=3 and "
            "CrossEntropyClassLoss."
        )
    return logits[valid].float(), labels.float()


class BCEClassLoss(nn.Module):
    """Binary cross-entropy on the malignancy logit, ignoring label -1.

    ``loss = mean_b BCEWithLogits(logit_b, y_b')`` over the samples with a label, with the
    smoothed target ``y' = y * (1 - label_smoothing) + label_smoothing / 2``. ``pos_weight``
    multiplies the loss of malignant (positive) samples, as in ``BCEWithLogitsLoss``; the mean
    still divides by the number of samples.

    Args:
        pos_weight: weight of the positive (malignant) class, > 0; ``None`` = 1; ``"auto"`` =
            ``n_benign / n_malignant`` of the fold's training part (what the recipes use:
            BUSI is about 2 benign : 1 malignant), set by :meth:`set_class_counts`.
        label_smoothing: in [0, 1).

    Shapes:
        ``forward(logits: B×1, labels: B long) -> scalar``.
    """

    def __init__(
        self, pos_weight: float | Literal["auto"] | None = None, label_smoothing: float = 0.0
    ) -> None:
        super().__init__()
        _check_auto("pos_weight", pos_weight)
        if pos_weight is not None and pos_weight != AUTO and not pos_weight > 0.0:
            raise ValueError(f"pos_weight must be > 0, None or 'auto', got {pos_weight!r}.")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}.")
        self.pos_weight = pos_weight
        self.label_smoothing = label_smoothing
        self.resolved_pos_weight: float | None = None if pos_weight == AUTO else pos_weight

    def set_class_counts(self, counts: list[int] | tuple[int, ...]) -> None:
        """Resolve ``pos_weight="auto"`` from ``(n_benign, n_malignant)`` of the training part."""
        if self.pos_weight == AUTO:
            n_neg, n_pos = _positive_counts(counts, 2, type(self).__name__)
            self.resolved_pos_weight = n_neg / n_pos

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        logits, targets = _valid_binary(logits, labels, type(self).__name__)
        if self.pos_weight == AUTO and self.resolved_pos_weight is None:
            raise _unresolved(self, "pos_weight")
        if logits.numel() == 0:
            return logits.sum()  # zero, with a grad_fn
        if self.label_smoothing > 0.0:
            targets = targets * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
        pos_weight = None
        if self.resolved_pos_weight is not None:
            pos_weight = torch.tensor(
                self.resolved_pos_weight, dtype=logits.dtype, device=logits.device
            )
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight)


class FocalLoss(nn.Module):
    """Binary focal loss (Lin et al. 2017) on the malignancy logit, ignoring label -1.

    ``FL = -alpha_t (1 - p_t)^gamma log(p_t)`` averaged over the samples with a label, where
    ``p_t`` is the predicted probability of the true class and ``alpha_t = alpha`` for
    malignant, ``1 - alpha`` for benign samples (torchvision ``sigmoid_focal_loss``).

    Lin et al.'s ``alpha = 0.25`` was tuned for detection, where the positive class is the
    rare one *and* easy negatives dominate after the focusing term; on BUSI it would weight
    the minority (malignant) class *down*. The default here, ``"auto"``, is the benign share
    of the training part, ``n_benign / (n_benign + n_malignant)`` (about 0.68 on BUSI), which
    weights the malignant class up in proportion to its rarity.

    Args:
        gamma: focusing parameter, >= 0 (0 gives alpha-weighted BCE).
        alpha: weight of the positive (malignant) class in [0, 1]; ``None`` = no weighting;
            ``"auto"`` = the benign share of the training part (see :meth:`set_class_counts`).

    Shapes:
        ``forward(logits: B×1, labels: B long) -> scalar``.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | Literal["auto"] | None = AUTO) -> None:
        super().__init__()
        _check_non_negative("gamma", gamma)
        _check_auto("alpha", alpha)
        if alpha is not None and alpha != AUTO and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], None or 'auto', got {alpha!r}.")
        self.gamma = gamma
        self.alpha = alpha
        self.resolved_alpha: float | None = None if alpha == AUTO else alpha

    def set_class_counts(self, counts: list[int] | tuple[int, ...]) -> None:
        """Resolve ``alpha="auto"`` from ``(n_benign, n_malignant)`` of the training part."""
        if self.alpha == AUTO:
            n_neg, n_pos = _positive_counts(counts, 2, type(self).__name__)
            self.resolved_alpha = n_neg / (n_neg + n_pos)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        logits, targets = _valid_binary(logits, labels, type(self).__name__)
        if self.alpha == AUTO and self.resolved_alpha is None:
            raise _unresolved(self, "alpha")
        if logits.numel() == 0:
            return logits.sum()
        # torchvision switches alpha weighting off with a negative alpha.
        alpha = -1.0 if self.resolved_alpha is None else self.resolved_alpha
        return sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=self.gamma, reduction="mean")


class CrossEntropyClassLoss(nn.Module):
    """Cross-entropy over K classes (K = 3: benign, malignant, normal), ignoring label -1.

    A weighted mean as in ``nn.CrossEntropyLoss``: ``sum_b w[y_b] * CE_b / sum_b w[y_b]``.

    Args:
        weight: one weight per class (length K), all > 0; ``None`` = equal weights;
            ``"auto"`` = ``n / (K n_k)`` from the training part's class counts (balanced).
        label_smoothing: in [0, 1), as in ``nn.CrossEntropyLoss``.

    Shapes:
        ``forward(logits: B×K, labels: B long) -> scalar``.
    """

    def __init__(
        self, weight: list[float] | Literal["auto"] | None = None, label_smoothing: float = 0.0
    ) -> None:
        super().__init__()
        _check_auto("weight", weight)
        self.auto_weight = weight == AUTO
        if self.auto_weight:
            weight = None
        if weight is not None:
            if len(weight) < 2:
                raise ValueError(f"weight needs one value per class (K >= 2), got {weight!r}.")
            if any(not w > 0.0 for w in weight):
                raise ValueError(f"class weights must all be > 0, got {weight!r}.")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}.")
        self.label_smoothing = label_smoothing
        self.weight: Tensor | None
        # A buffer follows the module across devices; not persistent so that checkpoints
        # do not depend on the loss configuration.
        self.register_buffer(
            "weight",
            None if weight is None else torch.tensor(weight, dtype=torch.float32),
            persistent=False,
        )

    def set_class_counts(self, counts: list[int] | tuple[int, ...]) -> None:
        """Resolve ``weight="auto"`` from the per-class counts of the training part."""
        if self.auto_weight:
            k = len(counts)
            n = _positive_counts(counts, k, type(self).__name__)
            self.weight = torch.tensor([sum(n) / (k * c) for c in n], dtype=torch.float32)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        name = type(self).__name__
        if self.auto_weight and self.weight is None:
            raise _unresolved(self, "weight")
        if logits.ndim != 2 or logits.shape[1] < 2:
            raise ValueError(
                f"{name} expects logits of shape B×K with K >= 2, got {tuple(logits.shape)}; "
                "use BCEClassLoss or FocalLoss for K = 1."
            )
        num_classes = logits.shape[1]
        if labels.shape != logits.shape[:1]:
            raise ValueError(
                f"{name}: labels of shape {tuple(labels.shape)} do not match "
                f"{logits.shape[0]} logits."
            )
        if self.weight is not None and self.weight.numel() != num_classes:
            raise ValueError(
                f"{name}: {self.weight.numel()} class weights given for K = {num_classes} logits."
            )
        valid = labels != IGNORE_LABEL
        labels = labels[valid]
        out_of_range = (labels < 0) | (labels >= num_classes)
        if out_of_range.any():
            bad = sorted({int(v) for v in labels[out_of_range].tolist()})
            raise ValueError(
                f"{name}: labels must be in 0..{num_classes - 1} or -1 (ignored), got {bad}."
            )
        logits = logits[valid].float()
        if logits.shape[0] == 0:
            # cross_entropy's mean over zero samples is NaN.
            return logits.sum()
        return F.cross_entropy(
            logits, labels.long(), weight=self.weight, label_smoothing=self.label_smoothing
        )


def calibrated_prior(loss: nn.Module | None, counts: list[int] | tuple[int, ...]) -> float | None:
    """The malignancy prevalence a binary class loss fits the probabilities to.

    A loss that weights the malignant samples by ``w`` against the benign ones is minimised
    by the posterior of a population whose prevalence is ``w π / (w π + 1 - π)``, with ``π``
    the training part's malignant fraction: the class-balanced default (``pos_weight="auto"``)
    trains for 0.5, not for ``π``. Prior-shift correction at a new site starts from this
    value (Saerens et al. 2002). A temperature fitted afterwards rescales the logits but does
    not move this prior. For the focal loss the focusing term also bends the probabilities,
    so its value is the class weighting's part only.

    Args:
        loss: the module's class loss, its ``"auto"`` weights already resolved.
        counts: ``(n_benign, n_malignant[, ...])`` of the training part.

    Returns:
        The prior in (0, 1); ``None`` for a loss that is not binary or counts without both
        classes.
    """
    if len(counts) < 2 or counts[0] <= 0 or counts[1] <= 0:
        return None
    if isinstance(loss, BCEClassLoss):
        weight = loss.resolved_pos_weight or 1.0
    elif isinstance(loss, FocalLoss):
        alpha = loss.resolved_alpha
        weight = 1.0 if alpha is None or not 0.0 < alpha < 1.0 else alpha / (1.0 - alpha)
    else:
        return None
    pi = counts[1] / (counts[0] + counts[1])
    return float(weight * pi / (weight * pi + 1.0 - pi))
