"""Statistics against hand-computed or independently computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bus_mtl.experiments.stats import (
    cluster_bootstrap_weights,
    delong_auc_cov,
    delong_test,
    delong_test_by_fold,
    grouped_wilcoxon,
    holm,
    mean_std,
    paired_bootstrap_auc,
    paired_bootstrap_mean,
    paired_wilcoxon,
    rank_auc,
    weighted_auc,
)


def pairwise_auc(y: np.ndarray, s: np.ndarray) -> float:
    """AUC by counting every positive/negative pair (ties count 1/2)."""
    pos, neg = s[y == 1], s[y == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


def brute_delong_cov(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """DeLong et al. (1988) covariance straight from the definition: O(m n) kernel."""
    k = scores.shape[0]
    v10, v01 = [], []
    for r in range(k):
        pos, neg = scores[r, y == 1], scores[r, y == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        v10.append(psi.mean(axis=1))  # one value per positive
        v01.append(psi.mean(axis=0))  # one value per negative
    v10, v01 = np.array(v10), np.array(v01)
    m, n = v10.shape[1], v01.shape[1]
    s10 = (v10 - v10.mean(1, keepdims=True)) @ (v10 - v10.mean(1, keepdims=True)).T / (m - 1)
    s01 = (v01 - v01.mean(1, keepdims=True)) @ (v01 - v01.mean(1, keepdims=True)).T / (n - 1)
    return s10 / m + s01 / n


@pytest.fixture
def small_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    y = np.array([1] * 14 + [0] * 20)
    a = y * 1.2 + rng.normal(size=y.size)
    b = y * 0.5 + rng.normal(size=y.size)
    b[:6] = np.round(b[:6], 0)  # some ties, within and across classes
    a[20:24] = a[0]
    return y, a, b


def test_auc_equals_pairwise_counting(small_case):
    y, a, b = small_case
    aucs, _ = delong_auc_cov(y, np.stack([a, b]))
    assert aucs[0] == pytest.approx(pairwise_auc(y, a))
    assert aucs[1] == pytest.approx(pairwise_auc(y, b))
    assert rank_auc(y, b) == pytest.approx(pairwise_auc(y, b))


def test_auc_hand_example():
    # positives 0.9, 0.4; negatives 0.5, 0.4, 0.1: pairs won 3 + (0 + 0.5 + 1) = 4.5 of 6
    y = np.array([1, 1, 0, 0, 0])
    s = np.array([0.9, 0.4, 0.5, 0.4, 0.1])
    assert rank_auc(y, s) == pytest.approx(4.5 / 6)


def test_delong_cov_matches_definition(small_case):
    y, a, b = small_case
    _, cov = delong_auc_cov(y, np.stack([a, b]))
    np.testing.assert_allclose(cov, brute_delong_cov(y, np.stack([a, b])), rtol=1e-10)


def test_delong_variance_close_to_bootstrap():
    rng = np.random.default_rng(0)
    y = np.array([1] * 60 + [0] * 90)
    a = y * 1.0 + rng.normal(size=y.size)
    b = y * 0.6 + 0.5 * a + rng.normal(size=y.size)
    _, cov = delong_auc_cov(y, np.stack([a, b]))
    var_diff = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    diffs = []
    for _ in range(3000):
        idx = rng.integers(0, y.size, y.size)
        diffs.append(rank_auc(y[idx], a[idx]) - rank_auc(y[idx], b[idx]))
    assert var_diff == pytest.approx(np.var(diffs), rel=0.2)
    assert cov[0, 0] > 0 and cov[0, 1] > 0  # correlated scores -> positive covariance


def test_delong_test_p_value_from_z(small_case):
    y, a, b = small_case
    res = delong_test(y, a, b)
    aucs, cov = delong_auc_cov(y, np.stack([a, b]))
    z = (aucs[0] - aucs[1]) / math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert res.statistic == pytest.approx(z)
    assert res.p_value == pytest.approx(math.erfc(abs(z) / math.sqrt(2)))
    assert res.difference == pytest.approx(pairwise_auc(y, a) - pairwise_auc(y, b))
    assert delong_test(y, a, a).p_value == 1.0


def test_delong_rejects_one_class_and_bad_labels():
    with pytest.raises(ValueError, match="both classes"):
        delong_test(np.ones(4), np.arange(4.0), np.arange(4.0))
    with pytest.raises(ValueError, match="0/1"):
        delong_test(np.array([0, 1, 2]), np.arange(3.0), np.arange(3.0))


def test_bootstrap_agrees_with_delong_on_clear_difference():
    rng = np.random.default_rng(1)
    y = np.array([1] * 80 + [0] * 80)
    good = y * 2.5 + rng.normal(size=y.size)
    poor = y * 0.2 + rng.normal(size=y.size)
    boot = paired_bootstrap_auc(y, good, poor, n_boot=500, seed=0)
    assert boot.p_value < 0.01 and delong_test(y, good, poor).p_value < 0.01
    same = paired_bootstrap_auc(y, good, good + 1e-9 * rng.normal(size=y.size), n_boot=200)
    assert same.p_value > 0.2


def test_wilcoxon_hand_cases():
    # 5 positive differences: exact two-sided p = 2 * (1/2)^5 = 0.0625; W- = 0
    res = paired_wilcoxon(np.array([1.0, 2, 3, 4, 5]) + 10, np.full(5, 10.0))
    assert res.p_value == pytest.approx(0.0625)
    assert res.statistic == 0
    # symmetric differences (+1,-1,+2,-2,+3,-3 magnitudes distinct-ranked pairs): p = 1
    d = np.array([0.1, -0.1, 0.2, -0.2, 0.3, -0.3])
    sym = paired_wilcoxon(0.5 + d, np.full(6, 0.5))
    assert sym.p_value == pytest.approx(1.0)
    assert paired_wilcoxon(np.ones(4), np.ones(4)).p_value == 1.0


def test_wilcoxon_drops_nan_pairs():
    a = np.array([0.9, np.nan, 0.8, 0.7, 0.6, 0.95])
    b = np.array([0.5, 0.1, np.nan, 0.2, 0.3, 0.4])
    assert paired_wilcoxon(a, b).n == 4


def test_mean_std_by_hand():
    mean, std = mean_std([0.7, 0.8, 0.9, math.nan])
    assert mean == pytest.approx(0.8)
    assert std == pytest.approx(0.1)  # sqrt(((0.1)^2 + 0 + (0.1)^2) / 2)
    assert math.isnan(mean_std([0.5])[1])


# --- group-aware statistics ------------------------------------------------------------------


def brute_obuchowski_var_diff(y, a, b, groups) -> float:
    """Var(AUC_a - AUC_b) by Obuchowski (1997), written out with loops from the paper's
    definitions (cluster sums of the V10/V01 components, I10/I01/I counts)."""

    def comps(s):
        pos, neg = s[y == 1], s[y == 0]
        auc = np.mean([[1.0 if p > q else 0.5 if p == q else 0.0 for q in neg] for p in pos])
        xs, ys = {}, {}
        for i in range(len(y)):
            psi = [1.0 if s[i] > q else 0.5 if s[i] == q else 0.0 for q in neg]
            phi = [1.0 if p > s[i] else 0.5 if p == s[i] else 0.0 for p in pos]
            if y[i] == 1:
                xs[groups[i]] = xs.get(groups[i], 0.0) + np.mean(psi)
            else:
                ys[groups[i]] = ys.get(groups[i], 0.0) + np.mean(phi)
        return auc, xs, ys

    clusters = sorted(set(groups))
    m_i = {c: sum(1 for i in range(len(y)) if groups[i] == c and y[i] == 1) for c in clusters}
    n_i = {c: sum(1 for i in range(len(y)) if groups[i] == c and y[i] == 0) for c in clusters}
    big_m, big_n, big_i = sum(m_i.values()), sum(n_i.values()), len(clusters)
    i10 = sum(1 for c in clusters if m_i[c])
    i01 = sum(1 for c in clusters if n_i[c])
    (t1, x1, y1), (t2, x2, y2) = comps(a), comps(b)

    def cx(xs, t, c):
        return xs.get(c, 0.0) - m_i[c] * t

    def cy(ys, t, c):
        return ys.get(c, 0.0) - n_i[c] * t

    def s10(xa, ta, xb, tb):
        return i10 / ((i10 - 1) * big_m) * sum(cx(xa, ta, c) * cx(xb, tb, c) for c in clusters)

    def s01(ya, ta, yb, tb):
        return i01 / ((i01 - 1) * big_n) * sum(cy(ya, ta, c) * cy(yb, tb, c) for c in clusters)

    def s11(xa, ta, yb, tb):
        return big_i / (big_i - 1) * sum(cx(xa, ta, c) * cy(yb, tb, c) for c in clusters)

    mn = big_m * big_n
    var1 = s10(x1, t1, x1, t1) / big_m + s01(y1, t1, y1, t1) / big_n + 2 * s11(x1, t1, y1, t1) / mn
    var2 = s10(x2, t2, x2, t2) / big_m + s01(y2, t2, y2, t2) / big_n + 2 * s11(x2, t2, y2, t2) / mn
    cov = (
        s10(x1, t1, x2, t2) / big_m
        + s01(y1, t1, y2, t2) / big_n
        + (s11(x1, t1, y2, t2) + s11(x2, t2, y1, t1)) / mn
    )
    return var1 + var2 - 2 * cov


def test_clustered_delong_matches_obuchowski_written_out(small_case):
    y, a, b = small_case
    # clusters mixing classes, pure clusters and singletons
    groups = [f"g{i // 3}" if i < 27 else f"s{i}" for i in range(y.size)]
    _, cov = delong_auc_cov(y, np.stack([a, b]), groups)
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    assert var == pytest.approx(brute_obuchowski_var_diff(y, a, b, groups), rel=1e-10)
    assert not np.allclose(cov, delong_auc_cov(y, np.stack([a, b]))[1])


def test_clustered_delong_with_singletons_is_delong(small_case):
    y, a, b = small_case
    plain = delong_auc_cov(y, np.stack([a, b]))[1]
    np.testing.assert_allclose(delong_auc_cov(y, np.stack([a, b]), range(y.size))[1], plain)
    # None / NaN group labels mean "own unit"
    none = [None] * (y.size - 1) + [math.nan]
    np.testing.assert_allclose(delong_auc_cov(y, np.stack([a, b]), none)[1], plain)


def test_duplicated_images_do_not_shrink_the_clustered_delong_variance(small_case):
    y, a, b = small_case
    yy, aa, bb = np.repeat(y, 2), np.repeat(a, 2), np.repeat(b, 2)
    groups = np.repeat(np.arange(y.size), 2)
    once = delong_test(y, a, b)
    naive = delong_test(yy, aa, bb)
    clustered = delong_test(yy, aa, bb, groups)
    # Counting each copy as a new case halves the variance (|z| grows by ~sqrt 2) ...
    assert abs(naive.statistic) > 1.3 * abs(once.statistic)
    # ... the clustered variance of the doubled data is exactly the variance of the original.
    assert clustered.statistic == pytest.approx(once.statistic, rel=1e-10)
    assert clustered.p_value == pytest.approx(once.p_value, rel=1e-10)
    assert clustered.n == 2 * y.size and clustered.n_units == y.size


def test_per_fold_delong_with_one_fold_is_delong(small_case):
    y, a, b = small_case
    one = delong_test_by_fold(y, a, b, np.zeros(y.size))
    ref = delong_test(y, a, b)
    assert (one.statistic, one.p_value, one.difference) == pytest.approx(
        (ref.statistic, ref.p_value, ref.difference), rel=1e-12
    )
    groups = [i // 2 for i in range(y.size)]
    one_g = delong_test_by_fold(y, a, b, ["f"] * y.size, groups)
    ref_g = delong_test(y, a, b, groups)
    assert one_g.p_value == pytest.approx(ref_g.p_value, rel=1e-12)
    assert one_g.n_units == ref_g.n_units == 17


def test_per_fold_delong_combines_folds_as_documented():
    rng = np.random.default_rng(5)
    y = np.array(([1] * 10 + [0] * 15) * 2)
    a = y * 1.0 + rng.normal(size=y.size)
    b = y * 0.3 + rng.normal(size=y.size)
    folds = np.repeat([0, 1], 25)
    res = delong_test_by_fold(y, a, b, folds)
    d, v = [], []
    for k in (0, 1):
        s = folds == k
        aucs, cov = delong_auc_cov(y[s], np.stack([a[s], b[s]]))
        d.append(aucs[0] - aucs[1])
        v.append(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    z = np.mean(d) / math.sqrt(sum(v) / 4)
    assert res.difference == pytest.approx(np.mean(d))
    assert res.statistic == pytest.approx(z)
    assert res.p_value == pytest.approx(math.erfc(abs(z) / math.sqrt(2)))
    # a fold with one class is left out, not an error
    y1 = y.copy()
    y1[folds == 1] = 0
    left = delong_test_by_fold(y1, a, b, folds)
    assert left.n == 25 and left.difference == pytest.approx(d[0])


def test_weighted_auc_equals_auc_of_repeated_cases(small_case):
    y, a, _ = small_case
    rng = np.random.default_rng(2)
    counts = rng.integers(0, 3, size=(4, y.size))
    counts[:, 0] = 1  # keep a positive
    counts[:, -1] = 1  # keep a negative
    expected = [rank_auc(np.repeat(y, c), np.repeat(a, c)) for c in counts]
    np.testing.assert_allclose(weighted_auc(y, a, counts), expected, rtol=1e-12)
    assert weighted_auc(y, a, np.ones(y.size))[0] == pytest.approx(rank_auc(y, a))
    assert math.isnan(weighted_auc(y, a, (y == 0).astype(float))[0])  # no positive left


def test_cluster_bootstrap_draws_whole_groups_within_folds():
    groups = ["a", "a", "a", "b", "b", None, None, "c", "c", None]
    folds = [0, 0, 0, 0, 0, 0, 0, 1, 1, 1]
    w = cluster_bootstrap_weights(500, groups, folds, 10, seed=3)
    assert w.shape == (500, 10)
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 1] == w[:, 2]).all()  # group a together
    assert (w[:, 3] == w[:, 4]).all() and (w[:, 7] == w[:, 8]).all()
    assert not (w[:, 5] == w[:, 6]).all()  # two images in no group: separate units
    # fold 0 has 4 units (a, b, two singles), fold 1 has 2 (c, one single): draws per fold
    assert (w[:, [0, 3, 5, 6]].sum(axis=1) == 4).all()
    assert (w[:, [7, 9]].sum(axis=1) == 2).all()


def duplicated_case():
    rng = np.random.default_rng(11)
    y = np.array([1] * 30 + [0] * 40)
    a = y * 1.0 + rng.normal(size=y.size)
    b = y * 0.7 + rng.normal(size=y.size)
    # every image appears three times (near-duplicates: same scores, same label)
    return y, a, b, np.repeat(y, 3), np.repeat(a, 3), np.repeat(b, 3), np.repeat(np.arange(70), 3)


def test_cluster_bootstrap_auc_is_wider_than_the_image_bootstrap_on_duplicates():
    y, a, b, yy, aa, bb, groups = duplicated_case()
    naive = paired_bootstrap_auc(yy, aa, bb, n_boot=800, seed=0)
    cluster = paired_bootstrap_auc(yy, aa, bb, n_boot=800, seed=0, groups=groups)
    once = paired_bootstrap_auc(y, a, b, n_boot=800, seed=0)
    width = {k: r.ci_high - r.ci_low for k, r in (("n", naive), ("c", cluster), ("o", once))}
    assert width["c"] > 1.4 * width["n"]  # sqrt(3) in expectation
    # drawing groups of identical copies is drawing the original images: the same draws
    assert cluster.ci_low == pytest.approx(once.ci_low) and cluster.ci_high == pytest.approx(
        once.ci_high
    )
    assert cluster.p_value == pytest.approx(once.p_value)
    assert cluster.p_value >= naive.p_value
    assert cluster.n == 210 and cluster.n_units == 70 and naive.n_units == 210


def test_cluster_bootstrap_of_mean_dice_difference():
    rng = np.random.default_rng(4)
    da = rng.uniform(0.6, 0.9, 40)
    db = da - 0.02 + rng.normal(0, 0.05, 40)
    aa, bb, groups = np.repeat(da, 4), np.repeat(db, 4), np.repeat(np.arange(40), 4)
    folds = np.repeat(np.arange(40) % 2, 4)
    naive = paired_bootstrap_mean(aa, bb, 600, 0, folds=folds)
    cluster = paired_bootstrap_mean(aa, bb, 600, 0, groups=groups, folds=folds)
    assert cluster.difference == pytest.approx(np.mean(da - db))
    assert cluster.ci_high - cluster.ci_low > 1.6 * (naive.ci_high - naive.ci_low)  # ~2x
    assert cluster.ci_low < cluster.difference < cluster.ci_high
    # mean over folds of fold means, NaN pairs dropped
    a2 = np.array([1.0, 0.5, np.nan, 0.2])
    b2 = np.array([0.0, 0.5, 0.3, 0.1])
    res = paired_bootstrap_mean(a2, b2, 50, folds=[0, 0, 1, 1])
    assert res.difference == pytest.approx((0.5 + 0.1) / 2) and res.n == 3


def test_bootstrap_p_value_is_never_zero():
    rng = np.random.default_rng(1)
    y = np.array([1] * 80 + [0] * 80)
    good = y * 3.0 + rng.normal(size=y.size)
    poor = rng.normal(size=y.size)
    res = paired_bootstrap_auc(y, good, poor, n_boot=399, seed=0)
    assert res.p_value == pytest.approx(2 / 400)  # no resample at or below 0


def test_grouped_wilcoxon_ranks_one_value_per_group():
    # 20 near-duplicates of one lesion, all +0.1, and 6 single images with symmetric
    # differences: image-wise the test "sees" 20 agreeing pairs, group-wise one unit.
    d = np.r_[np.full(20, 0.1), [0.2, -0.2, 0.3, -0.3, 0.4, -0.4]]
    b = np.full(d.size, 0.5)
    groups = [0] * 20 + [None] * 6
    images = paired_wilcoxon(b + d, b)
    units = grouped_wilcoxon(b + d, b, groups)
    assert images.p_value < 0.01
    assert units.p_value > 0.5 and units.n_units == 7 and units.n == 26
    # exact copies in groups give the same test as the originals
    rng = np.random.default_rng(0)
    x, z = rng.uniform(size=12), rng.uniform(size=12)
    dup = grouped_wilcoxon(np.repeat(x, 2), np.repeat(z, 2), np.repeat(np.arange(12), 2))
    assert dup.p_value == pytest.approx(paired_wilcoxon(x, z).p_value)


def test_holm_hand_worked():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 -> max so far 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    # NaN does not count in the family: m = 2
    out = holm([0.02, math.nan, 0.5])
    assert out[0] == pytest.approx(0.04) and math.isnan(out[1]) and out[2] == pytest.approx(0.5)
    np.testing.assert_allclose(holm([0.6, 0.7]), [1.0, 1.0])  # capped at 1
    assert holm([0.2]).tolist() == [0.2]
    assert holm([]).size == 0


def test_numpy_aucs_equal_the_logged_auc(small_case):
    """The bootstrap's and DeLong's own AUCs (numpy, weightable) are the AUC of the training
    logs and cv summaries (``binary_metrics``: torchmetrics ``binary_auroc``) on unweighted
    data, ties included; ``weighted_auc`` with unit weights is that AUC too."""
    import torch
    from torchmetrics.functional.classification import binary_auroc

    from bus_mtl.training.metrics import binary_metrics

    y, a, b = small_case
    aucs, _ = delong_auc_cov(y, np.stack([a, b]))
    for s, delong in zip((a, b), aucs):
        s32 = (1 / (1 + np.exp(-s))).astype(np.float32)  # probabilities, the logs' precision
        reference = float(binary_auroc(torch.from_numpy(s32), torch.from_numpy(y)))
        assert binary_metrics(s32, y)["auc"].item() == pytest.approx(reference, abs=1e-7)
        assert rank_auc(y, s32) == pytest.approx(reference, abs=1e-6)
        assert weighted_auc(y, s32, np.ones(y.size))[0] == pytest.approx(reference, abs=1e-6)
        assert delong == pytest.approx(rank_auc(y, s), abs=1e-12)
