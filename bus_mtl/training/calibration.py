"""Temperature scaling (Guo et al. 2017) of the class logits, fitted on the validation set."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torchmetrics.functional.classification import (
    binary_calibration_error,
    multiclass_calibration_error,
)

from bus_mtl.training.checkpoint import net_state_dict

LOG_T_BOUND = 3.0  # temperatures searched in [e^-3, e^3] ≈ [0.05, 20]


def _nll(logits: Tensor, labels: Tensor) -> Tensor:
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0], labels.float())
    return F.cross_entropy(logits, labels)


def expected_calibration_error(logits: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """Top-label ECE (L1, equal-width bins) of B×K logits against (B,) labels."""
    if logits.shape[1] == 1:
        return float(binary_calibration_error(torch.sigmoid(logits[:, 0]), labels, n_bins=n_bins))
    probs = torch.softmax(logits, dim=1)
    return float(
        multiclass_calibration_error(probs, labels, num_classes=logits.shape[1], n_bins=n_bins)
    )


def fit_temperature(logits: Tensor, labels: Tensor, max_iter: int = 100) -> float:
    """The temperature T in [0.05, 20] that minimises the NLL of ``logits / T``
    (grid search on log T, refined by LBFGS).

    Args:
        logits: B×K class logits (K = 1: malignancy logit).
        labels: (B,) labels; entries < 0 are ignored.
    """
    keep = labels >= 0
    logits, labels = logits[keep].detach().double(), labels[keep].long()
    if logits.numel() == 0:
        raise ValueError("no labelled validation image to fit the temperature on")
    # A coarse grid on log T first: with near-constant logits the NLL is almost flat and
    # LBFGS alone can wander off; the grid's best point starts it and bounds the answer.
    grid = torch.linspace(-LOG_T_BOUND, LOG_T_BOUND, 61, dtype=torch.float64)
    with torch.no_grad():
        losses = torch.stack([_nll(logits / g.exp(), labels) for g in grid])
    start = grid[int(torch.argmin(losses))]
    log_t = start.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = _nll(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    refined = float(log_t.detach().clamp(-LOG_T_BOUND, LOG_T_BOUND))
    with torch.no_grad():
        if not math.isfinite(refined) or _nll(logits / math.exp(refined), labels) > losses.min():
            refined = float(start)
    return math.exp(refined)


@torch.no_grad()
def collect_logits(net: nn.Module, loader: Any, device: torch.device) -> tuple[Tensor, Tensor]:
    """Run ``net`` in eval mode over ``loader``: (N×K logits, (N,) labels) on CPU."""
    was_training = net.training
    net.eval()
    logits, labels = [], []
    try:
        for batch in loader:
            out = net(batch["image"].to(device))
            logits.append(out.logits.float().cpu())
            labels.append(batch["label"].cpu())
    finally:
        net.train(was_training)
    return torch.cat(logits), torch.cat(labels)


class TemperatureCalibration(Callback):
    """At the end of fit, fits a temperature on the validation logits (minimum NLL).

    The temperature goes into the module's ``temperature`` buffer (for the current weights)
    and into every checkpoint the run wrote (``last`` and the best ones, each fitted on its
    own weights), both in the state_dict and in ``checkpoint["bus_mtl"]["temperature"]``, so
    whichever checkpoint a user loads carries its own. Logs ``val/ece_uncalibrated``,
    ``val/ece_calibrated`` and ``val/temperature`` (current weights). Skipped for
    segmentation-only nets and under ``fast_dev_run``.

    Args:
        max_iter: LBFGS iterations.
        n_bins: bins of the expected calibration error.
    """

    def __init__(self, max_iter: int = 100, n_bins: int = 15) -> None:
        if max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {max_iter!r}")
        if n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins!r}")
        self.max_iter = max_iter
        self.n_bins = n_bins

    def _val_loader(self, trainer: pl.Trainer) -> Any:
        # The datamodule's own loader: every rank sees the whole validation set, so every
        # rank fits the same temperature without collectives.
        datamodule = trainer.datamodule
        if datamodule is not None:
            return datamodule.val_dataloader()
        return trainer.val_dataloaders

    def _fit(self, net: nn.Module, loader: Any, device: torch.device) -> dict[str, float]:
        logits, labels = collect_logits(net, loader, device)
        keep = labels >= 0
        temperature = fit_temperature(logits, labels, self.max_iter)
        logits, labels = logits[keep], labels[keep]
        return {
            "temperature": temperature,
            "ece_uncalibrated": expected_calibration_error(logits, labels, self.n_bins),
            "ece_calibrated": expected_calibration_error(logits / temperature, labels, self.n_bins),
        }

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.fast_dev_run or not getattr(pl_module, "has_cls", False):
            return
        loader = self._val_loader(trainer)
        if loader is None:
            return
        device = pl_module.device
        try:
            current = self._fit(pl_module.net, loader, device)
        except ValueError:
            return  # no labelled validation image: nothing to calibrate on
        pl_module.temperature.fill_(current["temperature"])
        for logger in trainer.loggers:
            logger.log_metrics({f"val/{k}": v for k, v in current.items()}, trainer.global_step)
            logger.save()
        if trainer.is_global_zero:
            self._update_checkpoints(trainer, pl_module, loader, device)
        trainer.strategy.barrier("temperature_calibration")

    def _update_checkpoints(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loader: Any, device: torch.device
    ) -> None:
        paths: set[str] = set()
        for cb in trainer.checkpoint_callbacks:
            paths.update(p for p in (cb.last_model_path, cb.best_model_path) if p)
            paths.update(getattr(cb, "best_k_models", {}).keys())
        for path in sorted(paths):
            if not Path(path).is_file():
                continue
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            net = copy.deepcopy(pl_module.net)
            net.load_state_dict(net_state_dict(checkpoint))
            temperature = self._fit(net, loader, device)["temperature"]
            checkpoint["state_dict"]["temperature"] = torch.tensor(temperature)
            checkpoint.setdefault("bus_mtl", {})["temperature"] = temperature
            torch.save(checkpoint, path)
