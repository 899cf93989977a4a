"""How the per-task losses are combined into the one loss that is optimised.

Both strategies are ``nn.Module``\\ s with
``forward(losses: dict[str, Tensor]) -> (total, effective_weights)``: ``losses`` holds one
scalar per task that the model has (``"seg"``, ``"cls"``; single-task variants pass one
key) and ``effective_weights`` maps the same keys to the factor each loss was multiplied by,
as plain floats for logging (``train/w_seg``, ``train/w_cls``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["FixedWeighting", "UncertaintyWeighting"]


def _check_losses(losses: dict[str, Tensor], known: Sequence[str], owner: str) -> None:
    if not losses:
        raise ValueError(f"{owner} got no losses to combine.")
    unknown = [k for k in losses if k not in known]
    if unknown:
        raise ValueError(f"{owner}: unknown loss key(s) {unknown}; expected some of {list(known)}.")


class FixedWeighting(nn.Module):
    """``total = seg * L_seg + cls * L_cls`` over the keys present.

    Args:
        seg: weight of the segmentation loss, >= 0.
        cls: weight of the classification loss, >= 0.
    """

    def __init__(self, seg: float = 1.0, cls: float = 1.0) -> None:
        super().__init__()
        for name, value in (("seg", seg), ("cls", cls)):
            if not (value >= 0.0 and math.isfinite(value)):
                raise ValueError(f"FixedWeighting: weight {name!r} must be >= 0, got {value!r}.")
        self.weights = {"seg": float(seg), "cls": float(cls)}

    def forward(self, losses: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        _check_losses(losses, tuple(self.weights), type(self).__name__)
        total = sum(self.weights[k] * loss for k, loss in losses.items())
        return total, {k: self.weights[k] for k in losses}  # type: ignore[return-value]


class UncertaintyWeighting(nn.Module):
    """Learned homoscedastic-uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

    ``total = sum_i exp(-s_i) * L_i + s_i`` with one learnable ``s_i = log(sigma_i^2)`` per
    task, in ``self.log_vars[task]``. This is the form common to most implementations: it
    uses the same factor for every task instead of the paper's ``1 / (2 sigma^2)`` (regression)
    versus ``1 / sigma^2`` (classification), i.e. twice the regression objective and the
    classification one with ``log sigma^2`` in place of ``log sigma``. Minimising over ``s_i``
    gives ``s_i* = log L_i``, so each loss ends up weighted by about ``1 / L_i``. The
    effective weights reported are ``exp(-s_i)``.

    The ``s_i`` are model parameters: the optimizer must see them (they are, as a submodule
    of the LightningModule). A task in ``tasks`` whose loss is missing from a call
    contributes ``0 * s_i``, so every parameter still gets a (zero) gradient and DDP runs
    without ``find_unused_parameters``; for a single-task variant, prefer
    ``FixedWeighting`` or ``tasks=["seg"]`` / ``["cls"]``.

    Args:
        init_log_var: initial ``s_i`` for every task (0 = weight 1).
        tasks: the loss keys that get a learnable ``s_i``.
    """

    def __init__(self, init_log_var: float = 0.0, tasks: Sequence[str] = ("seg", "cls")) -> None:
        super().__init__()
        if not math.isfinite(init_log_var):
            raise ValueError(f"init_log_var must be finite, got {init_log_var!r}.")
        tasks = list(tasks)
        if not tasks or len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks must be a non-empty list of distinct names, got {tasks!r}.")
        self.tasks = tasks
        self.log_vars = nn.ParameterDict(
            {t: nn.Parameter(torch.tensor(float(init_log_var))) for t in tasks}
        )

    def forward(self, losses: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        _check_losses(losses, self.tasks, type(self).__name__)
        total: Tensor | None = None
        # Detached 0-d tensors, not floats: float() would wait for the GPU every step.
        weights: dict[str, Tensor] = {}
        for task in self.tasks:
            s = self.log_vars[task]
            if task in losses:
                term = torch.exp(-s) * losses[task] + s
                weights[task] = torch.exp(-s.detach())
            else:
                term = 0.0 * s
            total = term if total is None else total + term
        assert total is not None  # tasks is non-empty
        return total, weights
