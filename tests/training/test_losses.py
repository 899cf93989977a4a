"""Losses checked against values derived by hand on tiny tensors.

Logits are chosen so the probabilities are simple: sigmoid(0) = 1/2, sigmoid(ln 3) = 3/4,
sigmoid(-ln 3) = 1/4.
"""

from __future__ import annotations

import math

import pytest
import torch
from jsonargparse import ArgumentParser
from torch import nn

from bus_mtl.training.losses import (
    BCEClassLoss,
    CrossEntropyClassLoss,
    DiceBCELoss,
    FocalLoss,
    calibrated_prior,
)

LN2, LN3 = math.log(2.0), math.log(3.0)
SMOOTH = 1e-5


def _mask(values: list[list[float]]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)[None, None]  # 1×1×H×W


# p = [[1/2, 1/2], [3/4, 1/4]], y = [[1, 0], [1, 0]]
LOGITS_2x2 = _mask([[0.0, 0.0], [LN3, -LN3]])
TARGET_2x2 = _mask([[1.0, 0.0], [1.0, 0.0]])
# Dice: sum(p*y) = 1/2 + 3/4 = 5/4, sum(p) = 2, sum(y) = 2 -> 1 - (5/2 + s) / (4 + s)
DICE_2x2 = 1.0 - (2.5 + SMOOTH) / (4.0 + SMOOTH)
# BCE: pixels -ln(1/2), -ln(1/2), -ln(3/4), -ln(3/4) -> mean = (ln 2 + ln 4/3) / 2
BCE_2x2 = (LN2 + math.log(4.0 / 3.0)) / 2.0


def test_dice_bce_by_hand() -> None:
    loss = DiceBCELoss()(LOGITS_2x2, TARGET_2x2)
    assert loss.item() == pytest.approx(DICE_2x2 + BCE_2x2, rel=1e-5)
    weighted = DiceBCELoss(dice_weight=2.0, bce_weight=0.5)(LOGITS_2x2, TARGET_2x2)
    assert weighted.item() == pytest.approx(2.0 * DICE_2x2 + 0.5 * BCE_2x2, rel=1e-5)
    dice_only = DiceBCELoss(dice_weight=1.0, bce_weight=0.0)(LOGITS_2x2, TARGET_2x2)
    assert dice_only.item() == pytest.approx(DICE_2x2, rel=1e-5)


def test_dice_bce_empty_masks() -> None:
    empty = torch.zeros(1, 1, 2, 2)
    # Nothing predicted on an empty mask: Dice = 1 - s / (sum(p) + s) with sum(p) ~ 4e-22,
    # and BCE = log(1 + e^-50) ~ 2e-22: a zero loss.
    rejected = DiceBCELoss()(torch.full((1, 1, 2, 2), -50.0), empty)
    assert rejected.item() == pytest.approx(0.0, abs=1e-6)
    # p = 1/2 everywhere on an empty mask: Dice = 1 - s / (2 + s) ~ 1, BCE = ln 2.
    false_alarm = DiceBCELoss()(torch.zeros(1, 1, 2, 2), empty)
    assert false_alarm.item() == pytest.approx(1.0 - SMOOTH / (2.0 + SMOOTH) + LN2, rel=1e-5)


def test_dice_per_image_versus_batch() -> None:
    # Image 0: empty mask, p = 1/2 everywhere; image 1: the hand-checked 2×2 case.
    logits = torch.cat([torch.zeros(1, 1, 2, 2), LOGITS_2x2])
    target = torch.cat([torch.zeros(1, 1, 2, 2), TARGET_2x2])
    per_image = DiceBCELoss(bce_weight=0.0)(logits, target)
    dice_empty = 1.0 - SMOOTH / (2.0 + SMOOTH)
    assert per_image.item() == pytest.approx((dice_empty + DICE_2x2) / 2, rel=1e-5)
    # Pooled: sum(p*y) = 5/4, sum(p) = 2 + 2, sum(y) = 0 + 2 -> 1 - (5/2 + s) / (6 + s)
    pooled = DiceBCELoss(bce_weight=0.0, batch=True)(logits, target)
    assert pooled.item() == pytest.approx(1.0 - (2.5 + SMOOTH) / (6.0 + SMOOTH), rel=1e-5)


