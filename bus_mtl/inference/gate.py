"""Accuracy gate for deployed models: Dice and AUC of a deployed form (int8, smaller input,
another runtime) against the eager PyTorch model on the same images.

Both models go through the same pre/postprocessing (:class:`BasePredictor`): the image is
decoded and resized to each model's own input size, and the mask is scored at the image's
original size against the clinician's mask, as the project's test metrics are. So the
difference isolates what deployment changed.

Dice is the per-image mean (1 when prediction and truth are both empty); AUC is the
Mann–Whitney AUC of the calibrated malignancy probability (benign 0, malignant 1; images
with another label are left out of it). The gate passes when ``|deployed - eager|`` is at
most ``tolerance`` (0.005 = 0.5 points) for each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DEFAULT_TOLERANCE = 0.005  # 0.5 points on a 0–100 scale
# Probabilities are compared on this grid for the AUC: an fp32 export reproduces eager logits
# only to ~1e-5, so the order of two images whose probabilities differ by less than that is
# float noise, not a property of the model (an untrained net's near-equal probabilities
# would otherwise flip pairs and "fail" a lossless export).
AUC_RESOLUTION = 1e-6


@dataclass(frozen=True)
class GateSample:
    """One scored image: H×W uint8 grey, its H×W bool lesion mask and class label."""

    id: str
    image: np.ndarray
    mask: np.ndarray
    label: int


@dataclass(frozen=True)
class Scores:
    """Dice (per-image mean) and AUC of one model on the gate's images."""

    dice: float
    auc: float
    n: int
    dices: np.ndarray = field(repr=False)
    probs: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class GateReport:
    """Eager vs deployed scores and whether every difference is within ``tolerance``."""

    reference: Scores
    deployed: Scores
    tolerance: float = DEFAULT_TOLERANCE
    what: str = "deployed"

    @property
    def delta(self) -> dict[str, float]:
        """deployed - eager for Dice and AUC (nan where a head is missing)."""
        return {
            "dice": self.deployed.dice - self.reference.dice,
            "auc": self.deployed.auc - self.reference.auc,
        }

    @property
    def passed(self) -> bool:
        return all(np.isnan(v) or abs(v) <= self.tolerance for v in self.delta.values())

    def __str__(self) -> str:
        r, d, delta = self.reference, self.deployed, self.delta
        verdict = "PASSED" if self.passed else "FAILED"
        return (
            f"accuracy gate {verdict} ({self.what}, {r.n} images, tolerance "
            f"{100 * self.tolerance:.1f} points): Dice {100 * r.dice:.2f} -> "
            f"{100 * d.dice:.2f} ({100 * delta['dice']:+.2f}), AUC {100 * r.auc:.2f} -> "
            f"{100 * d.auc:.2f} ({100 * delta['auc']:+.2f})"
        )


def dice_score(pred: np.ndarray, true: np.ndarray) -> float:
    """Dice of two boolean masks; 1 when both are empty."""
    pred, true = np.asarray(pred, bool), np.asarray(true, bool)
    total = int(pred.sum()) + int(true.sum())
    if total == 0:
        return 1.0
    return 2.0 * int((pred & true).sum()) / total


