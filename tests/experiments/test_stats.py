"""Statistics against hand-computed or independently computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bus_mtl.experiments.stats import (
    delong_auc_cov,
    delong_test,
    mean_std,
    paired_bootstrap_auc,
    paired_wilcoxon,
    rank_auc,
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