def test_dice_bce_gradient_and_half_precision() -> None:
    logits = LOGITS_2x2.clone().requires_grad_(True)
    DiceBCELoss()(logits, TARGET_2x2).backward()
    assert logits.grad is not None
    # Raising the logit of a foreground pixel lowers the loss; of a background pixel raises it.
    assert logits.grad[0, 0, 0, 0] < 0 < logits.grad[0, 0, 0, 1]
    half = DiceBCELoss()(LOGITS_2x2.bfloat16(), TARGET_2x2.bfloat16())
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(DICE_2x2 + BCE_2x2, rel=1e-2)


def test_dice_bce_bad_input() -> None:
    with pytest.raises(ValueError, match="dice_weight"):
        DiceBCELoss(dice_weight=-1.0)
    with pytest.raises(ValueError, match="both be 0"):
        DiceBCELoss(dice_weight=0.0, bce_weight=0.0)
    with pytest.raises(ValueError, match="smooth"):
        DiceBCELoss(smooth=0.0)
    with pytest.raises(ValueError, match="does not match"):
        DiceBCELoss()(LOGITS_2x2, torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="B×1×H×W"):
        DiceBCELoss()(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2))


# Class logits: p = 1/2 (malignant), 3/4 (benign), and one unlabelled sample.
CLS_LOGITS = torch.tensor([[0.0], [LN3], [5.0]])
CLS_LABELS = torch.tensor([1, 0, -1])


def test_bce_by_hand() -> None:
    # -ln(1/2) and -ln(1 - 3/4) = ln 4; the -1 sample is ignored: mean = (ln 2 + 2 ln 2) / 2
    assert BCEClassLoss()(CLS_LOGITS, CLS_LABELS).item() == pytest.approx(1.5 * LN2, rel=1e-6)
    # pos_weight multiplies the malignant term: (3 ln 2 + 2 ln 2) / 2
    weighted = BCEClassLoss(pos_weight=3.0)(CLS_LOGITS, CLS_LABELS)
    assert weighted.item() == pytest.approx(2.5 * LN2, rel=1e-6)
    # Smoothing 0.2: targets 1 -> 0.9, 0 -> 0.1.
    #   sample 1: p = 1/2 -> ln 2 whatever the target
    #   sample 2: p = 3/4, t = 0.1 -> -(0.1 ln 3/4 + 0.9 ln 1/4)
    second = -(0.1 * math.log(0.75) + 0.9 * math.log(0.25))
    smoothed = BCEClassLoss(label_smoothing=0.2)(CLS_LOGITS, CLS_LABELS)
    assert smoothed.item() == pytest.approx((LN2 + second) / 2, rel=1e-6)
    # B logits work as well as B×1.
    flat = BCEClassLoss()(CLS_LOGITS[:, 0], CLS_LABELS)
    assert flat.item() == pytest.approx(1.5 * LN2, rel=1e-6)


def test_focal_by_hand() -> None:
    # gamma = 2, alpha = 1/4:
    #   malignant, p_t = 1/2, alpha_t = 1/4: 1/4 * (1/2)^2 * ln 2 = 0.0625 ln 2
    #   benign, p = 3/4 so p_t = 1/4, alpha_t = 3/4: 3/4 * (3/4)^2 * ln 4 = 0.84375 ln 2
    expected = (0.0625 + 0.84375) * LN2 / 2
    focal = FocalLoss(alpha=0.25)(CLS_LOGITS, CLS_LABELS)
    assert focal.item() == pytest.approx(expected, rel=1e-6)
    # gamma = 0 and no alpha: plain BCE.
    plain = FocalLoss(gamma=0.0, alpha=None)(CLS_LOGITS, CLS_LABELS)
    assert plain.item() == pytest.approx(1.5 * LN2, rel=1e-6)


