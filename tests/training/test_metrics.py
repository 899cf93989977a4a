"""Metrics against values derived by hand, brute-force references and MONAI; DDP merging."""

from __future__ import annotations

import math
import os
import socket
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bus_mtl.training.metrics import (
    ClassificationMetrics,
    SegmentationMetrics,
    hd95,
    original_size_seg_metrics,
    per_image_seg_metrics,
)

NAN = float("nan")
BIG = 20.0  # |logit| used to encode a binary mask as logits


def _logits(mask: torch.Tensor) -> torch.Tensor:
    return (mask.float() * 2 - 1) * BIG


def _mask(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)[None, None]


def _nan_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, equal_nan=True, atol=1e-6)


# 2×2 case: |pred| = 3, |target| = 3, overlap 2 -> Dice = 2·2 / (3 + 3) = 2/3, IoU = 2 / 4.
PRED_2x2 = _mask([[1, 1], [1, 0]])
TRUE_2x2 = _mask([[1, 0], [1, 1]])
# In a 2×2 mask every foreground pixel is a contour pixel. Pred contour -> nearest target
# contour: (0,0) 0, (0,1) 1, (1,0) 0, i.e. [0, 0, 1]; the 95th percentile with linear
# interpolation sits at position 0.95·2 = 1.9: 0 + 0.9·(1 - 0) = 0.9. Symmetric: also 0.9.
HD95_2x2 = 0.9


def test_dice_iou_hd95_by_hand() -> None:
    values = per_image_seg_metrics(_logits(PRED_2x2), TRUE_2x2)
    assert values["dice"].item() == pytest.approx(2 / 3)
    assert values["iou"].item() == pytest.approx(0.5)
    assert values["hd95"].item() == pytest.approx(HD95_2x2)
    assert values["mask_area"].item() == 3 and values["target_area"].item() == 3


def test_hd95_by_hand_on_lines() -> None:
    # Two 1-pixel vertical lines 4 columns apart: every distance is 4.
    a = torch.zeros(12, 12, dtype=torch.bool)
    b = torch.zeros(12, 12, dtype=torch.bool)
    a[2:9, 3] = True
    b[2:9, 7] = True
    assert hd95(a.numpy(), b.numpy()) == pytest.approx(4.0)
    # A 20-pixel line, and the same line plus outliers 10 pixels away (an isolated pixel is
    # its own contour). One outlier: pred->target distances = 20 zeros + [10]; position
    # 0.95·20 = 19 -> 0. Hausdorff would be 10, HD95 ignores it.
    line = torch.zeros(24, 24, dtype=torch.bool)
    line[0:20, 2] = True
    one = line.clone()
    one[10, 12] = True
    assert hd95(one.numpy(), line.numpy()) == pytest.approx(0.0)
    # Two outliers: 20 zeros + [10, 10]; position 0.95·21 = 19.95 -> 0 + 0.95·10 = 9.5.
    two = one.clone()
    two[14, 12] = True
    assert hd95(two.numpy(), line.numpy()) == pytest.approx(9.5)
    # Symmetric: swapping the masks gives the same value.
    assert hd95(line.numpy(), two.numpy()) == pytest.approx(9.5)


