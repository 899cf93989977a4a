"""``bus-mtl bench tta CV_DIR OUT``: post-hoc flip TTA on a finished ``bus-mtl cv`` folder
(checkpoints trained without TTA).

Per fold: the best checkpoint, evaluated as is and wrapped in ``FlipTTA``; temperature and
Youden threshold fitted on the fold's validation part for each; then test AUC,
sensitivity, specificity, Brier, ECE and Dice at each image's original size. The
"Flip TTA on the 5-fold checkpoints" figures of docs/results.md come from

    bus-mtl bench tta results/busi_5fold_cpu results/tta_5fold_posthoc

:func:`datamodule_of_run` and :func:`fold_run` also serve ``bus-mtl bench threshold-rules``.
"""

from __future__ import annotations

import argparse
import glob
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import yaml

from bus_mtl.cli.lightning import build_cli
from bus_mtl.models import FlipTTA
from bus_mtl.training.calibration import choose_threshold, fit_temperature
from bus_mtl.training.metrics import binary_metrics
from bus_mtl.training.module import MultiTaskModule

REPORTED = ("auc", "sensitivity", "specificity", "brier", "ece")


def collect(dm: Any, loader: Any, net: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Class logits, labels and per-image original-size Dice (test part only) of ``net``."""
    logits, labels, dice = [], [], []
    with torch.no_grad():
        for batch in loader:
            batch = dm.on_after_batch_transfer(batch, 0)
            out = net(batch["image"])
            logits.append(out.logits.float())
            labels.append(batch["label"])
            for i, mask in enumerate(batch.get("orig_mask", [])):
                true = mask.numpy() > 0
                up = F.interpolate(
                    out.mask[i : i + 1].float(),
                    size=true.shape,
                    mode="bilinear",
                    align_corners=False,
                )[0, 0]
                pred = (torch.sigmoid(up) > 0.5).numpy()
                total = pred.sum() + true.sum()
                dice.append(1.0 if total == 0 else 2.0 * (pred & true).sum() / total)
    return torch.cat(logits), torch.cat(labels), dice


def datamodule_of_run(run: Path, config_path: Path) -> Any:
    """The data module of a finished run (its split, size, normalisation), set up for fit and
    test: rebuilt from the run's ``config.yaml``, written to ``config_path`` minus the
    fit-only keys that ``build_cli(run=False)`` refuses."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    for key in ("ckpt_path", "weights_only"):
        config.pop(key, None)
    config_path.write_text(yaml.safe_dump(config))
    dm = build_cli(["--config", str(config_path), "--trainer.logger=false"], run=False).datamodule
    dm.setup("fit")
    dm.setup("test")
    return dm


def fold_run(fold: Path) -> Path:
    """The run folder (``<Net>/version_N``, the newest) of a finished cv fold."""
    runs = sorted(fold.glob("*/version_*/checkpoints"))
    if not runs:
        raise SystemExit(f"{fold}: no */version_*/checkpoints folder (not a finished fold)")
    return runs[-1].parent


def evaluate_fold(fold: Path, out: Path, k: int) -> list[dict[str, Any]]:
    run = fold_run(fold)
    ckpt = sorted(glob.glob(str(run / "checkpoints" / "best-*.ckpt")))[0]
    dm = datamodule_of_run(run, out / f"fold{k}_config.yaml")
    model = MultiTaskModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
    rows = []
    for mode, net in (("none", model.net.eval()), ("hflip", FlipTTA(model.net).eval())):
        val_logits, val_labels, _ = collect(dm, dm.val_dataloader(), net)
        test_logits, test_labels, dice = collect(dm, dm.test_dataloader(), net)
        temperature = fit_temperature(val_logits, val_labels)
        val_probs = torch.sigmoid(val_logits[:, 0] / temperature)
        threshold = choose_threshold(val_probs, val_labels, rule="youden")
        test = binary_metrics(
            torch.sigmoid(test_logits[:, 0] / temperature), test_labels, threshold
        )
        val = binary_metrics(val_probs, val_labels, threshold)
        row = {"fold": k, "tta": mode, "val_auc": float(val["auc"]), "T": temperature}
        row.update(threshold=threshold, dice=float(np.mean(dice)), n_test=len(test_labels))
        row.update({name: float(test[name]) for name in REPORTED})
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bus-mtl bench tta", description=__doc__.split("\n\n")[0])
    p.add_argument("cv_dir", type=Path, help="a bus-mtl cv --out folder (fold_0, fold_1, ...)")
    p.add_argument("out", type=Path, help="folder for rows.json and each fold's config")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    cv, out = args.cv_dir, args.out
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(len(list(cv.glob("fold_*")))):
        start = time.time()
        rows += evaluate_fold(cv / f"fold_{k}", out, k)
        print(f"fold {k}: {time.time() - start:.0f} s", flush=True)
    (out / "rows.json").write_text(json.dumps(rows, indent=1))
    frame = pd.DataFrame(rows)
    summary = frame.groupby("tta")[["val_auc", "dice", *REPORTED]].agg(["mean", "std"])
    print(summary.round(3).to_string())
    return 0
