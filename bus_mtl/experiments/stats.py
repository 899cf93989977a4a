"""Paired statistics for comparing variants on the same images.

Images are not always independent units: near-duplicate images (another frame of the same
lesion) and images of one patient form *groups* (:mod:`bus_mtl.data.duplicates`). Every
function here that takes ``groups`` treats a group as the unit; an image without a group is
a unit of its own. ``folds`` (strata) keep the design of a cross-validation: each fold is a
separate test set, scored by its own model.

* :func:`delong_test` — DeLong et al. (1988) test for two correlated ROC AUCs, computed with
  the fast midrank algorithm of Sun & Xu (2014, IEEE SPL 21(11):1389-1393); with ``groups``
  the variance is Obuchowski's (1997, Biometrics 53:567-578) clustered estimator.
* :func:`delong_test_by_fold` — that test per fold, combined over folds into one z-test of
  the mean per-fold AUC difference.
* :func:`paired_bootstrap_auc` / :func:`paired_bootstrap_mean` — paired (cluster) bootstrap
  of the mean per-fold AUC / mean difference: groups resampled with replacement within each
  fold, the same draw for both variants.
* :func:`paired_wilcoxon` — Wilcoxon signed-rank test over paired values;
  :func:`grouped_wilcoxon` runs it on one mean difference per group.
* :func:`holm` — Holm (1979) step-down adjusted p-values over a family of tests.
* :func:`mean_std` — the "mean ± std over folds" used in every table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps


@dataclass(frozen=True)
class TestResult:
    """A two-sided paired test: ``statistic``, ``p_value``, effect ``difference`` (a - b).

    ``n`` counts images, ``n_units`` the independent units (groups) behind them;
    ``ci_low``/``ci_high`` bound ``difference`` (95 %) where the test gives an interval.
    """

    name: str
    statistic: float
    p_value: float
    difference: float
    n: int
    n_units: int = -1
    ci_low: float = math.nan
    ci_high: float = math.nan


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


def unit_codes(groups: np.ndarray | list | None, n: int) -> np.ndarray:
    """One integer per element naming its independent unit.

    Elements with equal ``groups`` values share a unit; ``None``, NaN or ``""`` (an image
    in no group) is a unit of its own. ``groups=None`` makes every element its own unit.
    """
    if groups is None:
        return np.arange(n)
    g = np.asarray(groups, dtype=object).ravel()
    if g.size != n:
        raise ValueError(f"groups has {g.size} values but there are {n} cases")
    codes = np.empty(n, dtype=int)
    lookup: dict[object, int] = {}
    for i, x in enumerate(g):
        alone = x is None or x == "" or (isinstance(x, float) and math.isnan(x))
        codes[i] = lookup.setdefault(("\0own", i) if alone else x, len(lookup))
    return codes


def delong_auc_cov(
    labels: np.ndarray, scores: np.ndarray, groups: np.ndarray | list | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their DeLong covariance matrix for k classifiers on the same cases.

    Args:
        labels: N binary labels (1 = positive, malignant).
        scores: k×N (or N) scores; higher means more likely positive.
        groups: optional N cluster labels (near-duplicate group, patient); cases of one
            cluster are correlated. Then the covariance is Obuchowski's (1997) clustered
            estimator: the structural components V10 (per positive) and V01 (per negative)
            are summed per cluster, S10 = I10/((I10-1)M)·Σ_i (X_i - m_i θ)(X_i - m_i θ)ᵀ,
            S01 likewise over negatives, S11 = I/(I-1)·Σ_i (X_i - m_i θ)(Y_i - n_i θ)ᵀ, and
            cov = S10/M + S01/N + (S11 + S11ᵀ)/(MN). With every case its own cluster this is
            exactly DeLong's covariance.

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
    if groups is None:
        s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((k, k))
        s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((k, k))
        return aucs, s10 / m + s01 / n
    units = np.unique(unit_codes(groups, y.size), return_inverse=True)[1]
    n_units = int(units.max()) + 1
    upos, uneg = units[y == 1], units[y == 0]
    mi = np.bincount(upos, minlength=n_units).astype(float)
    ni = np.bincount(uneg, minlength=n_units).astype(float)
    xc = np.stack([np.bincount(upos, weights=v10[r], minlength=n_units) for r in range(k)])
    yc = np.stack([np.bincount(uneg, weights=v01[r], minlength=n_units) for r in range(k)])
    xc -= mi * aucs[:, None]
    yc -= ni * aucs[:, None]
    i10, i01 = int((mi > 0).sum()), int((ni > 0).sum())
    s10 = i10 / ((i10 - 1) * m) * (xc @ xc.T) if i10 > 1 else np.zeros((k, k))
    s01 = i01 / ((i01 - 1) * n) * (yc @ yc.T) if i01 > 1 else np.zeros((k, k))
    s11 = n_units / (n_units - 1) * (xc @ yc.T) if n_units > 1 else np.zeros((k, k))
    return aucs, s10 / m + s01 / n + (s11 + s11.T) / (m * n)


def _z_test(name: str, diff: float, var: float, n: int, n_units: int) -> TestResult:
    if var <= 1e-15:
        # Identical rankings (or degenerate): no evidence of a difference.
        z, p = 0.0, (1.0 if abs(diff) < 1e-12 else math.nan)
    else:
        z = diff / math.sqrt(var)
        p = float(2 * sps.norm.sf(abs(z)))
    half = 1.959963984540054 * math.sqrt(max(var, 0.0))
    return TestResult(name, float(z), p, float(diff), n, n_units, diff - half, diff + half)


def delong_test(
    labels: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    groups: np.ndarray | list | None = None,
) -> TestResult:
    """Two-sided DeLong test of AUC(a) = AUC(b) for paired scores on the same cases.

    With ``groups`` the variance is the clustered one (see :func:`delong_auc_cov`). The
    interval is the normal 95 % interval of the difference.
    """
    y, a, b = _check_binary(labels, scores_a, scores_b)
    aucs, cov = delong_auc_cov(y, np.stack([a, b]), groups)
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    units = int(np.unique(unit_codes(groups, y.size)).size)
    return _z_test("delong" if groups is None else "delong_clustered", diff, var, y.size, units)


def delong_test_by_fold(
    labels: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    folds: np.ndarray | list,
    groups: np.ndarray | list | None = None,
) -> TestResult:
    """DeLong per fold, combined over folds: a test of the *mean per-fold* AUC difference.

    For each fold f with both classes, d_f = AUC_f(a) - AUC_f(b) and its DeLong variance v_f
    (clustered when ``groups`` is given). The folds are disjoint test sets, so
    D = (1/F)·Σ_f d_f has variance (1/F²)·Σ_f v_f and z = D / sqrt(Σ_f v_f / F²) is
    referred to the standard normal (two-sided). The variance is conditional on the F
    trained models (it counts test-case sampling, not training variability). With one fold
    this is :func:`delong_test`. Folds with a single class are left out; ``n`` counts the
    images of the folds used.
    """
    y = np.asarray(labels).astype(int).ravel()
    a = np.asarray(scores_a, dtype=float).ravel()
    b = np.asarray(scores_b, dtype=float).ravel()
    f = np.asarray(folds).ravel()
    if not y.size == a.size == b.size == f.size:
        raise ValueError(
            f"labels, scores and folds differ in length: {y.size}, {a.size}, {b.size}, {f.size}"
        )
    g = None if groups is None else np.asarray(groups, dtype=object).ravel()
    diffs, variances, n, units = [], [], 0, 0
    for fold in _fold_values(f):
        sel = f == fold
        if y[sel].min() == y[sel].max():
            continue
        gs = None if g is None else g[sel]
        aucs, cov = delong_auc_cov(y[sel], np.stack([a[sel], b[sel]]), gs)
        diffs.append(float(aucs[0] - aucs[1]))
        variances.append(float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]))
        n += int(sel.sum())
        units += int(np.unique(unit_codes(gs, int(sel.sum()))).size)
    name = "delong_folds" if groups is None else "delong_clustered_folds"
    if not diffs:
        return TestResult(name, math.nan, math.nan, math.nan, 0, 0)
    k = len(diffs)
    return _z_test(name, float(np.mean(diffs)), float(np.sum(variances)) / k**2, n, units)


def _fold_values(folds: np.ndarray) -> list:
    """Distinct fold labels in order of first appearance."""
    _, first = np.unique(folds, return_index=True)
    return [folds[i] for i in sorted(first)]


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


def weighted_auc(y: np.ndarray, s: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC of each row of ``weights`` (B×N case counts or weights): the Mann-Whitney
    statistic Σ w_i w_j ψ(s_i, s_j) / (Σ_pos w · Σ_neg w) over positive i, negative j,
    ties counting 1/2. With integer counts it equals :func:`rank_auc` on the cases repeated
    that many times. NaN where a class has zero weight."""
    y = np.asarray(y).astype(int).ravel()
    s = np.asarray(s, dtype=float).ravel()
    w = np.atleast_2d(np.asarray(weights, dtype=float))
    order = np.argsort(s, kind="mergesort")
    ss, ys = s[order], y[order]
    starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
    ws = w[:, order]
    wpos = np.add.reduceat(ws * ys, starts, axis=1)
    wneg = np.add.reduceat(ws * (1 - ys), starts, axis=1)
    below = np.cumsum(wneg, axis=1) - wneg
    num = (wpos * (below + 0.5 * wneg)).sum(axis=1)
    den = wpos.sum(axis=1) * wneg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def cluster_bootstrap_weights(
    n_boot: int,
    groups: np.ndarray | list | None,
    folds: np.ndarray | list | None,
    n: int,
    seed: int = 0,
) -> np.ndarray:
    """B×N counts of a stratified cluster bootstrap.

    Within each fold (stratum) the fold's units — groups, or single images — are drawn with
    replacement as many times as the fold has units; an image's count is the number of times
    its unit was drawn, so all images of a group enter together. A group that spans folds
    is one unit per fold.
    """
    units = unit_codes(groups, n)
    strata = np.zeros(n, dtype=int) if folds is None else np.asarray(folds).ravel()
    if strata.size != n:
        raise ValueError(f"folds has {strata.size} values but there are {n} cases")
    rng = np.random.default_rng(seed)
    w = np.zeros((n_boot, n))
    rows = np.arange(n_boot)[:, None]
    for fold in _fold_values(strata):
        idx = np.flatnonzero(strata == fold)
        inv = np.unique(units[idx], return_inverse=True)[1]
        g = int(inv.max()) + 1
        draws = rng.integers(0, g, size=(n_boot, g)) + g * rows
        counts = np.bincount(draws.ravel(), minlength=n_boot * g).reshape(n_boot, g)
        w[:, idx] = counts[:, inv]
    return w