def test_hd95_matches_monai() -> None:
    from monai.metrics import compute_hausdorff_distance

    g = torch.Generator().manual_seed(0)
    pred = torch.rand(6, 1, 40, 48, generator=g) > 0.85
    true = torch.rand(6, 1, 40, 48, generator=g) > 0.9
    pred[:, :, 5:25, 0:20] = True  # blobs touching the border
    true[:, :, 10:39, 8:30] = True
    pred[5] = False  # one empty prediction -> NaN in both
    ours = per_image_seg_metrics(_logits(pred), true.float())["hd95"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = compute_hausdorff_distance(
            pred.float(), true.float(), include_background=True, percentile=95
        )[:, 0]
    assert _nan_equal(ours, reference)
    assert torch.isnan(ours[5]) and not torch.isnan(ours[:5]).any()


def test_empty_mask_policy() -> None:
    empty = torch.zeros(1, 1, 2, 2)
    pred = torch.cat([empty, PRED_2x2, empty, PRED_2x2])
    true = torch.cat([empty, empty, TRUE_2x2, TRUE_2x2])
    metric = SegmentationMetrics()
    per = metric.per_image_values(_logits(pred), true)
    metric.update(per_image=per)
    # both empty -> 1, 1, NaN; false detection / missed lesion -> 0, 0, NaN; normal case
    assert _nan_equal(per["dice"], torch.tensor([1.0, 0.0, 0.0, 2 / 3]))
    assert _nan_equal(per["iou"], torch.tensor([1.0, 0.0, 0.0, 0.5]))
    assert _nan_equal(per["hd95"], torch.tensor([NAN, NAN, NAN, HD95_2x2]))
    out = metric.compute()
    assert out["dice"].item() == pytest.approx((1 + 0 + 0 + 2 / 3) / 4)
    assert out["iou"].item() == pytest.approx((1 + 0 + 0 + 0.5) / 4)
    assert out["hd95"].item() == pytest.approx(HD95_2x2)  # NaNs left out of the mean
    assert out["hd95_undefined"].item() == pytest.approx(2 / 4)  # images 1 and 2
    # Lesion-only Dice: images 3 and 4 (the ones with a lesion), no free 1.0 from image 1.
    assert out["dice_lesion"].item() == pytest.approx((0 + 2 / 3) / 2)


def test_include_background_and_threshold() -> None:
    # Background: pred [[0,0],[0,1]], target [[0,1],[0,0]] -> no overlap: Dice = IoU = 0.
    values = per_image_seg_metrics(_logits(PRED_2x2), TRUE_2x2, include_background=True)
    assert values["dice"].item() == pytest.approx((2 / 3 + 0) / 2)
    assert values["iou"].item() == pytest.approx((0.5 + 0) / 2)
    assert values["hd95"].item() == pytest.approx(HD95_2x2)
    # sigmoid(logit) = 0.6 everywhere: lesion at threshold 0.5, nothing at 0.7.
    logits = torch.full((1, 1, 2, 2), math.log(0.6 / 0.4))
    assert per_image_seg_metrics(logits, TRUE_2x2, threshold=0.5)["mask_area"].item() == 4
    assert per_image_seg_metrics(logits, TRUE_2x2, threshold=0.7)["mask_area"].item() == 0
    static = SegmentationMetrics.per_image(logits, TRUE_2x2, threshold=0.7)
    assert static["dice"].item() == 0.0


def test_segmentation_metrics_accumulate_reset_and_empty() -> None:
    metric = SegmentationMetrics()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics warns on compute before update
        out = metric.compute()
    assert all(math.isnan(v.item()) for v in out.values())
    metric.update(_logits(PRED_2x2), TRUE_2x2)
    metric.update(_logits(TRUE_2x2), TRUE_2x2)  # perfect: Dice 1, HD95 0
    assert metric.accumulated()["dice"].tolist() == pytest.approx([2 / 3, 1.0])
    assert metric.compute()["hd95"].item() == pytest.approx(HD95_2x2 / 2)
    metric.reset()
    assert metric.accumulated()["dice"].numel() == 0


def test_original_size_metrics_resize_logits_back() -> None:
    # A 40×100 (H×W) image with a lesion, seen by the network as a 32×32 square resize.
    target = torch.zeros(40, 100)
    target[10:30, 20:60] = 1
    small = torch.nn.functional.interpolate(target[None, None], size=(32, 32), mode="nearest")
    exact = original_size_seg_metrics(_logits(small), [target])
    assert exact["dice"].item() > 0.9 and exact["target_area"].item() == 800
    # Shifted right by 2 input pixels = 2 * 100 / 32 = 6.25 original pixels.
    shifted = torch.roll(small, 2, dims=-1)
    at_input = per_image_seg_metrics(_logits(shifted), small)
    orig = original_size_seg_metrics(_logits(shifted), [target])
    assert at_input["hd95"].item() == pytest.approx(2.0, abs=0.01)
    # In original pixels: the shift (6.25) plus the nearest-resize error at the edges.
    assert 6.25 - 1 <= orig["hd95"].item() <= 6.25 + exact["hd95"].item() + 1
    # The metric object takes a list of original-size masks in place of a B×1×H×W target.
    metric = SegmentationMetrics()
    metric.update(torch.cat([_logits(small), _logits(shifted)]), [target, target])
    assert metric.compute()["dice"].item() == pytest.approx(
        (exact["dice"].item() + orig["dice"].item()) / 2, abs=1e-6
    )
    with pytest.raises(ValueError, match="2 original-size masks for a batch of 1"):
        original_size_seg_metrics(_logits(small), [target, target])


def test_segmentation_metrics_bad_input() -> None:
    with pytest.raises(ValueError, match="threshold"):
        SegmentationMetrics(threshold=1.0)
    with pytest.raises(ValueError, match="does not match"):
        SegmentationMetrics().update(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="B×1×H×W"):
        SegmentationMetrics().update(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="not both"):
        SegmentationMetrics().update(
            _logits(PRED_2x2),
            TRUE_2x2,
            per_image=per_image_seg_metrics(_logits(PRED_2x2), TRUE_2x2),
        )
    with pytest.raises(ValueError, match="mask_logits and target, or per_image"):
        SegmentationMetrics().update(_logits(PRED_2x2))
    with pytest.raises(ValueError, match="lacks \\['target_area'\\]"):
        SegmentationMetrics().update(
            per_image={k: torch.zeros(2) for k in ("dice", "iou", "hd95", "mask_area")}
        )
    with pytest.raises(ValueError, match="one length"):
        values = {k: torch.zeros(2) for k in ("dice", "iou", "hd95", "mask_area")}
        SegmentationMetrics().update(per_image={**values, "target_area": torch.zeros(3)})


def test_precomputed_per_image_values_update_like_logits() -> None:
    # update(per_image=metric.per_image_values(...)) accumulates what update(logits, target)
    # does, at the working resolution and for original-size targets alike.
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 1, 16, 16, generator=g) * 4
    target = (torch.rand(3, 1, 16, 16, generator=g) > 0.6).float()
    originals = [(torch.rand(20 + 3 * i, 30, generator=g) > 0.6).float() for i in range(3)]
    for tgt in (target, originals):
        direct, precomputed = SegmentationMetrics(threshold=0.6), SegmentationMetrics(threshold=0.6)
        direct.update(logits, tgt)
        values = precomputed.per_image_values(logits, tgt)
        assert precomputed.accumulated()["dice"].numel() == 0  # the state is not touched
        precomputed.update(per_image=values)
        for key, value in direct.accumulated().items():
            assert _nan_equal(precomputed.accumulated()[key], value), key
        for key, value in direct.compute().items():
            assert _nan_equal(precomputed.compute()[key], value), key
    # with_hd95=False (the training stage) leaves HD95 NaN in the values handed back.
    assert torch.isnan(
        SegmentationMetrics(with_hd95=False).per_image_values(logits, target)["hd95"]
    ).all()


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