def binary_auc(probs: Sequence[float], labels: Sequence[int]) -> float:
    """Mann–Whitney ROC AUC (ties count one half); nan without both classes."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    pos, neg = p[y == 1], p[y == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    order = np.argsort(np.concatenate([neg, pos]), kind="mergesort")
    values = np.concatenate([neg, pos])[order]
    ranks = np.empty(len(values), dtype=np.float64)
    # average ranks over ties
    _, start, counts = np.unique(values, return_index=True, return_counts=True)
    for s, c in zip(start, counts):
        ranks[order[s : s + c]] = s + (c + 1) / 2.0
    rank_pos = ranks[len(neg) :].sum()
    return float((rank_pos - len(pos) * (len(pos) + 1) / 2.0) / (len(pos) * len(neg)))


def evaluate(predictor, samples: Sequence[GateSample]) -> Scores:
    """Dice and AUC of ``predictor`` (a :class:`BasePredictor`) on ``samples``."""
    dices, probs, labels = [], [], []
    for s in samples:
        result = predictor.predict_gray(s.image)
        if result.mask is not None:
            dices.append(dice_score(result.mask, s.mask))
        if result.probability is not None:
            probs.append(result.probability)
            labels.append(s.label)
    dice = float(np.mean(dices)) if dices else float("nan")
    gridded = np.round(np.asarray(probs, dtype=np.float64) / AUC_RESOLUTION) * AUC_RESOLUTION
    auc = binary_auc(gridded, labels) if probs else float("nan")
    return Scores(dice, auc, len(samples), np.asarray(dices), np.asarray(probs))


def check_accuracy(
    reference,
    deployed,
    samples: Sequence[GateSample],
    tolerance: float = DEFAULT_TOLERANCE,
    what: str = "deployed",
    reference_scores: Scores | None = None,
) -> GateReport:
    """Score ``reference`` (eager) and ``deployed`` on ``samples``; compare.

    Both must run the same test-time augmentation (``info.tta``): the gate isolates what
    deployment changed, and a model without the checkpoint's TTA is another model
    (``ValueError`` naming both and the fix).
    """
    ref_tta = getattr(getattr(reference, "info", None), "tta", "none")
    dep_tta = getattr(getattr(deployed, "info", None), "tta", "none")
    if ref_tta != dep_tta:
        raise ValueError(
            f"the eager model runs test-time augmentation {ref_tta!r} but the deployed one "
            f"({what}) {dep_tta!r}: re-export the checkpoint (bus-mtl export --ckpt ...), which "
            "puts its TTA into the exported graph"
        )
    ref = reference_scores if reference_scores is not None else evaluate(reference, samples)
    return GateReport(ref, evaluate(deployed, samples), tolerance, what)


def load_fold_samples(
    busi_root: str | Path | None = None,
    fold: int = 0,
    part: str = "test",
    cache_dir: str | Path | None = None,
    n: int | None = None,
    seed: int = 0,
) -> list[GateSample]:
    """The images of one part (``"test"``, ``"val"`` or ``"train"``) of a BUSI fold, as the
    project's default 5-fold split (``BUSDataModule`` defaults, seed 42) makes it; ``n``: a
    random subset of that many (``seed``), e.g. int8 calibration images from ``"train"``.

    ``busi_root`` defaults to ``$BUS_MTL_DATA`` or ``../shared/data/busi``.
    """
    import tempfile

    from bus_mtl.data import BUSDataModule
    from bus_mtl.data.io import read_image, read_masks
    from bus_mtl.data.paths import find_busi_root
    from bus_mtl.data.sources import BUSISource

    root = Path(busi_root) if busi_root is not None else find_busi_root()
    if root is None:
        raise FileNotFoundError(
            "BUSI not found: pass its folder (--busi-root) or set $BUS_MTL_DATA"
        )
    with tempfile.TemporaryDirectory() as tmp:
        dm = BUSDataModule(
            BUSISource(root),
            fold=fold,
            cache_dir=str(cache_dir or tmp),
            preload=False,
            image_size=64,  # only the split is used; images are read from the files below
        )
        dm.setup("test")
        chosen = list(dm.datasets[part].samples)
    if n is not None and n < len(chosen):
        pick = np.random.default_rng(seed).choice(len(chosen), size=n, replace=False)
        chosen = [chosen[i] for i in sorted(pick)]
    out = []
    for s in chosen:
        image = read_image(s.image)
        mask = read_masks(s.masks, image.shape) > 0
        out.append(GateSample(s.id, image, mask, int(s.label)))
    return out


def gate_model(
    ckpt_path: str | Path,
    model_path: str | Path,
    samples: Sequence[GateSample],
    tolerance: float = DEFAULT_TOLERANCE,
    num_threads: int | None = None,
) -> GateReport:
    """The accuracy gate of an exported ONNX model against its training checkpoint run
    eagerly in PyTorch, on ``samples`` (e.g. :func:`load_fold_samples` of fold 0's test).
    The eager model includes the checkpoint's test-time augmentation, as the export does."""
    from bus_mtl.inference.predictor import Predictor
    from bus_mtl.inference.torch_predictor import TorchPredictor

    deployed = Predictor(model_path, num_threads=num_threads)
    # The eager model evaluated as the export was made (its TTA and operating point).
    eager = TorchPredictor.from_checkpoint(ckpt_path, tta=deployed.info.tta)
    precision = getattr(deployed, "precision", "fp32")
    what = f"{Path(model_path).name}: {precision} at {deployed.info.image_size}px"
    if deployed.info.tta != "none":
        what += f", TTA {deployed.info.tta}"
    return check_accuracy(eager, deployed, samples, tolerance, what)