def test_cross_entropy_by_hand() -> None:
    # Sample 1 (malignant): uniform logits -> -ln(1/3) = ln 3.
    # Sample 2 (benign): softmax([ln 2, 0, 0])[0] = 2 / 4 -> ln 2. Sample 3 is ignored.
    logits = torch.tensor([[0.0, 0.0, 0.0], [LN2, 0.0, 0.0], [9.0, 0.0, 0.0]])
    labels = torch.tensor([1, 0, -1])
    loss = CrossEntropyClassLoss()(logits, labels)
    assert loss.item() == pytest.approx((LN3 + LN2) / 2, rel=1e-6)
    # Class weights [1, 3, 1]: (3 ln 3 + 1 ln 2) / (3 + 1)
    weighted = CrossEntropyClassLoss(weight=[1.0, 3.0, 1.0])(logits, labels)
    assert weighted.item() == pytest.approx((3 * LN3 + LN2) / 4, rel=1e-6)


@pytest.mark.parametrize(
    ("loss", "logits"),
    [
        (BCEClassLoss(), torch.randn(3, 1)),
        (FocalLoss(alpha=0.25), torch.randn(3, 1)),
        (CrossEntropyClassLoss(), torch.randn(3, 3)),
    ],
)
def test_no_valid_label_gives_attached_zero(loss: nn.Module, logits: torch.Tensor) -> None:
    logits = logits.requires_grad_(True)
    value = loss(logits, torch.tensor([-1, -1, -1]))
    assert value.item() == 0.0
    assert value.grad_fn is not None
    value.backward()
    assert logits.grad is not None and torch.equal(logits.grad, torch.zeros_like(logits))


def test_ignored_samples_do_not_move_the_loss() -> None:
    # Changing the logit of an unlabelled sample changes neither the loss nor any gradient.
    for loss, logits in ((BCEClassLoss(), CLS_LOGITS), (FocalLoss(alpha=0.25), CLS_LOGITS)):
        other = logits.clone()
        other[2] = -7.0
        assert loss(logits, CLS_LABELS).item() == loss(other, CLS_LABELS).item()