def _bootstrap_result(name: str, d: np.ndarray, diff: float, n: int, units: int) -> TestResult:
    """Two-sided p: (1 + #resamples on the far side of 0) / (B + 1), doubled (≤ 1); the
    smallest α at which the percentile interval excludes 0, never exactly 0. 95 %
    percentile interval; ``statistic`` is the bootstrap standard error."""
    d = d[np.isfinite(d)]
    if d.size < 2:
        return TestResult(name, math.nan, math.nan, diff, n, units)
    lo_tail = (1 + float((d <= 0).sum())) / (d.size + 1)
    hi_tail = (1 + float((d >= 0).sum())) / (d.size + 1)
    p = min(1.0, 2 * min(lo_tail, hi_tail))
    lo, hi = np.percentile(d, [2.5, 97.5])
    return TestResult(name, float(d.std(ddof=1)), p, diff, n, units, float(lo), float(hi))


def paired_bootstrap_auc(
    labels: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    groups: np.ndarray | list | None = None,
    folds: np.ndarray | list | None = None,
) -> TestResult:
    """Paired (cluster) bootstrap of the mean per-fold AUC(a) - AUC(b).

    Each resample draws units (``groups``; each image its own unit when None) with
    replacement within each fold (:func:`cluster_bootstrap_weights`); both classifiers are
    scored on the same draw. The statistic is the mean over folds of the per-fold AUC
    difference (plain AUC difference for one fold). Folds with a single class are left
    out; resamples in which a used fold lost a class are skipped. p-value and interval as
    in :func:`_bootstrap_result`.
    """
    y, a, b = _check_binary(labels, scores_a, scores_b)
    f = np.zeros(y.size, dtype=int) if folds is None else np.asarray(folds).ravel()
    w = cluster_bootstrap_weights(n_boot, groups, f, y.size, seed)
    units = unit_codes(groups, y.size)
    per_fold, point, n, n_units = [], [], 0, 0
    for fold in _fold_values(f):
        sel = f == fold
        if y[sel].min() == y[sel].max():
            continue
        ys = y[sel]
        per_fold.append(weighted_auc(ys, a[sel], w[:, sel]) - weighted_auc(ys, b[sel], w[:, sel]))
        point.append(rank_auc(ys, a[sel]) - rank_auc(ys, b[sel]))
        n += int(sel.sum())
        n_units += int(np.unique(units[sel]).size)
    if not per_fold:
        return TestResult("bootstrap_auc", math.nan, math.nan, math.nan, 0, 0)
    d = np.mean(np.stack(per_fold), axis=0)  # NaN where a fold lost a class: skipped
    return _bootstrap_result("bootstrap_auc", d, float(np.mean(point)), n, n_units)


