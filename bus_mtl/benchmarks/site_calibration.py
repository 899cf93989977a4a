"""``bus-mtl bench site-calibration``: how many labelled local cases a site calibration
needs, and what adapting without labels does, measured on an external site (default:
BrEaST-Lesions_USG, 252 lesion cases).

The model runs once over every case (its logits cached in ``OUT/logits.npz``). Then, for each
``k`` in ``--ks``, ``--draws`` stratified draws (seeded) of ``k`` calibration cases: the
temperature and decision threshold refitted on them
(:func:`bus_mtl.experiments.site_calibration.fit_site_point`, the function ``bus-mtl
calibrate`` uses) and scored on the other cases. Rows without labels, scored on all cases:
the stored (training-site) operating point; the EM prior-shift correction; BatchNorm
statistics re-estimated on the site's images (a second forward pass), alone and followed by
the prior shift. A last row refits on all cases and scores on them (in-sample: a ceiling,
not an estimate).

    bus-mtl bench site-calibration --ckpt RUN/checkpoints/best.ckpt \\
        --out results/site_calibration

writes ``OUT/summary.{csv,json}`` (the printed table) and ``OUT/draws.csv`` (one row per
draw, with the stored point scored on the same held-out cases for a paired comparison).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from bus_mtl.data.paths import find_external_root
from bus_mtl.experiments.site_calibration import (
    DEFAULT_RULE,
    DEFAULT_TARGET_SENSITIVITY,
    SITE_RULES,
    check_rule,
    fit_site_point,
    probabilities,
    rates,
    rule_name,
    stratified_draw,
)
from bus_mtl.inference.site_adaptation import (
    SiteModel,
    em_prior_shift,
    prior_shift_point,
    read_site_cases,
)

METRICS = ("sensitivity", "specificity", "balanced_acc", "auc", "brier")


def _cache_key(ckpt: Path, manifest: Path, bn: bool) -> dict[str, Any]:
    stat = ckpt.stat()
    return {
        "ckpt": str(ckpt.resolve()),
        "ckpt_size": stat.st_size,
        "ckpt_mtime_ns": stat.st_mtime_ns,
        "manifest": str(manifest.resolve()),
        "bn": bn,
    }


def site_logits(ckpt: Path, manifest: Path, out: Path, batch_size: int, bn: bool) -> dict[str, Any]:
    """Every case's logits for every mode of the checkpoint, stored and (``bn``) with
    BatchNorm re-estimated on all the cases; read from ``out/logits.npz`` when it was
    written for the same checkpoint file and manifest."""
    cache = out / "logits.npz"
    key = _cache_key(ckpt, manifest, bn)
    if cache.is_file():
        data = np.load(cache, allow_pickle=False)
        meta = json.loads(str(data["meta"]))
        if meta["key"] == key:
            meta["cached"] = True
            arrays = {k: data[k] for k in data.files if k != "meta"}
            return {**meta, **arrays}
    t0 = time.perf_counter()
    cases = read_site_cases(manifest, labelled=True)
    model = SiteModel.load(ckpt=ckpt)
    t_read = time.perf_counter() - t0
    t0 = time.perf_counter()
    stored = model.logits(cases.images, batch_size)
    t_forward = time.perf_counter() - t0
    arrays = {"labels": cases.labels, "ids": np.asarray(cases.ids)}
    arrays.update({f"logits_{m}": v for m, v in stored.items()})
    layers, t_bn = 0, 0.0
    points = {m: model.operating_point(m) for m in model.modes}
    if bn:
        t0 = time.perf_counter()
        # Transductive, as a site would run it: the statistics come from the same
        # (unlabelled) images that are then scored.
        layers = model.adapt_batchnorm(cases.images, batch_size)
        adapted = model.logits(cases.images, batch_size)
        t_bn = time.perf_counter() - t0
        arrays.update({f"logits_bn_{m}": v for m, v in adapted.items()})
    meta = {
        "key": key,
        "site": cases.site,
        "modes": list(model.modes),
        "points": {
            m: {k: p[k] for k in ("temperature", "decision_threshold", "threshold_rule")}
            for m, p in points.items()
        },
        "source_prior": model.source_prior(),
        "batchnorm_layers": layers,
        "seconds": {"read": t_read, "forward": t_forward, "batchnorm": t_bn},
    }
    out.mkdir(parents=True, exist_ok=True)
    np.savez(cache, meta=np.asarray(json.dumps(meta)), **arrays)
    return {**meta, "cached": False, **arrays}


def labelled_draws(
    logits: np.ndarray,
    labels: np.ndarray,
    stored: dict[str, Any],
    ks: list[int],
    draws: int,
    seed: int,
    rule: str,
    target: float,
) -> list[dict[str, Any]]:
    """One row per (k, draw): the point fitted on the draw, scored on the rest, and the
    stored point scored on the same rest."""
    rows = []
    for k in ks:
        rng = np.random.default_rng([seed, k])
        for draw in range(draws):
            cal = stratified_draw(labels, k, rng)
            rest = np.setdiff1d(np.arange(len(labels)), cal)
            point = fit_site_point(logits[cal], labels[cal], rule, target)
            fitted = rates(
                probabilities(logits[rest], point["temperature"]),
                labels[rest],
                point["decision_threshold"],
            )
            before = rates(
                probabilities(logits[rest], stored["temperature"]),
                labels[rest],
                stored["decision_threshold"],
            )
            rows.append(
                {
                    "k": k,
                    "draw": draw,
                    "n_malignant_cal": int(labels[cal].sum()),
                    "n_eval": len(rest),
                    "temperature": point["temperature"],
                    "threshold": point["decision_threshold"],
                    **fitted,
                    **{f"stored_{m}": before[m] for m in ("sensitivity", "specificity")},
                }
            )
    return rows


def _fixed_row(
    method: str, labels_used: str, logits: np.ndarray, labels: np.ndarray, point: dict
) -> dict[str, Any]:
    r = rates(probabilities(logits, point["temperature"]), labels, point["decision_threshold"])
    row = {"method": method, "labels": labels_used, "n_eval": len(labels), "draws": 1}
    row.update({m: r[m] for m in METRICS})
    row.update({"temperature": point["temperature"], "threshold": point["decision_threshold"]})
    return row


def _mean_std_row(method: str, labels_used: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "method": method,
        "labels": labels_used,
        "n_eval": int(np.mean([r["n_eval"] for r in rows])),
        "draws": len(rows),
    }
    for m in (*METRICS, "temperature", "threshold"):
        values = np.asarray([r[m] for r in rows], dtype=np.float64)
        out[m] = float(np.nanmean(values))
        out[f"{m}_std"] = float(np.nanstd(values, ddof=1)) if len(values) > 1 else 0.0
    out["sensitivity_min"] = float(np.nanmin([r["sensitivity"] for r in rows]))
    return out


def summary_rows(
    data: dict[str, Any],
    mode: str,
    ks: list[int],
    draws: int,
    seed: int,
    rule: str,
    target: float,
    source_prior: float | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(summary rows, per-draw rows) for one test-time augmentation ``mode``."""
    labels = np.asarray(data["labels"])
    logits = np.asarray(data[f"logits_{mode}"])
    stored = data["points"][mode]
    n = len(labels)
    rows = [_fixed_row("stored operating point (training site)", "none", logits, labels, stored)]
    if source_prior is not None:
        shift = em_prior_shift(probabilities(logits, stored["temperature"]), source_prior)
        row = _fixed_row(
            "EM prior shift", "none", logits, labels, prior_shift_point(stored, shift, data["site"])
        )
        row["site_prior"] = shift.site_prior
        rows.append(row)
    bn_key = f"logits_bn_{mode}"
    if bn_key in data:
        bn_logits = np.asarray(data[bn_key])
        rows.append(_fixed_row("BatchNorm re-estimated", "none", bn_logits, labels, stored))
        if source_prior is not None:
            shift = em_prior_shift(probabilities(bn_logits, stored["temperature"]), source_prior)
            point = prior_shift_point(stored, shift, data["site"])
            row = _fixed_row("BatchNorm + EM prior shift", "none", bn_logits, labels, point)
            row["site_prior"] = shift.site_prior
            rows.append(row)
    per_draw = labelled_draws(logits, labels, stored, ks, draws, seed, rule, target)
    for k in ks:
        picked = [r for r in per_draw if r["k"] == k]
        rows.append(_mean_std_row(f"refit on k={k} labelled", f"{k}", picked))
    ceiling = fit_site_point(logits, labels, rule, target)
    rows.append(_fixed_row(f"refit on all {n} (in-sample)", f"{n}", logits, labels, ceiling))
    return rows, per_draw


