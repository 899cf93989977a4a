"""Paired statistics for comparing variants on the same images.

* :func:`delong_test` — DeLong et al. (1988) test for two correlated ROC AUCs, computed with
  the fast midrank algorithm of Sun & Xu (2014, IEEE SPL 21(11):1389-1393).
* :func:`paired_bootstrap_auc` — paired bootstrap of the AUC difference (same resampled
  images for both classifiers).
* :func:`paired_wilcoxon` — Wilcoxon signed-rank test over paired per-image values (Dice).
* :func:`mean_std` — the "mean ± std over folds" used in every table.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps


@dataclass(frozen=True)
class TestResult:
    """A two-sided paired test: ``statistic``, ``p_value``, effect ``difference`` (a - b)."""

    name: str
    statistic: float
    p_value: float
    difference: float
    n: int

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def mean_std(values: np.ndarray | list[float], ddof: int = 1) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``) ignoring NaN; std is NaN for n < 2."""
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return math.nan, math.nan
    std = float(np.std(arr, ddof=ddof)) if arr.size > ddof else math.nan
    return float(np.mean(arr)), std


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` with ties given the mean of their ranks (Sun & Xu, Alg. 1)."""
    return sps.rankdata(x, method="average")


def _check_binary(labels: np.ndarray, *scores: np.ndarray) -> tuple[np.ndarray, ...]:
    y = np.asarray(labels).astype(int).ravel()
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0/1, got values {sorted(set(y.tolist()))}")
    if y.sum() == 0 or y.sum() == y.size:
        raise ValueError("AUC needs both classes among the labels (got only one)")
    out = []
    for s in scores:
        s = np.asarray(s, dtype=float).ravel()
        if s.shape != y.shape:
            raise ValueError(f"scores have {s.size} values but labels have {y.size}")
        if np.isnan(s).any():
            raise ValueError("scores contain NaN")
        out.append(s)
    return (y, *out)


def delong_auc_cov(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their DeLong covariance matrix for k classifiers on the same cases.

    Args:
        labels: N binary labels (1 = positive, malignant).
        scores: k×N (or N) scores; higher means more likely positive.

    Returns:
        ``(aucs, cov)``: k AUCs and the k×k covariance matrix of the AUC estimates.
    """
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    y, *_ = _check_binary(labels, *scores)
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    k = scores.shape[0]
    tx = np.stack([_midranks(pos[r]) for r in range(k)])
    ty = np.stack([_midranks(neg[r]) for r in range(k)])
    tz = np.stack([_midranks(np.concatenate([pos[r], neg[r]])) for r in range(k)])
    aucs = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    # Structural components: V10 per positive, V01 per negative (DeLong 1988).
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((k, k))
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((k, k))
    return aucs, s10 / m + s01 / n


def delong_test(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> TestResult:
    """Two-sided DeLong test of AUC(a) = AUC(b) for paired scores on the same cases."""
    y, a, b = _check_binary(labels, scores_a, scores_b)
    aucs, cov = delong_auc_cov(y, np.stack([a, b]))
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if var <= 1e-15:
        # Identical rankings (or degenerate): no evidence of a difference.
        z, p = 0.0, (1.0 if abs(diff) < 1e-12 else math.nan)
    else:
        z = diff / math.sqrt(var)
        p = float(2 * sps.norm.sf(abs(z)))
    return TestResult("delong", float(z), p, diff, int(y.size))


def rank_auc(y: np.ndarray, s: np.ndarray) -> float:
    """AUC as the Mann-Whitney statistic from midranks (ties count 1/2); NaN for one class."""
    y = np.asarray(y).astype(int)
    s = np.asarray(s, dtype=float)
    m = int(y.sum())
    n = y.size - m
    if m == 0 or n == 0:
        return math.nan
    r = _midranks(s)
    return float((r[y == 1].sum() - m * (m + 1) / 2) / (m * n))


def paired_bootstrap_auc(
    labels: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
) -> TestResult:
    """Paired bootstrap of AUC(a) - AUC(b): both scored on the same resampled cases.

    The p-value is two-sided: twice the smaller tail of the bootstrap differences around 0
    (resamples with a single class are skipped). ``statistic`` is the bootstrap std error.
    """
    y, a, b = _check_binary(labels, scores_a, scores_b)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        idx = rng.integers(0, y.size, y.size)
        yb = y[idx]
        if yb.min() == yb.max():
            continue
        diffs.append(rank_auc(yb, a[idx]) - rank_auc(yb, b[idx]))
    d = np.asarray(diffs)
    diff = rank_auc(y, a) - rank_auc(y, b)
    if d.size == 0:
        return TestResult("bootstrap_auc", math.nan, math.nan, diff, int(y.size))
    p = min(1.0, 2 * min(float((d <= 0).mean()), float((d >= 0).mean())))
    return TestResult("bootstrap_auc", float(d.std(ddof=1)), p, float(diff), int(y.size))


def paired_wilcoxon(a: np.ndarray, b: np.ndarray) -> TestResult:
    """Two-sided Wilcoxon signed-rank test of paired values (pairs with a NaN are dropped).

    Uses scipy's exact distribution for small samples without ties, its normal
    approximation otherwise. All-zero differences give ``p = 1``.
    """
    a = np.asarray(a, dtype=float).ravel()
    b = np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} vs {b.size}")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    n = int(a.size)
    if n == 0:
        return TestResult("wilcoxon", math.nan, math.nan, math.nan, 0)
    d = a - b
    diff = float(np.mean(d))
    if np.all(d == 0):
        return TestResult("wilcoxon", 0.0, 1.0, diff, n)
    res = sps.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided")
    return TestResult("wilcoxon", float(res.statistic), float(res.pvalue), diff, n)
