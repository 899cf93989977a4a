"""Variant × fold comparison on identical folds, with paired statistics.

Layout (``OUT`` = ``--out``)::

    OUT/split.json                   one k-fold split shared by every variant
    OUT/<variant>/fold_k/...         the cv runner's folders, one cv folder per variant
    OUT/by_centre/split.json         (--protocol by_centre) one fold per held-out centre
    OUT/by_centre/<variant>/...
    OUT/compare.{csv,md,json}        the paper-style table: mean ± std over folds, p-values
    OUT/compare.png                  bars with error bars
    OUT/per_image.csv                every variant's per-image prob/Dice joined by image id

Significance is paired, against the best variant of each protocol: Wilcoxon signed-rank
over per-image Dice (best = highest mean Dice) and DeLong's test plus a paired bootstrap for
the AUC of the pooled out-of-fold probabilities (best = highest mean AUC).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bus_mtl.experiments.cv import (
    FoldJob,
    finish,
    fold_jobs,
    make_split,
    record_inputs,
    run_jobs,
)
from bus_mtl.experiments.results import (
    TABLE_METRICS,
    format_mean_std,
    markdown_table,
    read_fold_metrics,
    read_predictions,
    summarize_folds,
    write_json,
)
from bus_mtl.experiments.stats import delong_test, paired_bootstrap_auc, paired_wilcoxon

BOOTSTRAP_RESAMPLES = 2000
HEADERS = {
    "dice": "Dice (%)",
    "iou": "IoU (%)",
    "hd95": "HD95 (px)",
    "auc": "AUC (%)",
    "acc": "Accuracy (%)",
    "sensitivity": "Sensitivity (%)",
    "specificity": "Specificity (%)",
    "f1": "F1 (%)",
    "params": "Params",
}


def variant_configs(variants: Sequence[str], variants_dir: Path) -> dict[str, Path]:
    """``experiments/variants/<v>.yaml`` for each name; ``all`` = every file there."""
    variants_dir = Path(variants_dir)
    available = sorted(p.stem for p in variants_dir.glob("*.yaml"))
    if list(variants) == ["all"]:
        variants = available
    if not variants:
        raise ValueError(f"no variants given (and none found in {variants_dir})")
    out = {}
    for v in variants:
        path = variants_dir / f"{v}.yaml"
        if not path.is_file():
            raise ValueError(
                f"variant {v!r}: {path} not found; available: {', '.join(available) or 'none'}"
            )
        out[v] = path
    return out


def protocol_dir(out: Path, protocol: str) -> Path:
    return out if protocol == "kfold" else out / protocol


def run_compare(
    variants: Sequence[str],
    configs: Sequence[str],
    out: str | Path,
    folds: int = 5,
    extra: Sequence[str] = (),
    parallel: int = 1,
    protocols: Sequence[str] = ("kfold",),
    seed: int = 42,
    variants_dir: str | Path = "experiments/variants",
    argv: Sequence[str] | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Run (or resume) every variant × fold, then write the comparison files.

    Returns the comparison table and ``{fold folder: error}`` for failed folds.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = variant_configs(variants, Path(variants_dir))
    jobs: list[FoldJob] = []
    folders: dict[tuple[str, str], Path] = {}
    for protocol in protocols:
        pdir = protocol_dir(out, protocol)
        split = pdir / "split.json"
        if not split.is_file():
            pdir.mkdir(parents=True, exist_ok=True)
            make_split(configs, split, protocol, folds, extra)
        for v, path in paths.items():
            vdir = pdir / v
            vjobs = fold_jobs([*configs, str(path)], vdir, split, seed, extra, cwd, env)
            record_inputs(vdir, None, vjobs)
            folders[(protocol, v)] = vdir
            jobs += vjobs
    if argv is not None:
        (out / "command.txt").write_text(" ".join(["bus-mtl", *argv]) + "\n")
    errors = run_jobs(jobs, parallel)
    failed = {str(jobs[i].folder): e for i, e in errors.items()}
    for vdir in folders.values():
        if any((d / "DONE").is_file() for d in vdir.glob("fold_*")):
            finish(vdir)
    table = write_comparison(out, folders)
    return table, failed


def _significance(frames: dict[str, pd.DataFrame], table: pd.DataFrame) -> pd.DataFrame:
    """p-values of each variant against the best one (per protocol) on the same images."""
    rows = []
    for protocol, group in table.groupby("protocol", sort=False):
        best_dice = _best(group, "dice")
        best_auc = _best(group, "auc")
        for v in group["variant"]:
            row: dict[str, Any] = {"protocol": protocol, "variant": v}
            pred = frames.get((protocol, v))
            if best_dice is not None and pred is not None and "dice" in pred:
                ref = frames[(protocol, best_dice)]
                j = ref[["id", "dice"]].merge(pred[["id", "dice"]], on="id", suffixes=("_b", ""))
                row["dice_ref"] = best_dice
                if v != best_dice:
                    res = paired_wilcoxon(j["dice"].to_numpy(), j["dice_b"].to_numpy())
                    row["p_dice_wilcoxon"] = res.p_value
                    row["n_dice_pairs"] = res.n
            if best_auc is not None and pred is not None:
                ref = frames[(protocol, best_auc)]
                cols = ["id", "label", "prob"]
                j = ref[cols].merge(pred[cols], on=["id", "label"], suffixes=("_b", ""))
                j = j[j["label"].isin([0, 1]) & np.isfinite(j["prob"]) & np.isfinite(j["prob_b"])]
                row["auc_ref"] = best_auc
                if v != best_auc and j["label"].nunique() == 2:
                    y = j["label"].to_numpy(dtype=int)
                    dl = delong_test(y, j["prob"].to_numpy(), j["prob_b"].to_numpy())
                    bs = paired_bootstrap_auc(
                        y, j["prob"].to_numpy(), j["prob_b"].to_numpy(), BOOTSTRAP_RESAMPLES
                    )
                    row["p_auc_delong"] = dl.p_value
                    row["p_auc_bootstrap"] = bs.p_value
                    row["delta_auc_pooled"] = dl.difference
            rows.append(row)
    return pd.DataFrame(rows)


def _best(group: pd.DataFrame, metric: str) -> str | None:
    col = f"{metric}_mean"
    if col not in group or not np.isfinite(group[col].astype(float)).any():
        return None
    return str(group.loc[group[col].astype(float).idxmax(), "variant"])


def write_comparison(out: Path, folders: dict[tuple[str, str], Path]) -> pd.DataFrame:
    """Build and write ``compare.{csv,md,json,png}`` and ``per_image.csv``."""
    from bus_mtl.experiments.plots import comparison_plot

    rows, frames = [], {}
    for (protocol, v), vdir in folders.items():
        per_fold = read_fold_metrics(vdir)
        if per_fold.empty:
            continue
        summary = summarize_folds(per_fold)
        row: dict[str, Any] = {"protocol": protocol, "variant": v, "n_folds": len(per_fold)}
        for m in summary.index:
            row[f"{m}_mean"] = summary.loc[m, "mean"]
            row[f"{m}_std"] = summary.loc[m, "std"]
        rows.append(row)
        pred = read_predictions(vdir)
        if len(pred):
            frames[(protocol, v)] = pred
    if not rows:
        raise ValueError(f"{out}: no variant has a finished fold")
    table = pd.DataFrame(rows)
    sig = _significance(frames, table)
    table = table.merge(sig, on=["protocol", "variant"], how="left")
    table.to_csv(out / "compare.csv", index=False)

    shown = pd.DataFrame(
        {
            "protocol": table["protocol"],
            "variant": table["variant"],
            "folds": table["n_folds"],
        }
    )
    for m in TABLE_METRICS:
        if f"{m}_mean" in table:
            shown[HEADERS[m]] = [
                format_mean_std(r[f"{m}_mean"], r[f"{m}_std"], m) for _, r in table.iterrows()
            ]
    for col, label in (
        ("p_dice_wilcoxon", "p Dice (Wilcoxon)"),
        ("p_auc_delong", "p AUC (DeLong)"),
        ("p_auc_bootstrap", "p AUC (bootstrap)"),
    ):
        if col in table:
            shown[label] = [
                _fmt_p(p, v, table, i, col)
                for i, (p, v) in enumerate(zip(table[col], table["variant"]))
            ]
    md = [
        f"# Variant comparison: {out.name}",
        "",
        "Mean ± sample std over folds (k-fold) or over held-out centres (by_centre). "
        "p-values are paired, against the best variant of the protocol (`ref`): Wilcoxon "
        "signed-rank over per-image Dice, DeLong and paired bootstrap over the pooled "
        "out-of-fold malignancy probabilities.",
        "",
        markdown_table(shown),
        "",
    ]
    (out / "compare.md").write_text("\n".join(md))
    write_json(out / "compare.json", {"rows": table.to_dict(orient="records")})
    plot_table = table.copy()
    plot_table["label"] = (
        plot_table["variant"]
        if plot_table["protocol"].nunique() == 1
        else plot_table["variant"] + " (" + plot_table["protocol"] + ")"
    )
    comparison_plot(plot_table, out / "compare.png")
    join_predictions(frames).to_csv(out / "per_image.csv", index=False)
    return table


def _fmt_p(p: float, variant: str, table: pd.DataFrame, i: int, col: str) -> str:
    ref_col = "dice_ref" if "dice" in col else "auc_ref"
    if ref_col in table and table.loc[i, ref_col] == variant:
        return "ref"
    if p is None or not isinstance(p, (float, int)) or not math.isfinite(p):
        return "—"
    if p == 0 and "bootstrap" in col:
        return f"< {1 / BOOTSTRAP_RESAMPLES:.1g}"  # no resample crossed zero
    return f"{p:.3g}"


def join_predictions(frames: dict[tuple[str, str], pd.DataFrame]) -> pd.DataFrame:
    """One row per (protocol, image): ``prob_<variant>``, ``dice_<variant>``, ... side by side."""
    merged: dict[str, pd.DataFrame] = {}
    keys = ["id", "centre", "label", "fold"]
    for (protocol, v), pred in frames.items():
        cols = [c for c in ("prob", "dice", "iou", "hd95", "mask_area") if c in pred]
        part = pred[[k for k in keys if k in pred] + cols].rename(
            columns={c: f"{c}_{v}" for c in cols}
        )
        on = [k for k in keys if k in part]
        merged[protocol] = (
            part if protocol not in merged else merged[protocol].merge(part, on=on, how="outer")
        )
    if not merged:
        return pd.DataFrame(columns=["protocol", *keys])
    return pd.concat(
        [df.assign(protocol=p)[["protocol", *df.columns]] for p, df in merged.items()],
        ignore_index=True,
    )