def _cell(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if value is None:
        return ""
    std = row.get(f"{key}_std")
    return f"{value:.3f} ± {std:.3f}" if std is not None else f"{value:.3f}"


def format_table(rows: list[dict[str, Any]]) -> str:
    head = [
        "method",
        "labels",
        "n eval",
        "sensitivity",
        "specificity",
        "bal. acc",
        "AUC",
        "T",
        "threshold",
        "EM prevalence",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], r["labels"], str(r["n_eval"])]
        cells += [
            _cell(r, k)
            for k in (
                "sensitivity",
                "specificity",
                "balanced_acc",
                "auc",
                "temperature",
                "threshold",
                "site_prior",
            )
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bus-mtl bench site-calibration", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--ckpt", required=True, help="training checkpoint")
    p.add_argument(
        "--manifest",
        default=None,
        help="the site's manifest CSV (default: BrEaST-Lesions_USG's, $BUS_MTL_EXTERNAL or "
        "../shared/data/breast_lesions_usg)",
    )
    p.add_argument("--out", required=True, help="folder for logits.npz, summary.*, draws.csv")
    p.add_argument("--ks", type=int, nargs="+", default=[10, 20, 40, 80])
    p.add_argument("--draws", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rule", choices=SITE_RULES, default=DEFAULT_RULE)
    p.add_argument("--target-sensitivity", type=float, default=DEFAULT_TARGET_SENSITIVITY)
    p.add_argument("--tta", default=None, help="mode to score (default: the checkpoint's own)")
    p.add_argument("--source-prior", type=float, default=None, help="default: the checkpoint's")
    p.add_argument("--no-bn", action="store_true", help="skip the BatchNorm rows")
    p.add_argument("--batch-size", type=int, default=32)
    return p


def default_manifest() -> Path:
    """The external set's manifest (:func:`bus_mtl.data.paths.find_external_root`)."""
    root = find_external_root()
    if root is None:
        raise FileNotFoundError(
            "no --manifest given and no BrEaST-Lesions_USG folder found; set "
            "$BUS_MTL_EXTERNAL or pass --manifest CSV"
        )
    return root / "manifest.csv"


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    check_rule(args.rule, args.target_sensitivity)
    if args.draws < 1:
        raise ValueError(f"--draws must be >= 1, got {args.draws}")
    if args.manifest is None:
        args.manifest = str(default_manifest())
    start = time.perf_counter()
    out = Path(args.out)
    data = site_logits(Path(args.ckpt), Path(args.manifest), out, args.batch_size, not args.no_bn)
    mode = args.tta or data["modes"][0]
    if mode not in data["modes"]:
        raise ValueError(f"--tta {mode!r}: the checkpoint has operating points for {data['modes']}")
    source_prior = args.source_prior if args.source_prior is not None else data["source_prior"]
    rows, per_draw = summary_rows(
        data, mode, args.ks, args.draws, args.seed, args.rule, args.target_sensitivity, source_prior
    )
    wall = time.perf_counter() - start
    labels = np.asarray(data["labels"])
    header = (
        f"site {data['site']}: {len(labels)} cases ({int((labels == 0).sum())} benign, "
        f"{int(labels.sum())} malignant); checkpoint {args.ckpt} (tta {mode}); rule "
        f"{rule_name(args.rule, args.target_sensitivity)}; {args.draws} draws per k, seed "
        f"{args.seed}; source prior {source_prior if source_prior is None else round(source_prior, 4)}"
    )
    print(header)
    print(format_table(rows))
    seconds = dict(data["seconds"])
    print(
        f"wall {wall:.1f} s (logits {'cached' if data['cached'] else 'computed'}: read "
        f"{seconds['read']:.1f} s, forward {seconds['forward']:.1f} s, BatchNorm pass "
        f"{seconds['batchnorm']:.1f} s)"
    )
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "summary.csv", rows)
    _write_csv(out / "draws.csv", per_draw)
    summary = {
        "header": header,
        "ckpt": str(args.ckpt),
        "manifest": str(args.manifest),
        "site": data["site"],
        "tta": mode,
        "rule": args.rule,
        "target_sensitivity": args.target_sensitivity,
        "ks": args.ks,
        "draws": args.draws,
        "seed": args.seed,
        "source_prior": source_prior,
        "stored_point": data["points"][mode],
        "batchnorm_layers": data["batchnorm_layers"],
        "wall_s": wall,
        "logits_cached": bool(data["cached"]),
        "seconds": seconds,
        "rows": rows,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0