def paired_bootstrap_mean(
    a: np.ndarray,
    b: np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    groups: np.ndarray | list | None = None,
    folds: np.ndarray | list | None = None,
) -> TestResult:
    """Paired (cluster) bootstrap of the mean per-fold mean of a - b (e.g. per-image Dice).

    Pairs with a NaN are dropped first. The statistic is (1/F)·Σ_f mean_{i in f}(a_i - b_i);
    resampling as in :func:`paired_bootstrap_auc`.
    """
    a = np.asarray(a, dtype=float).ravel()
    b = np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} vs {b.size}")
    keep = ~(np.isnan(a) | np.isnan(b))
    g = None if groups is None else np.asarray(groups, dtype=object).ravel()[keep]
    f = np.zeros(a.size, dtype=int) if folds is None else np.asarray(folds).ravel()
    d, f = (a - b)[keep], f[keep]
    if d.size == 0:
        return TestResult("bootstrap_mean", math.nan, math.nan, math.nan, 0, 0)
    w = cluster_bootstrap_weights(n_boot, g, f, d.size, seed)
    per_fold, point = [], []
    for fold in _fold_values(f):
        sel = f == fold
        per_fold.append(w[:, sel] @ d[sel] / w[:, sel].sum(axis=1))
        point.append(float(d[sel].mean()))
    units = int(np.unique(unit_codes(g, d.size)).size)
    boot = np.mean(np.stack(per_fold), axis=0)
    return _bootstrap_result("bootstrap_mean", boot, float(np.mean(point)), int(d.size), units)


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
        return TestResult("wilcoxon", math.nan, math.nan, math.nan, 0, 0)
    d = a - b
    diff = float(np.mean(d))
    if np.all(d == 0):
        return TestResult("wilcoxon", 0.0, 1.0, diff, n, n)
    res = sps.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided")
    return TestResult("wilcoxon", float(res.statistic), float(res.pvalue), diff, n, n)


