"""``bus-mtl bench threshold-rules CV_DIR``: threshold rules compared on a finished ``bus-mtl
cv`` folder, judged on validation only.

Per fold: the best checkpoint's calibrated probabilities (its own test-time augmentation and
stored temperature) on the fold's validation and test parts. Each rule is fitted on one
stratified half of the validation part and scored on the other half (balanced accuracy and
min(sensitivity, specificity)), ``--splits`` times; then, post hoc, each rule is fitted on
the whole validation part and applied to the test part. The "Threshold rule" table of
docs/results.md comes from

    bus-mtl bench threshold-rules results/busi_5fold_cpu_v2

The test figures are printed for reporting: a rule chosen by them would be tuned on test.
"""

from __future__ import annotations

import argparse
import glob
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bus_mtl.benchmarks.tta import datamodule_of_run, fold_run
from bus_mtl.models import with_tta
from bus_mtl.training.calibration import choose_threshold
from bus_mtl.training.metrics import binary_metrics
from bus_mtl.training.module import MultiTaskModule

RULES = ("youden", "youden_binormal", "fixed")


def fold_probabilities(run: Path) -> dict[str, np.ndarray]:
    """Calibrated validation and test probabilities of ``run``'s best checkpoint."""
    ckpt = sorted(glob.glob(str(run / "checkpoints" / "best-*.ckpt")))[0]
    with tempfile.TemporaryDirectory() as scratch:
        dm = datamodule_of_run(run, Path(scratch) / "config.yaml")
    module = MultiTaskModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
    net = with_tta(module.net, module.tta).eval()
    temperature = float(module.temperature)

    def probs(loader: Any) -> tuple[np.ndarray, np.ndarray]:
        ps, ys = [], []
        with torch.no_grad():
            for batch in loader:
                batch = dm.on_after_batch_transfer(batch, 0)
                logits = net(batch["image"]).logits.float()[:, 0]
                ps.append(torch.sigmoid(logits / temperature))
                ys.append(batch["label"])
        return torch.cat(ps).numpy(), torch.cat(ys).numpy().astype(int)

    pv, yv = probs(dm.val_dataloader())
    pt, yt = probs(dm.test_dataloader())
    return {"pv": pv, "yv": yv, "pt": pt, "yt": yt}


def rates(p: np.ndarray, y: np.ndarray, t: float) -> tuple[float, float]:
    """Sensitivity and specificity at ``p > t``, by the project's one definition."""
    m = binary_metrics(torch.from_numpy(p), torch.from_numpy(y), t)
    return float(m["sensitivity"]), float(m["specificity"])


def threshold(p: np.ndarray, y: np.ndarray, rule: str) -> float:
    return choose_threshold(torch.from_numpy(p), torch.from_numpy(y), rule, default=0.5)


def compare(fold: dict[str, np.ndarray], splits: int, rng: np.random.Generator) -> dict[str, dict]:
    pv, yv, pt, yt = fold["pv"], fold["yv"], fold["pt"], fold["yt"]
    i1, i0 = np.where(yv == 1)[0], np.where(yv == 0)[0]
    scores: dict[str, list[tuple[float, float]]] = {r: [] for r in RULES}
    for _ in range(splits):
        a1, a0 = rng.permutation(i1), rng.permutation(i0)
        fit = np.r_[a1[: len(a1) // 2], a0[: len(a0) // 2]]
        held = np.r_[a1[len(a1) // 2 :], a0[len(a0) // 2 :]]
        for rule in RULES:
            se, sp = rates(pv[held], yv[held], threshold(pv[fit], yv[fit], rule))
            scores[rule].append(((se + sp) / 2, min(se, sp)))
    out = {}
    for rule in RULES:
        s = np.asarray(scores[rule])
        t = threshold(pv, yv, rule)
        se, sp = rates(pt, yt, t)
        out[rule] = {
            "val_half_balanced_acc": float(s[:, 0].mean()),
            "val_half_min_sens_spec": float(s[:, 1].mean()),
            "threshold": t,
            "test_sensitivity": se,
            "test_specificity": sp,
        }
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="bus-mtl bench threshold-rules", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("cv_dir", type=Path, help="a bus-mtl cv --out folder (fold_0, fold_1, ...)")
    p.add_argument("--splits", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    torch.set_num_threads(2)
    rows = {}
    for fold_dir in sorted(args.cv_dir.glob("fold_*")):
        rows[fold_dir.name] = compare(fold_probabilities(fold_run(fold_dir)), args.splits, rng)
        r = rows[fold_dir.name]
        print(
            fold_dir.name,
            "  ".join(
                f"{rule}: half bal {v['val_half_balanced_acc']:.4f} min {v['val_half_min_sens_spec']:.4f}"
                for rule, v in r.items()
            ),
            flush=True,
        )
    print(f"\nvalidation half-splits ({args.splits} per fold), mean ± std over folds:")
    for rule in RULES:
        b = [rows[f][rule]["val_half_balanced_acc"] for f in rows]
        m = [rows[f][rule]["val_half_min_sens_spec"] for f in rows]
        wins = sum(
            rows[f][rule]["val_half_min_sens_spec"] > rows[f]["youden"]["val_half_min_sens_spec"]
            for f in rows
        )
        print(
            f"  {rule:16s} balanced acc {np.mean(b):.3f} ± {np.std(b, ddof=1):.3f}   "
            f"min(sens, spec) {np.mean(m):.3f} ± {np.std(m, ddof=1):.3f}   above youden on {wins} folds"
        )
    print(
        "\npost hoc, fitted on the whole validation part, on the test part (reported, not for choosing):"
    )
    for rule in RULES:
        se = [rows[f][rule]["test_sensitivity"] for f in rows]
        sp = [rows[f][rule]["test_specificity"] for f in rows]
        ts = [round(rows[f][rule]["threshold"], 3) for f in rows]
        print(
            f"  {rule:16s} sensitivity {np.mean(se):.3f} ± {np.std(se, ddof=1):.3f}   "
            f"specificity {np.mean(sp):.3f} ± {np.std(sp, ddof=1):.3f}   thresholds {ts}"
        )
    out = args.cv_dir / "threshold_rules.json"
    out.write_text(json.dumps(rows, indent=1))
    print(f"\nwritten: {out}")
    return 0
