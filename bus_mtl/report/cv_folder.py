"""``bus-mtl cv`` and ``bus-mtl compare`` folders: the pooled out-of-fold images of a cv
folder (each called at its own fold's stored threshold), the fold table of its
``summary.json``, its fold checkpoints; a compare folder's ``compare.md`` table with the
paired statistics, ``compare.png``, every variant's ROC from ``per_image.csv``, and its
reference variant's cv folder in full."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from bus_mtl.experiments.evaluate import N_BOOT
from bus_mtl.report.files import (
    as_float,
    config_samples,
    file_time,
    find_best_checkpoint,
    read_json,
    read_yaml,
    sources_text,
    split_groups,
)
from bus_mtl.report.result_set import (
    METRIC_ROWS,
    Report,
    ResultSet,
    frame_from_predictions,
    result_from_frame,
)


def cv_report(folder: Path, n_boot: int, seed: int, name: str | None = None) -> Report:
    """The :class:`Report` of a ``bus-mtl cv`` folder: provenance, the pooled set, the fold
    table."""
    report = Report("cv", folder, f"Cross-validation: {name or folder.name}")
    report.provenance = _cv_provenance(folder)
    result = read_cv(folder, n_boot, seed, name)
    if result is not None:
        report.sets.append(result)
    report.fold_table = fold_table(folder)
    return report


def read_cv(
    folder: Path, n_boot: int = N_BOOT, seed: int = 0, name: str | None = None
) -> ResultSet | None:
    """A cv folder's pooled out-of-fold images as one :class:`ResultSet`, each image
    called at its own fold's stored threshold; ``None`` without per-image CSVs."""
    from bus_mtl.experiments.results import fold_dirs, pooled_metrics, read_predictions
    from bus_mtl.training.metrics import malignant_calls

    pred = read_predictions(folder)
    if not len(pred):
        return None
    groups = split_groups(_cv_split(folder))
    thresholds = pred["threshold"].to_numpy(dtype=float)
    missing = ~np.isfinite(thresholds)
    thresholds = np.where(missing, 0.5, thresholds)
    frame = frame_from_predictions(pred, thresholds, groups, malignant_calls)
    result = result_from_frame(
        f"{name or folder.name}: pooled out-of-fold test images",
        frame,
        None,
        n_boot,
        seed,
        groups is not None,
    )
    pooled = pooled_metrics(pred)
    for key in METRIC_ROWS:
        if key in pooled:
            result.metrics[key] = pooled[key]
    result.notes.insert(
        0,
        "Point values: computed once over every fold's test images (bus-mtl cv's 'pooled'); "
        "each image called at its own fold's stored decision threshold.",
    )
    if missing.any():
        result.notes.append(
            f"{int(missing.sum())} image(s) of folds without a stored threshold: called at P > 0.5."
        )
    folds = fold_dirs(folder)
    result.checkpoints = {
        int(d.name[5:]): Path(c) for d in folds if (c := _fold_checkpoint(d)) is not None
    }
    config = next(iter(sorted(folder.glob("fold_*/*/version_*/config.yaml"))), None)
    result.samples = config_samples(config) if config is not None else None
    ts = np.unique(thresholds)
    result.threshold_text = (
        f"malignant when P > {ts[0]:.4f} (every fold's stored operating point)"
        if ts.size == 1
        else "malignant when P > the image's fold's stored operating point ("
        + ", ".join(f"{t:.3f}" for t in ts)
        + ")"
    )
    return result


def _cv_split(folder: Path) -> Path:
    for p in (folder / "split.json", folder.parent / "split.json"):
        if p.is_file():
            return p
    return folder / "split.json"


def _fold_checkpoint(fold_dir: Path) -> str | None:
    for name in ("metrics.json", "run.json"):
        p = fold_dir / name
        if p.is_file():
            data = read_json(p)
            ckpt = data.get("checkpoint") or (data.get("fit") or {}).get("best_model_path")
            if ckpt:
                return ckpt
    found = find_best_checkpoint(next(iter(sorted(fold_dir.glob("*/version_*"))), fold_dir))
    return str(found) if found is not None else None


def fold_table(folder: Path) -> pd.DataFrame | None:
    """cv: one row per metric: mean ± std over folds, pooled, each fold's value."""
    path = folder / "summary.json"
    if not path.is_file():
        from bus_mtl.experiments.results import read_fold_metrics, summarize_folds

        per_fold = read_fold_metrics(folder)
        if per_fold.empty:
            return None
        s = summarize_folds(per_fold)
        data = {
            "metrics": {
                m: {
                    "mean": r["mean"],
                    "std": r["std"],
                    "values": [r[c] for c in s.columns if c.startswith("fold_")],
                }
                for m, r in s.iterrows()
            },
            "pooled": {},
        }
    else:
        data = read_json(path)
    rows = []
    for metric, values in (data.get("metrics") or {}).items():
        folds = values.get("values") or []
        row = {
            "metric": metric,
            "mean": as_float(values.get("mean")),
            "std": as_float(values.get("std")),
            "pooled": as_float((data.get("pooled") or {}).get(metric)),
        }
        row.update({f"fold {k}": as_float(v) for k, v in enumerate(folds)})
        rows.append(row)
    return pd.DataFrame(rows) if rows else None


