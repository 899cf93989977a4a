"""Several trained nets as one: the mean of their calibrated probabilities.

A k-fold cross-validation leaves k models, each trained on a different 80 % of the data.
:class:`NetEnsemble` runs them all and averages what they say, which ranks new cases more
steadily than any one of them (the members' errors are partly independent), at k times the
cost. It is an :class:`~bus_mtl.models.base.MTLNet` whose constructor arguments are plain
values (the members' architectures, temperatures and input normalisations), so an ensemble
is saved as an ordinary bus_mtl checkpoint (:func:`write_ensemble_checkpoint`) and every
command that takes ``--ckpt`` — ``evaluate``, ``predict``, ``calibrate``, ``export`` — runs
it as one model, and ``export`` writes it as one ONNX graph.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from bus_mtl.models.base import MTLNet
from bus_mtl.models.output import MTLOutput


def _log_sigmoid(x: Tensor) -> Tensor:
    # Written out, not F.logsigmoid: its ONNX form is Log(Sigmoid(x)), -inf below x ≈ -88.
    return torch.minimum(x, torch.zeros_like(x)) - torch.log1p(torch.exp(-x.abs()))


def _log_sum_exp(x: Tensor) -> Tensor:
    # Written out, not torch.logsumexp: ONNX Runtime's ReduceLogSumExp is not shifted.
    top = x.amax(0)
    return top + torch.log(torch.exp(x - top).sum(0))


def logit_of_mean_probability(logits: Tensor) -> Tensor:
    """``logit(mean_k sigmoid(logits[k]))`` over the first dimension, computed in log space:
    ``logsumexp_k log σ(x_k) − logsumexp_k log σ(−x_k)`` (the ``log K`` cancels). Exact and
    finite for any finite logits, eagerly and in an ONNX export, where forming the
    probabilities first would lose the digits of a confident pixel (float32 holds ``1 − p``
    to only ~6e-8)."""
    return _log_sum_exp(_log_sigmoid(logits)) - _log_sum_exp(_log_sigmoid(-logits))


class NetEnsemble(MTLNet):
    """The mean of several nets' probabilities, returned as logits.

    Each member sees the image in its own normalisation (members of a cross-validation were
    normalised by their own training part's statistics): the ensemble's input, normalised
    with ``mean``/``std``, is mapped to each member's ``(x·std + mean − mean_k) / std_k``.
    The malignancy probability is the mean of the members' calibrated probabilities
    ``sigmoid(logit_k / T_k)``, the mask probability the mean of their mask probabilities;
    both are returned as logits (:func:`logit_of_mean_probability`), so that ``sigmoid`` of
    the output gives the means and the ensemble's own temperature starts at 1. Binary classification
    only (``num_classes`` 1).

    Args:
        members: each member's architecture, ``{"class_path", "init_args"}``
            (:func:`bus_mtl.models.rebuild.net_config`); built without weights (a checkpoint
            holds them under ``members.<i>.``).
        temperatures: each member's temperature for its single pass (no test-time
            augmentation: a wrapper around the ensemble, e.g. ``FlipTTA``, applies that).
        normalizations: each member's ``[mean, std]`` in [0, 1] pixel units.
        mean, std: the ensemble's own input normalisation (any; the mean of the members'
            is what :func:`write_ensemble_checkpoint` records).

    Shapes: ``forward`` B×C×H×W -> ``MTLOutput(mask=B×1×H×W | None, logits=B×1 | None)``.
    """

    def __init__(
        self,
        members: Sequence[dict[str, Any]] = (),
        temperatures: Sequence[float] = (),
        normalizations: Sequence[Sequence[float]] = (),
        mean: float = 0.0,
        std: float = 1.0,
        in_channels: int = 1,
        num_classes: int = 1,
    ) -> None:
        from bus_mtl.models.rebuild import build_net

        super().__init__(in_channels, num_classes)
        if num_classes != 1:
            raise ValueError(
                f"NetEnsemble averages malignancy probabilities: num_classes must be 1, got "
                f"{num_classes!r}"
            )
        n = len(members)
        if n < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {n}")
        if len(temperatures) != n or len(normalizations) != n:
            raise ValueError(
                f"one temperature and one [mean, std] per member: {n} members, "
                f"{len(temperatures)} temperatures, {len(normalizations)} normalizations"
            )
        bad_t = [t for t in temperatures if not (isinstance(t, (int, float)) and t > 0)]
        if bad_t:
            raise ValueError(f"temperatures must be > 0, got {list(temperatures)!r}")
        bad_n = [p for p in normalizations if len(p) != 2 or not p[1] > 0]
        if bad_n or not std > 0:
            raise ValueError(
                f"normalizations must be [mean, std] pairs with std > 0, and std > 0; got "
                f"normalizations={list(normalizations)!r}, std={std!r}"
            )
        self.members = nn.ModuleList(build_net(dict(m)) for m in members)
        for i, net in enumerate(self.members):
            if getattr(net, "in_channels", in_channels) != in_channels or (
                getattr(net, "num_classes", num_classes) != num_classes
            ):
                raise ValueError(
                    f"member {i} ({members[i].get('class_path')}) takes {net.in_channels} "
                    f"channel(s) and {net.num_classes} class(es); the ensemble "
                    f"{in_channels} and {num_classes}"
                )
        heads = {
            (bool(getattr(m, "has_seg", True)), bool(getattr(m, "has_cls", True)))
            for m in self.members
        }
        if len(heads) != 1:
            raise ValueError(
                "the members differ in their outputs (some segment or classify, others not): "
                "an ensemble averages the outputs they all have, so pick members with the same"
            )
        self.has_seg, self.has_cls = heads.pop()
        self.size_divisor = math.lcm(*(int(getattr(m, "size_divisor", 1)) for m in self.members))
        self.register_buffer(
            "_temperatures", torch.tensor([float(t) for t in temperatures]), persistent=False
        )
        # Each member's input is scale_k · x + shift_k (see the class docstring).
        scale = [std / float(s) for _, s in normalizations]
        shift = [(mean - float(m)) / float(s) for m, s in normalizations]
        self.register_buffer("_scale", torch.tensor(scale), persistent=False)
        self.register_buffer("_shift", torch.tensor(shift), persistent=False)

    def forward(self, x: Tensor) -> MTLOutput:
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            self.check_input(x)
        masks: list[Tensor] = []
        logits: list[Tensor] = []
        for k, member in enumerate(self.members):
            out = member(x * self._scale[k] + self._shift[k])
            if self.has_seg:
                masks.append(out[0].float())
            if self.has_cls:
                logits.append(out[1].float() / self._temperatures[k])
        return MTLOutput(
            mask=logit_of_mean_probability(torch.stack(masks)) if masks else None,
            logits=logit_of_mean_probability(torch.stack(logits)) if logits else None,
        )