# K = 1. Valid: p = [0.91, 0.83, 0.30, 0.90, 0.17], y = [1, 1, 1, 0, 0]; the last sample is
# unlabelled (-1) and must not count. At threshold 0.5: predicted [1, 1, 0, 1, 0]
#   TP = 2, FN = 1 (0.30), FP = 1 (0.90), TN = 1 (0.17)
BIN_P = [0.91, 0.83, 0.30, 0.90, 0.17, 0.99]
BIN_Y = [1, 1, 1, 0, 0, -1]
BIN_EXPECTED = {
    "acc": 3 / 5,
    "sensitivity": 2 / 3,
    "specificity": 1 / 2,
    "f1": 2 * 2 / (2 * 2 + 1 + 1),
    "balanced_acc": (2 / 3 + 1 / 2) / 2,
    # positives {.91, .83, .30} vs negatives {.90, .17}: 6 pairs, wins:
    # .91>.90 .91>.17 .83>.17 .30>.17 = 4 -> 4/6
    "auc": 4 / 6,
    # 15 bins of width 1/15: .91 and .90 share bin 13 (mean y 1/2, mean p .905),
    # .83 -> bin 12, .30 -> bin 4, .17 -> bin 2:
    # (2·|.5 - .905| + |1 - .83| + |1 - .30| + |0 - .17|) / 5
    "ece": (2 * 0.405 + 0.17 + 0.70 + 0.17) / 5,
    # (.09² + .17² + .70² + .90² + .17²) / 5
    "brier": (0.0081 + 0.0289 + 0.49 + 0.81 + 0.0289) / 5,
}


def test_binary_classification_by_hand() -> None:
    metric = ClassificationMetrics(num_classes=1)
    metric.update(torch.tensor([[_logit(p)] for p in BIN_P]), torch.tensor(BIN_Y))
    out = metric.compute()
    assert set(out) == set(BIN_EXPECTED)
    for name, expected in BIN_EXPECTED.items():
        assert out[name].item() == pytest.approx(expected, abs=1e-5), name