def _cv_provenance(folder: Path) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    command = folder / "command.txt"
    if not command.is_file():
        command = folder.parent / "command.txt"
    rows.append(("command", command.read_text().strip() if command.is_file() else "not recorded"))
    split = _cv_split(folder)
    if split.is_file():
        s = read_json(split)
        rows.append(
            (
                "split",
                f"{s.get('kind', '?')} (version {s.get('version', 1)}), seed {s.get('seed', '?')}, "
                f"{len(s.get('folds') or [])} fold(s), {len(s.get('groups') or [])} near-duplicate "
                f"groups; file {split}",
            )
        )
    seeds = folder / "seeds.json"
    rows.append(("seed", json.dumps(read_json(seeds)) if seeds.is_file() else "not recorded"))
    protocol = folder / "protocol.json"
    if not protocol.is_file():
        protocol = folder.parent / "protocol.json"
    if protocol.is_file():
        rows.append(("protocol", json.dumps(read_json(protocol))))
    config = next(iter(sorted(folder.glob("fold_*/*/version_*/config.yaml"))), None)
    if config is not None:
        cfg = read_yaml(config)
        trainer, data = cfg.get("trainer") or {}, cfg.get("data") or {}
        rows.append(("data", sources_text(data.get("sources"))))
        rows.append(
            (
                "machine",
                f"accelerator {trainer.get('accelerator', '?')}, devices "
                f"{trainer.get('devices', '?')}, precision {trainer.get('precision', '?')}, "
                f"{data.get('image_size', '?')} px",
            )
        )
    else:
        rows.append(("machine", "not recorded"))
    rows.append(("date", file_time(folder / "summary.json") or "not recorded"))
    return rows


def compare_report(folder: Path, n_boot: int, seed: int) -> Report:
    """The :class:`Report` of a ``bus-mtl compare`` folder: its table and statistics, the
    ROC overlay per protocol, and the reference variant's pooled set."""
    report = Report("compare", folder, f"Variant comparison: {folder.name}")
    md = folder / "compare.md"
    report.compare_md = md.read_text() if md.is_file() else ""
    png = folder / "compare.png"
    report.compare_png = png if png.is_file() else None
    stats = (
        read_json(folder / "compare.json").get("statistics", {})
        if (folder / "compare.json").is_file()
        else {}
    )
    reference = stats.get("reference")
    command = folder / "command.txt"
    report.provenance = [
        ("command", command.read_text().strip() if command.is_file() else "not recorded"),
        (
            "reference",
            f"{reference} ({stats.get('reference_rule', '')})" if reference else "not recorded",
        ),
        (
            "statistics",
            f"paired, {stats.get('bootstrap_resamples', '?')} bootstrap resamples, seed "
            f"{stats.get('bootstrap_seed', '?')}"
            if stats
            else "not recorded",
        ),
    ]
    if (folder / "split.json").is_file():
        s = read_json(folder / "split.json")
        report.provenance.append(
            (
                "split",
                f"{s.get('kind', '?')}, seed {s.get('seed', '?')}, "
                f"{len(s.get('folds') or [])} fold(s); file {folder / 'split.json'}",
            )
        )
    report.provenance.append(
        ("date", file_time(folder / "compare.json") or file_time(md) or "not recorded")
    )
    per_image = folder / "per_image.csv"
    if per_image.is_file():
        report.curves = compare_curves(pd.read_csv(per_image, dtype={"id": str}))
    if reference:
        from bus_mtl.experiments.compare import protocol_dir

        protocols = list(report.curves) or ["kfold"]
        for protocol in protocols:
            vdir = protocol_dir(folder, protocol) / reference
            if vdir.is_dir():
                result = read_cv(vdir, n_boot, seed, f"{reference} ({protocol})")
                if result is not None:
                    result.notes.insert(
                        0,
                        "The reference variant in full; the others are in the table and "
                        "the ROC overlay.",
                    )
                    report.sets.append(result)
    return report


def compare_curves(
    per_image: pd.DataFrame,
) -> dict[str, list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]]:
    """compare's ``per_image.csv`` as ``{protocol: [(variant, labels, probs, calls)]}``
    over the benign/malignant images with a probability (calls at each image's fold's
    stored threshold)."""
    out: dict[str, list] = {}
    for protocol, part in per_image.groupby(
        per_image.get("protocol", pd.Series("kfold", index=per_image.index))
    ):
        curves = []
        for col in [c for c in part.columns if c.startswith("prob_")]:
            variant = col[len("prob_") :]
            p = part[col].to_numpy(dtype=float)
            y = part["label"].to_numpy()
            keep = np.isin(y, (0, 1)) & np.isfinite(p)
            t = part.get(f"threshold_{variant}", pd.Series(0.5, index=part.index)).to_numpy(
                dtype=float
            )
            t = np.where(np.isfinite(t), t, 0.5)
            curves.append((variant, y[keep].astype(int), p[keep], p[keep] > t[keep]))
        out[str(protocol)] = curves
    return out
