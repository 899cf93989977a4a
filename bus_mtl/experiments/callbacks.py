"""``RunRecorder``: the callback through which the sweep runner reads a trial's results.

The sweep runner (:mod:`bus_mtl.experiments.sweep`) starts each trial as a LightningCLI
subprocess from a sweep file's command line, so it cannot ask the Trainer for its metrics or
its best checkpoint. This callback writes them to one JSON file that the parent process
reads; it works with any logger (or none). The cv runner does not need it: each fold's
Trainer is built in-process (:func:`bus_mtl.experiments.cv.run_fold`) and asked directly.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch


def _scalar(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return None
        value = value.item()
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) or math.isinf(value) else value


class RunRecorder(pl.Callback):
    """Record validation history, best/last checkpoint paths and test metrics as JSON.

    The file holds ``{"val_history": [{"epoch": e, "val/dice": ...}, ...],
    "fit": {"best_model_path", "best_model_score", "monitor", "last_model_path"},
    "test": {"test/dice": ...}}``; each event rewrites it atomically, so a killed run
    leaves the last complete state.

    Args:
        path: JSON file to write (parent folders are created).
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        if not path:
            raise ValueError("RunRecorder needs a path")
        self.path = Path(path)
        self.state: dict[str, Any] = {}
        if self.path.is_file():
            # A resumed fit keeps the history of the epochs before the crash.
            try:
                self.state = json.loads(self.path.read_text())
            except json.JSONDecodeError:
                self.state = {}

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.state, indent=2) + "\n")
        tmp.replace(self.path)

    def _metrics(self, trainer: pl.Trainer, prefix: str) -> dict[str, float]:
        out = {}
        for key, value in trainer.callback_metrics.items():
            if key.startswith(prefix):
                v = _scalar(value)
                if v is not None:
                    out[key] = v
        return out

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Where last.ckpt will be: the runner resumes a killed fold from it.
        ckpt = trainer.checkpoint_callback
        if trainer.global_rank == 0 and ckpt is not None and getattr(ckpt, "dirpath", None):
            self.state["ckpt_dir"] = str(ckpt.dirpath)
            self._write()

    # on_validation_end, not on_validation_epoch_end: callbacks' epoch-end hooks run before
    # the module's, whose metrics reach callback_metrics only afterwards.
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.global_rank != 0:
            return
        row: dict[str, float] = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        row.update(self._metrics(trainer, "val/"))
        history = [r for r in self.state.get("val_history", []) if r["epoch"] != row["epoch"]]
        self.state["val_history"] = [*history, row]
        self._write()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        ckpt = trainer.checkpoint_callback
        fit: dict[str, Any] = {"epochs": trainer.current_epoch, "steps": trainer.global_step}
        if ckpt is not None:
            fit["best_model_path"] = getattr(ckpt, "best_model_path", "") or ""
            fit["best_model_score"] = _scalar(getattr(ckpt, "best_model_score", None))
            fit["monitor"] = getattr(ckpt, "monitor", None)
            fit["last_model_path"] = getattr(ckpt, "last_model_path", "") or ""
        fit["params"] = int(sum(p.numel() for p in pl_module.parameters()))
        net = getattr(pl_module, "net", None)
        if isinstance(net, torch.nn.Module):
            fit["params"] = int(sum(p.numel() for p in net.parameters()))
        self.state["fit"] = fit
        self._write()

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        self.state["test"] = self._metrics(trainer, "test/")
        self._write()
