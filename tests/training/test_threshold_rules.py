"""The binormal Youden rule: the right cut-off where its model holds, steadier than the
empirical one on validation-sized samples, and the empirical rule where the model fails."""

from __future__ import annotations

import math

import pytest
import torch

from bus_mtl.training.calibration import (
    THRESHOLD_RULES,
    TemperatureCalibration,
    binormal_youden_threshold,
    choose_threshold,
)


def _sample(n0: int, n1: int, m0: float, s0: float, m1: float, s1: float, g: torch.Generator):
    z = torch.cat([torch.randn(n0, generator=g) * s0 + m0, torch.randn(n1, generator=g) * s1 + m1])
    labels = torch.cat([torch.zeros(n0), torch.ones(n1)]).long()
    return torch.sigmoid(z.double()), labels


def _density_crossing(m0: float, s0: float, m1: float, s1: float) -> float:
    """The cut-off between the means where the two normal densities are equal: J's maximum."""
    a = 1 / s0**2 - 1 / s1**2
    b = -2 * (m0 / s0**2 - m1 / s1**2)
    c = m0**2 / s0**2 - m1**2 / s1**2 + 2 * math.log(s0 / s1)
    roots = (
        [-c / b]
        if abs(a) < 1e-12
        else [(-b + sign * math.sqrt(b * b - 4 * a * c)) / (2 * a) for sign in (1, -1)]
    )
    return next(r for r in roots if min(m0, m1) < r < max(m0, m1))


@pytest.mark.parametrize("s0, s1", [(1.0, 1.0), (0.8, 1.6)])
def test_binormal_cutoff_is_the_density_crossing(s0, s1):
    g = torch.Generator().manual_seed(0)
    probs, labels = _sample(40000, 20000, -1.0, s0, 1.5, s1, g)
    t = choose_threshold(probs, labels, "youden_binormal")
    expected = _density_crossing(-1.0, s0, 1.5, s1)
    assert math.log(t / (1 - t)) == pytest.approx(expected, abs=0.03)


def test_binormal_cutoff_is_steadier_than_the_empirical_one_on_small_samples():
    # 52 benign and 25 malignant images per draw, as a BUSI fold's validation part.
    g = torch.Generator().manual_seed(1)
    cuts = {"youden": [], "youden_binormal": []}
    for _ in range(200):
        probs, labels = _sample(52, 25, -1.2, 1.3, 1.3, 1.6, g)
        for rule in cuts:
            t = choose_threshold(probs, labels, rule)
            cuts[rule].append(math.log(t / (1 - t)))
    spread = {rule: torch.tensor(v).std().item() for rule, v in cuts.items()}
    assert spread["youden_binormal"] < 0.7 * spread["youden"], spread


def test_binormal_rule_falls_back_to_the_empirical_one():
    probs = torch.tensor([0.9, 0.6, 0.5, 0.3, 0.2, 0.1])
    # One malignant image: no spread to fit.
    labels = torch.tensor([1, 0, 0, 0, 0, 0])
    assert binormal_youden_threshold(probs, labels) is None
    assert choose_threshold(probs, labels, "youden_binormal") == choose_threshold(
        probs, labels, "youden"
    )
    # Malignant ranked below benign: no cut-off with J > 0 under the model.
    inverted = torch.tensor([0, 0, 0, 1, 1, 1])
    assert binormal_youden_threshold(probs, inverted) is None
    assert choose_threshold(probs, inverted, "youden_binormal") == choose_threshold(
        probs, inverted, "youden"
    )
    # One class only: the default, as for every rule.
    assert choose_threshold(probs, torch.ones(6).long(), "youden_binormal", default=0.3) == 0.3


def test_binormal_youden_is_the_default_rule():
    assert THRESHOLD_RULES[0] == "youden_binormal"
    assert TemperatureCalibration().threshold_rule == "youden_binormal"
    g = torch.Generator().manual_seed(2)
    probs, labels = _sample(50, 25, -1.0, 1.0, 1.0, 1.0, g)
    assert choose_threshold(probs, labels) == choose_threshold(probs, labels, "youden_binormal")


def test_binormal_sensitivity_cutoff_is_the_fitted_quantile():
    g = torch.Generator().manual_seed(2)
    probs, labels = _sample(20000, 20000, -1.0, 1.0, 1.5, 1.2, g)
    t = choose_threshold(probs, labels, "sensitivity_binormal", target_sensitivity=0.9)
    # N(1.5, 1.2): 90 % of malignant logits lie above 1.5 - 1.2816 * 1.2.
    assert math.log(t / (1 - t)) == pytest.approx(1.5 - 1.2816 * 1.2, abs=0.05)


def test_binormal_sensitivity_cutoff_is_steadier_on_small_samples():
    g = torch.Generator().manual_seed(3)
    cuts = {"sensitivity": [], "sensitivity_binormal": []}
    for _ in range(200):
        probs, labels = _sample(52, 25, -1.2, 1.3, 1.3, 1.6, g)
        for rule in cuts:
            t = choose_threshold(probs, labels, rule, target_sensitivity=0.9)
            cuts[rule].append(math.log(t / (1 - t)))
    spread = {rule: torch.tensor(v).std().item() for rule, v in cuts.items()}
    assert spread["sensitivity_binormal"] < spread["sensitivity"], spread


def test_binormal_sensitivity_falls_back_and_is_named():
    probs = torch.tensor([0.9, 0.6, 0.5, 0.3, 0.2, 0.1])
    labels = torch.tensor([1, 0, 0, 0, 0, 0])
    assert choose_threshold(
        probs, labels, "sensitivity_binormal", target_sensitivity=0.9
    ) == choose_threshold(probs, labels, "sensitivity", target_sensitivity=0.9)
    cal = TemperatureCalibration(threshold_rule="sensitivity_binormal", target_sensitivity=0.85)
    assert cal.rule_name(1) == "sensitivity_binormal>=0.85"