# K = 3 (benign, malignant, normal); softmax(log p) = p.
#   y=0 [.70 .22 .08] argmax 0 ok      y=1 [.10 .62 .28] argmax 1 ok (TP)
#   y=2 [.20 .50 .30] argmax 1 (FP)    y=1 [.50 .30 .20] argmax 0 (FN)
#   y=2 [.10 .10 .80] argmax 2 ok      y=-1 ignored
# 3-class accuracy 3/5; malignant one-vs-rest: TP 1, FN 1, FP 1, TN 2.
MULTI_P = [
    [0.70, 0.22, 0.08],
    [0.10, 0.62, 0.28],
    [0.20, 0.50, 0.30],
    [0.50, 0.30, 0.20],
    [0.10, 0.10, 0.80],
    [0.10, 0.80, 0.10],
]
MULTI_Y = [0, 1, 2, 1, 2, -1]
MULTI_EXPECTED = {
    "acc": 3 / 5,
    "sensitivity": 1 / 2,
    "specificity": 2 / 3,
    "f1": 2 * 1 / (2 * 1 + 1 + 1),
    "balanced_acc": (1 / 2 + 2 / 3) / 2,
    # P(malignant) = [.22, .62, .50, .30, .10]; positives {.62, .30} vs {.22, .50, .10}:
    # .62 wins 3, .30 wins 2 -> 5/6
    "auc": 5 / 6,
    # every sample alone in its bin (3, 9, 7, 4, 1): mean |y - p|
    "ece": (0.22 + 0.38 + 0.50 + 0.70 + 0.10) / 5,
    "brier": (0.22**2 + 0.38**2 + 0.50**2 + 0.70**2 + 0.10**2) / 5,
}


def test_three_class_classification_by_hand() -> None:
    metric = ClassificationMetrics(num_classes=3)
    metric.update(torch.tensor(MULTI_P).log(), torch.tensor(MULTI_Y))
    out = metric.compute()
    for name, expected in MULTI_EXPECTED.items():
        assert out[name].item() == pytest.approx(expected, abs=1e-5), name


def _pairwise_auc(p: list[float], y: list[int]) -> float:
    pos = [a for a, t in zip(p, y) if t == 1]
    neg = [b for b, t in zip(p, y) if t == 0]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def _binned_ece(p: list[float], y: list[int], bins: int = 15) -> float:
    groups: dict[int, list[tuple[float, int]]] = {}
    for prob, target in zip(p, y):
        groups.setdefault(min(int(prob * bins), bins - 1), []).append((prob, target))
    return sum(
        abs(sum(t for _, t in g) / len(g) - sum(q for q, _ in g) / len(g)) * len(g) / len(p)
        for g in groups.values()
    )


def test_auc_and_ece_against_references() -> None:
    g = torch.Generator().manual_seed(1)
    # Probabilities on a coarse grid so that ties occur (AUC counts them as 1/2); bin
    # boundaries k/15 are avoided by the +1/60 offset.
    p = (torch.randint(0, 30, (200,), generator=g).float() / 30 + 1 / 60).clamp(max=0.99)
    y = (torch.rand(200, generator=g) < p).long()
    metric = ClassificationMetrics()
    metric.update(torch.logit(p)[:, None], y)
    out = metric.compute()
    p_list = torch.sigmoid(torch.logit(p)).tolist()
    assert out["auc"].item() == pytest.approx(_pairwise_auc(p_list, y.tolist()), abs=1e-6)
    assert out["ece"].item() == pytest.approx(_binned_ece(p_list, y.tolist()), abs=1e-5)


def test_undefined_values_are_nan_not_zero() -> None:
    metric = ClassificationMetrics()
    metric.update(torch.tensor([[2.0], [-1.0]]), torch.tensor([1, 1]))  # malignant only
    out = metric.compute()
    assert math.isnan(out["auc"].item())
    assert math.isnan(out["specificity"].item()) and math.isnan(out["balanced_acc"].item())
    assert out["sensitivity"].item() == pytest.approx(0.5)
    assert out["acc"].item() == pytest.approx(0.5)
    # Benign only, all predicted benign: no F1 (0/0), no sensitivity, specificity 1.
    metric = ClassificationMetrics()
    metric.update(torch.tensor([[-2.0], [-1.0]]), torch.tensor([0, 0]))
    out = metric.compute()
    assert math.isnan(out["f1"].item()) and math.isnan(out["sensitivity"].item())
    assert out["specificity"].item() == 1.0
    # Nothing labelled at all, and nothing at all.
    for updates in ([(torch.zeros(2, 1), torch.tensor([-1, -1]))], []):
        metric = ClassificationMetrics()
        for logits, labels in updates:
            metric.update(logits, labels)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = metric.compute()
        assert len(out) == 8 and all(math.isnan(v.item()) for v in out.values())


