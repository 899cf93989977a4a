"""Loss weighting: fixed weights and Kendall et al. (2018) uncertainty weighting."""

from __future__ import annotations

import math

import pytest
import torch
from jsonargparse import ArgumentParser
from torch import nn

from bus_mtl.training.weighting import FixedWeighting, UncertaintyWeighting


def test_fixed_weighting_sums_present_keys() -> None:
    weighting = FixedWeighting(seg=0.5, cls=2.0)
    total, weights = weighting({"seg": torch.tensor(2.0), "cls": torch.tensor(3.0)})
    assert total.item() == pytest.approx(0.5 * 2.0 + 2.0 * 3.0)
    assert weights == {"seg": 0.5, "cls": 2.0}
    # A segmentation-only variant passes one key and gets one weight back.
    total, weights = weighting({"seg": torch.tensor(2.0)})
    assert total.item() == pytest.approx(1.0)
    assert weights == {"seg": 0.5}


def test_fixed_weighting_keeps_the_graph() -> None:
    seg = torch.tensor(2.0, requires_grad=True)
    cls = torch.tensor(3.0, requires_grad=True)
    total, _ = FixedWeighting(seg=0.5, cls=2.0)({"seg": seg, "cls": cls})
    total.backward()
    assert seg.grad.item() == pytest.approx(0.5) and cls.grad.item() == pytest.approx(2.0)


def test_fixed_weighting_bad_input() -> None:
    with pytest.raises(ValueError, match="'seg'"):
        FixedWeighting(seg=-1.0)
    with pytest.raises(ValueError, match="'cls'"):
        FixedWeighting(cls=float("nan"))
    with pytest.raises(ValueError, match="unknown loss key"):
        FixedWeighting()({"depth": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="no losses"):
        FixedWeighting()({})


def test_uncertainty_weighting_value() -> None:
    weighting = UncertaintyWeighting()
    # s = 0: total = L_seg + L_cls, weights 1.
    total, weights = weighting({"seg": torch.tensor(2.0), "cls": torch.tensor(3.0)})
    assert total.item() == pytest.approx(5.0)
    assert weights == {"seg": pytest.approx(1.0), "cls": pytest.approx(1.0)}
    with torch.no_grad():
        weighting.log_vars["seg"].fill_(math.log(2.0))
        weighting.log_vars["cls"].fill_(-1.0)
    # exp(-ln 2) * 2 + ln 2  +  exp(1) * 3 - 1
    total, weights = weighting({"seg": torch.tensor(2.0), "cls": torch.tensor(3.0)})
    assert total.item() == pytest.approx(1.0 + math.log(2.0) + math.e * 3.0 - 1.0, rel=1e-6)
    assert weights["seg"] == pytest.approx(0.5)
    assert weights["cls"] == pytest.approx(math.e)


def test_uncertainty_weighting_gradients() -> None:
    weighting = UncertaintyWeighting(init_log_var=0.3)
    seg = torch.tensor(2.0, requires_grad=True)
    cls = torch.tensor(0.5, requires_grad=True)
    total, _ = weighting({"seg": seg, "cls": cls})
    total.backward()
    # d total / d s = 1 - exp(-s) L ; d total / d L = exp(-s)
    assert weighting.log_vars["seg"].grad.item() == pytest.approx(1 - math.exp(-0.3) * 2.0)
    assert weighting.log_vars["cls"].grad.item() == pytest.approx(1 - math.exp(-0.3) * 0.5)
    assert seg.grad.item() == pytest.approx(math.exp(-0.3))


def test_uncertainty_weighting_learns_inverse_loss_weights() -> None:
    # With fixed losses the minimiser is s* = log L, i.e. effective weight 1 / L.
    weighting = UncertaintyWeighting()
    optimizer = torch.optim.SGD(weighting.parameters(), lr=0.1)
    losses = {"seg": torch.tensor(4.0), "cls": torch.tensor(0.25)}
    for _ in range(400):
        optimizer.zero_grad()
        total, weights = weighting(losses)
        total.backward()
        optimizer.step()
    assert weighting.log_vars["seg"].item() == pytest.approx(math.log(4.0), abs=1e-3)
    assert weighting.log_vars["cls"].item() == pytest.approx(math.log(0.25), abs=1e-3)
    assert weights["seg"] == pytest.approx(0.25, rel=1e-2)
    assert weights["cls"] == pytest.approx(4.0, rel=1e-2)


def test_uncertainty_weighting_missing_task_still_gets_a_gradient() -> None:
    weighting = UncertaintyWeighting()
    total, weights = weighting({"seg": torch.tensor(2.0)})
    total.backward()
    assert weights == {"seg": pytest.approx(1.0)}
    assert total.item() == pytest.approx(2.0)
    # DDP without find_unused_parameters needs a gradient on every parameter.
    assert weighting.log_vars["cls"].grad is not None
    assert weighting.log_vars["cls"].grad.item() == 0.0


def test_uncertainty_weighting_bad_input() -> None:
    with pytest.raises(ValueError, match="init_log_var"):
        UncertaintyWeighting(init_log_var=float("inf"))
    with pytest.raises(ValueError, match="distinct"):
        UncertaintyWeighting(tasks=["seg", "seg"])
    with pytest.raises(ValueError, match="unknown loss key"):
        UncertaintyWeighting(tasks=["seg"])({"cls": torch.tensor(1.0)})


def test_weightings_build_from_lightningcli_style_config() -> None:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--weighting", type=nn.Module)
    cfg = parser.parse_args(
        [
            "--weighting",
            '{"class_path": "bus_mtl.training.weighting.UncertaintyWeighting", '
            '"init_args": {"init_log_var": 0.5, "tasks": ["seg"]}}',
        ]
    )
    weighting = parser.instantiate_classes(cfg).weighting
    assert isinstance(weighting, UncertaintyWeighting)
    assert weighting.tasks == ["seg"]
    assert weighting.log_vars["seg"].item() == pytest.approx(0.5)
    cfg = parser.parse_args(
        [
            "--weighting",
            '{"class_path": "bus_mtl.training.weighting.FixedWeighting", '
            '"init_args": {"cls": 0.3}}',
        ]
    )
    assert parser.instantiate_classes(cfg).weighting.weights == {"seg": 1.0, "cls": 0.3}


def test_log_variances_get_no_weight_decay() -> None:
    from functools import partial

    import torch

    from bus_mtl.models import create
    from bus_mtl.training import MultiTaskModule
    from bus_mtl.training.weighting import UncertaintyWeighting

    module = MultiTaskModule(
        create("shared_encoder", init_filters=8, hidden_dim=8),
        weighting=UncertaintyWeighting(),
        optimizer=partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.1),
    )
    groups = module.param_groups()
    assert len(groups) == 2 and groups[1]["weight_decay"] == 0.0
    log_vars = {id(p) for p in module.weighting.parameters()}
    assert {id(p) for p in groups[1]["params"]} == log_vars
    assert not log_vars & {id(p) for p in groups[0]["params"]}
    n = sum(p.numel() for g in groups for p in g["params"])
    assert n == sum(p.numel() for p in module.parameters())
    optimizer = module.optimizer_factory(groups)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