def test_class_losses_bad_input() -> None:
    with pytest.raises(ValueError, match="num_classes=3"):
        BCEClassLoss()(torch.zeros(2, 1), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="CrossEntropyClassLoss"):
        FocalLoss()(torch.zeros(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="do not match"):
        BCEClassLoss()(torch.zeros(2, 1), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="pos_weight"):
        BCEClassLoss(pos_weight=0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        BCEClassLoss(label_smoothing=1.0)
    with pytest.raises(ValueError, match="alpha"):
        FocalLoss(alpha=1.5)
    with pytest.raises(ValueError, match="gamma"):
        FocalLoss(gamma=-1.0)
    with pytest.raises(ValueError, match=r"0\.\.2"):
        CrossEntropyClassLoss()(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="K = 1"):
        CrossEntropyClassLoss()(torch.zeros(2, 1), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="2 class weights"):
        CrossEntropyClassLoss(weight=[1.0, 2.0])(torch.zeros(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="> 0"):
        CrossEntropyClassLoss(weight=[1.0, 0.0, 1.0])


def test_losses_build_from_lightningcli_style_config() -> None:
    # LightningCLI builds these from class_path / init_args through jsonargparse.
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--seg_loss", type=nn.Module)
    parser.add_argument("--cls_loss", type=nn.Module)
    cfg = parser.parse_args(
        [
            "--seg_loss",
            '{"class_path": "bus_mtl.training.losses.DiceBCELoss", '
            '"init_args": {"dice_weight": 0.5, "batch": true}}',
            "--cls_loss",
            '{"class_path": "bus_mtl.training.losses.CrossEntropyClassLoss", '
            '"init_args": {"weight": [1.0, 2.0, 1.0]}}',
        ]
    )
    built = parser.instantiate_classes(cfg)
    assert isinstance(built.seg_loss, DiceBCELoss)
    assert built.seg_loss.dice_weight == 0.5 and built.seg_loss.batch is True
    assert isinstance(built.cls_loss, CrossEntropyClassLoss)
    assert built.cls_loss.weight.tolist() == [1.0, 2.0, 1.0]


def test_auto_class_weights_come_from_the_counts() -> None:
    # 2 benign : 1 malignant -> pos_weight 2, focal alpha 2/3 (malignant weighted *up*).
    bce = BCEClassLoss(pos_weight="auto")
    bce.set_class_counts([400, 200])
    assert bce.resolved_pos_weight == pytest.approx(2.0)
    assert bce(CLS_LOGITS, CLS_LABELS).item() == pytest.approx(
        BCEClassLoss(pos_weight=2.0)(CLS_LOGITS, CLS_LABELS).item()
    )
    focal = FocalLoss()  # default alpha: "auto"
    focal.set_class_counts([400, 200])
    assert focal.resolved_alpha == pytest.approx(2 / 3)
    assert focal.resolved_alpha > 0.5, "the minority (malignant) class must be weighted up"
    assert focal(CLS_LOGITS, CLS_LABELS).item() == pytest.approx(
        FocalLoss(alpha=2 / 3)(CLS_LOGITS, CLS_LABELS).item()
    )
    ce = CrossEntropyClassLoss(weight="auto")
    ce.set_class_counts([400, 200, 100])
    # n / (K n_k): 700 / 1200, 700 / 600, 700 / 300
    assert ce.weight.tolist() == pytest.approx([700 / 1200, 700 / 600, 700 / 300])
    # A number stays a number; counts do not override it.
    fixed = BCEClassLoss(pos_weight=3.0)
    fixed.set_class_counts([400, 200])
    assert fixed.resolved_pos_weight == 3.0


def test_auto_class_weights_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="set_class_counts"):
        BCEClassLoss(pos_weight="auto")(CLS_LOGITS, CLS_LABELS)
    with pytest.raises(ValueError, match="set_class_counts"):
        FocalLoss()(CLS_LOGITS, CLS_LABELS)
    with pytest.raises(ValueError, match="'auto'"):
        BCEClassLoss(pos_weight="balanced")
    with pytest.raises(ValueError, match="at least one image of each"):
        BCEClassLoss(pos_weight="auto").set_class_counts([10, 0])


@pytest.mark.parametrize(
    ("loss", "counts", "expected"),
    [
        (BCEClassLoss(), (200, 100), 1 / 3),  # unweighted: the training prevalence
        (BCEClassLoss(pos_weight="auto"), (200, 100), 0.5),  # class-balanced
        (BCEClassLoss(pos_weight=4.0), (200, 100), 4 / 6),  # odds x 4: 0.5 -> 2
        (FocalLoss(alpha="auto"), (300, 100), 0.5),
        (FocalLoss(alpha=None), (300, 100), 0.25),
        (CrossEntropyClassLoss(), (10, 10, 10), None),  # not binary
        (BCEClassLoss(), (10, 0), None),  # one class only
    ],
)
def test_calibrated_prior_is_the_prevalence_the_weighted_loss_trains_for(loss, counts, expected):
    if counts[1] > 0:
        loss.set_class_counts(counts)
    prior = calibrated_prior(loss, counts)
    assert prior == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize("pos_weight", [None, "auto", 3.0])
def test_the_weighted_loss_minimiser_sits_at_the_calibrated_prior(pos_weight):
    """The constant logit that minimises the weighted BCE on a 1:2 sample is the log-odds of
    the calibrated prior (0.5 under pos_weight auto), not of the sample's prevalence."""
    labels = torch.tensor([1, 0, 0] * 20)
    loss = BCEClassLoss(pos_weight=pos_weight)
    loss.set_class_counts([40, 20])
    logit = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([logit], max_iter=100)

    def closure():
        opt.zero_grad()
        value = loss(logit.expand(len(labels), 1), labels)
        value.backward()
        return value

    opt.step(closure)
    prior = calibrated_prior(loss, [40, 20])
    assert torch.sigmoid(logit).item() == pytest.approx(prior, abs=1e-4)