def test_classification_metrics_bad_input() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        ClassificationMetrics(num_classes=2)
    with pytest.raises(ValueError, match="threshold"):
        ClassificationMetrics(threshold=0.0)
    with pytest.raises(ValueError, match=r"0\.\.1 or -1"):
        ClassificationMetrics().update(torch.zeros(2, 1), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="B×3"):
        ClassificationMetrics(num_classes=3).update(torch.zeros(2, 1), torch.tensor([0, 1]))


def _random_seg_batch(seed: int, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pred = torch.rand(n, 1, 24, 24, generator=g) > 0.8
    true = torch.zeros(n, 1, 24, 24, dtype=torch.bool)
    true[: n - 2, :, 6:16, 5:18] = True  # the last two images are "normal" (empty)
    pred[-1] = False
    return _logits(pred), true.float()


def _random_cls_batch(seed: int, n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, generator=g), torch.randint(-1, 2, (n,), generator=g)


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert _nan_equal(a[k], b[k]), k


def test_merged_rank_states_equal_one_process() -> None:
    # What DDP's sync does: cat the per-sample states of every rank, then compute once.
    mask_logits, masks = _random_seg_batch(0)
    logits, labels = _random_cls_batch(0)
    for make, inputs in (
        (SegmentationMetrics, (mask_logits, masks)),
        (ClassificationMetrics, (logits, labels)),
    ):
        whole, rank0, rank1 = make(), make(), make()
        whole.update(*inputs)
        rank0.update(*(x[::2] for x in inputs))
        rank1.update(*(x[1::2] for x in inputs))
        rank0.merge_state(rank1)
        _assert_same(rank0.compute(), whole.compute())


def test_synced_states_compute_like_lists() -> None:
    # Under DDP, compute() all-gathers each "cat" state into one tensor before computing.
    # Fake a second rank that holds the first images / samples of this one (every state
    # is per sample, so t[:3] is the same 3 samples in each); the metric must then equal
    # one process that saw both shards.
    mask_logits, masks = _random_seg_batch(0)
    logits, labels = _random_cls_batch(0)
    labelled = labels != -1  # the classification states only hold labelled samples
    for make, inputs, other_rank in (
        (SegmentationMetrics, (mask_logits, masks), (mask_logits[:3], masks[:3])),
        (ClassificationMetrics, (logits, labels), (logits[labelled][:3], labels[labelled][:3])),
    ):
        local = make(
            dist_sync_fn=lambda t, group=None: [t, t[:3].clone()],
            distributed_available_fn=lambda: True,
        )
        local.update(*inputs)
        both = make()
        both.update(*inputs)
        both.update(*other_rank)
        alone = make()
        alone.update(*inputs)
        synced = local.compute()
        _assert_same(synced, both.compute())
        assert not all(_nan_equal(synced[k], v) for k, v in alone.compute().items())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        mask_logits, masks = _random_seg_batch(0)
        logits, labels = _random_cls_batch(0)
        seg, cls = SegmentationMetrics(), ClassificationMetrics()
        # Uneven shards: rank 0 gets 5 images, rank 1 gets 3 (and 7 / 5 labels).
        seg.update(
            mask_logits[:5] if rank == 0 else mask_logits[5:], masks[:5] if rank == 0 else masks[5:]
        )
        cls.update(logits[:7] if rank == 0 else logits[7:], labels[:7] if rank == 0 else labels[7:])
        torch.save({**seg.compute(), **cls.compute()}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes re-import torch: ~15 s alone, more on a busy box
def test_two_process_gloo_sync_equals_one_process(tmp_path: Path) -> None:
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    mask_logits, masks = _random_seg_batch(0)
    logits, labels = _random_cls_batch(0)
    seg, cls = SegmentationMetrics(), ClassificationMetrics()
    seg.update(mask_logits, masks)
    cls.update(logits, labels)
    single = {**seg.compute(), **cls.compute()}
    for rank in range(2):
        _assert_same(torch.load(tmp_path / f"rank{rank}.pt"), single)


def test_classification_metrics_and_pooled_metrics_agree() -> None:
    """One definition: the training logs (ClassificationMetrics) and the pooled cv metrics
    (pooled_metrics on the per-image table) give the same numbers on the same images,
    at a threshold other than 0.5, with a probability exactly at the threshold (benign:
    ``p > t``), ties, and a probability of exactly 1."""
    import pandas as pd

    from bus_mtl.experiments.results import pooled_metrics
    from bus_mtl.training.metrics import BINARY_METRICS, binary_metrics

    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 2, (60,), generator=g)
    logits = (y * 2 - 1) * 0.7 + torch.randn(60, generator=g) * 1.5
    logits[10:14] = logits[9]  # ties
    logits[20] = 40.0  # sigmoid is exactly 1 in float32
    threshold = float(torch.sigmoid(logits[5]))  # a stored threshold that a test image hits
    y[5] = 1  # a malignant image exactly at the threshold: a false negative
    assert threshold != 0.5
    metric = ClassificationMetrics(threshold=threshold)
    metric.update(logits[:, None], y)
    logged = metric.compute()
    probs = torch.sigmoid(logits)
    assert float(probs[20]) == 1.0 and float(probs[5]) == threshold
    table = pd.DataFrame({"label": y.numpy(), "prob": probs.double().numpy()})
    pooled = pooled_metrics(table.assign(threshold=threshold))
    direct = binary_metrics(probs, y, threshold)
    assert set(BINARY_METRICS) <= set(pooled)
    for name in BINARY_METRICS:
        assert pooled[name] == pytest.approx(logged[name].item(), abs=1e-7), name
        assert direct[name].item() == pytest.approx(logged[name].item(), abs=1e-7), name
    # by hand: malignant strictly above the threshold
    called = probs > threshold
    tp = int((called & (y == 1)).sum())
    assert logged["sensitivity"].item() == pytest.approx(tp / int(y.sum()))
    assert not called[5]
    # the same table decided at 0.5 (no stored threshold) differs
    assert pooled_metrics(table)["sensitivity"] != pooled["sensitivity"]


def test_malignant_calls_is_strict_and_per_sample() -> None:
    from bus_mtl.training.metrics import malignant_calls

    p = torch.tensor([0.25, 0.375, 0.5, 0.625])
    assert malignant_calls(p, 0.375).tolist() == [False, False, True, True]
    assert malignant_calls(p.numpy(), [0.2, 0.4, 0.5, 0.6]).tolist() == [True, False, False, True]


def test_binary_metrics_nan_rules_and_bad_labels() -> None:
    from bus_mtl.training.metrics import BINARY_METRICS, binary_metrics

    empty = binary_metrics([], [])
    assert set(empty) == set(BINARY_METRICS) and all(math.isnan(v.item()) for v in empty.values())
    one_class = binary_metrics([0.2, 0.9], [1, 1])
    assert math.isnan(one_class["auc"].item()) and math.isnan(one_class["specificity"].item())
    with pytest.raises(ValueError, match="labels must be >= 0"):
        binary_metrics([0.2, 0.9], [1, -1])


def test_calibration_ece_is_the_logged_malignant_one_vs_rest_ece() -> None:
    """``val/ece_*`` (TemperatureCalibration) and ``val/ece`` (ClassificationMetrics) are the
    same kind of ECE for K = 3: malignant one-vs-rest, not top-label."""
    from bus_mtl.training.calibration import expected_calibration_error

    logits = torch.tensor(MULTI_P).log()
    labels = torch.tensor(MULTI_Y)
    metric = ClassificationMetrics(num_classes=3)
    metric.update(logits, labels)
    ece = expected_calibration_error(logits, labels)  # the -1 row is ignored here too
    assert ece == pytest.approx(metric.compute()["ece"].item(), abs=1e-7)
    assert ece == pytest.approx(MULTI_EXPECTED["ece"], abs=1e-6)
    binary = torch.tensor([[_logit(p)] for p in BIN_P])
    assert expected_calibration_error(binary, torch.tensor(BIN_Y)) == pytest.approx(
        BIN_EXPECTED["ece"], abs=1e-5
    )