def grouped_wilcoxon(
    a: np.ndarray, b: np.ndarray, groups: np.ndarray | list | None = None
) -> TestResult:
    """Wilcoxon signed-rank test over one value per unit: the mean of a - b over each
    group's images (pairs with a NaN dropped first; an image in no group is its own unit).

    ``difference`` is the mean of the per-unit mean differences, ``n`` the images and
    ``n_units`` the units ranked.
    """
    a = np.asarray(a, dtype=float).ravel()
    b = np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} vs {b.size}")
    keep = ~(np.isnan(a) | np.isnan(b))
    g = None if groups is None else np.asarray(groups, dtype=object).ravel()[keep]
    a, b = a[keep], b[keep]
    if a.size == 0:
        return TestResult("wilcoxon_groups", math.nan, math.nan, math.nan, 0, 0)
    units = np.unique(unit_codes(g, a.size), return_inverse=True)[1]
    size = np.bincount(units).astype(float)
    mean_a = np.bincount(units, weights=a) / size
    mean_b = np.bincount(units, weights=b) / size
    res = paired_wilcoxon(mean_a, mean_b)
    return TestResult(
        "wilcoxon_groups", res.statistic, res.p_value, res.difference, int(a.size), res.n
    )


def holm(p_values: np.ndarray | list[float]) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values, in the input order.

    With the m finite p-values sorted, p_(1) ≤ … ≤ p_(m), the adjusted p_(i) is
    max_{j ≤ i} min(1, (m - j + 1)·p_(j)); rejecting where adjusted ≤ α controls the
    family-wise error rate at α. NaN entries stay NaN and do not count in m.
    """
    p = np.asarray(p_values, dtype=float).ravel()
    out = np.full(p.shape, math.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = finite.size
    if m == 0:
        return out
    order = finite[np.argsort(p[finite], kind="mergesort")]
    scaled = (m - np.arange(m)) * p[order]
    out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out
