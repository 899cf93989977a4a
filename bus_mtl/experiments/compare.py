"""Variant × fold comparison on identical folds, with paired statistics.

Layout (``OUT`` = ``--out``)::

    OUT/split.json                   one k-fold split shared by every variant
    OUT/<variant>/fold_k/...         the cv runner's folders, one cv folder per variant
    OUT/by_centre/split.json         (--protocol by_centre) one fold per held-out centre
    OUT/by_centre/<variant>/...
    OUT/compare.{csv,md,json}        the paper-style table: mean ± std over folds, p-values
    OUT/compare.png                  bars with error bars
    OUT/per_image.csv                every variant's per-image prob/Dice joined by image id

Significance is paired, each variant against one *pre-specified* reference variant
(:func:`resolve_reference`; never chosen on the test results), with near-duplicate groups
(from ``split.json``) as the independent units and folds as strata:

* Dice: Wilcoxon signed-rank over one mean Dice difference per group, and a cluster
  bootstrap of the mean per-fold Dice difference;
* AUC: DeLong per fold with Obuchowski's clustered variance, combined over folds into a
  z-test of the mean per-fold AUC difference (the table's AUC is the mean per-fold AUC),
  and a cluster bootstrap of the same difference.

Every p-value column has a Holm-adjusted twin (``_holm``) over the family of comparisons
against the reference within one protocol and one test. :data:`STAT_COLUMNS` says what
each column holds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bus_mtl.experiments.cv import (
    Builder,
    FoldJob,
    build_datamodule,
    finish,
    fold_jobs,
    record_inputs,
    run_jobs,
    write_split,
)
from bus_mtl.experiments.results import (
    RESOLUTION_NOTE,
    TABLE_METRICS,
    format_mean_std,
    markdown_table,
    read_fold_metrics,
    read_predictions,
    segmentation_resolution,
    summarize_folds,
    write_json,
)
from bus_mtl.experiments.stats import (
    delong_test_by_fold,
    grouped_wilcoxon,
    holm,
    paired_bootstrap_auc,
    paired_bootstrap_mean,
)
from bus_mtl.experiments.tuning import (
    PROTOCOL_RECORD,
    refuse_unfinal,
    tuning_lines,
    tuning_summary,
)

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
#: The p-value columns of ``compare.csv`` (each with a ``<name>_holm`` twin) and the test.
P_COLUMNS = {
    "p_dice_wilcoxon": "Wilcoxon signed-rank test, two-sided, over one value per unit "
    "(near-duplicate group, or single image): the unit's mean per-image Dice difference; "
    "H0: these differences are symmetric about 0",
    "p_dice_bootstrap": "paired cluster bootstrap (units drawn with replacement within each "
    "fold, the same draw for both variants) of delta_dice; H0: delta_dice = 0",
    "p_auc_delong": "DeLong's test per fold with Obuchowski's (1997) clustered variance "
    "(units as clusters), combined over folds: z = mean_f dAUC_f / sqrt(sum_f Var_f / F^2); "
    "H0: delta_auc (mean per-fold AUC difference) = 0",
    "p_auc_bootstrap": "paired cluster bootstrap of delta_auc, as for p_dice_bootstrap; "
    "H0: delta_auc = 0",
}
#: Every statistics column of ``compare.csv``, described (also in ``compare.json``).
STAT_COLUMNS = {
    "reference": "the reference variant every p-value compares against",
    "delta_dice": "variant − reference: mean over folds of the fold's mean per-image Dice "
    "difference, on images both scored",
    "delta_dice_ci_low": "95% cluster-bootstrap percentile interval of delta_dice, lower end",
    "delta_dice_ci_high": "95% cluster-bootstrap percentile interval of delta_dice, upper end",
    "n_dice_images": "images in the Dice tests",
    "n_dice_units": "independent units (groups; an image in no group is one) in the Dice tests",
    "delta_auc": "variant − reference: mean over folds of the per-fold AUC difference "
    "(malignant vs benign, out-of-fold probabilities)",
    "delta_auc_ci_low": "95% cluster-bootstrap percentile interval of delta_auc, lower end",
    "delta_auc_ci_high": "95% cluster-bootstrap percentile interval of delta_auc, upper end",
    "n_auc_images": "benign/malignant images in the AUC tests",
    "n_auc_units": "independent units in the AUC tests",
    **P_COLUMNS,
    **{
        f"{c}_holm": f"{c} adjusted by Holm's step-down method over the comparisons against "
        "the reference in the same protocol and test"
        for c in P_COLUMNS
    },
}
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


def resolve_reference(variants: Sequence[str], reference: str | None = None) -> tuple[str, str]:
    """The reference variant of the significance tests and why it is the one.

    ``reference`` when given (it must be among ``variants``); otherwise
    :data:`bus_mtl.models.BEST_VARIANT`, the paper's best variant, or — when that is not
    compared — the first variant given. Never chosen from test results.
    """
    # Here, not at the top: reading a comparison's files needs no model zoo (MONAI, smp).
    from bus_mtl.models import BEST_VARIANT

    names = list(dict.fromkeys(variants))
    if not names:
        raise ValueError("reference: no variants to compare")
    if reference is not None:
        if reference not in names:
            raise ValueError(
                f"reference: {reference!r} is not among the compared variants "
                f"({', '.join(names)}); pass one of them with --reference, or add "
                f"{reference!r} to --variants"
            )
        return reference, "given with --reference"
    if BEST_VARIANT in names:
        return BEST_VARIANT, "the default: the paper's best variant"
    return names[0], (
        f"the first variant given, as the default {BEST_VARIANT} is not compared; "
        "set one with --reference"
    )


def _split_candidates(vdir: Path) -> list[Path]:
    vdir = Path(vdir)
    found = [vdir / "split.json", vdir.parent / "split.json"]
    for job in sorted(vdir.glob("fold_*/job.json")):
        try:
            path = json.loads(job.read_text()).get("split_path")
        except ValueError:
            continue
        if path:
            found.append(Path(path))
    return found


def read_groups(split_path: Path) -> dict[str, str]:
    """``{image id: group label}`` for the images of the near-duplicate (or patient) groups
    stored in a split file; label ``g<k>`` is the k-th entry of its ``groups`` list. Images
    in no group are absent: each is its own unit."""
    data = json.loads(Path(split_path).read_text())
    return {i: f"g{k}" for k, members in enumerate(data.get("groups", [])) for i in members}


def attach_groups(pred: pd.DataFrame, vdir: Path) -> tuple[pd.DataFrame, str | None]:
    """``pred`` with a ``group`` column (NaN = own unit) and the split file it came from.

    A ``group`` column already in the predictions is kept; otherwise the groups come from the
    first ``split.json`` found beside the variant's folder (its own, the compare folder's, or
    the one its fold jobs name). None found: every image is its own unit.
    """
    if "group" in pred.columns:
        return pred, "the per-image predictions' group column"
    for path in _split_candidates(vdir):
        if path.is_file():
            groups = read_groups(path)
            return pred.assign(group=pred["id"].map(groups)), str(path)
    return pred.assign(group=np.nan), None


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
    reference: str | None = None,
    build: Builder | str | None = None,
    final: bool = False,
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Run (or resume) every variant × fold, then write the comparison files.

    ``reference`` is the variant every p-value compares against (see
    :func:`resolve_reference`); an unknown one fails before any run starts. ``build``: the
    LightningCLI builder every fold uses (see :func:`bus_mtl.experiments.cv.run_cv`).
    ``final``: the run is declared final (``--final``), which refuses ``data.tuning: off``
    before anything runs (:func:`bus_mtl.experiments.tuning.refuse_unfinal`).
    Returns the comparison table and ``{fold folder: error}`` for failed folds.
    """
    out = Path(out)
    paths = variant_configs(variants, Path(variants_dir))
    resolve_reference(list(paths), reference)
    dm = build_datamodule(configs, extra)
    tuning = dm.tuning
    if final:
        refuse_unfinal(tuning)
    out.mkdir(parents=True, exist_ok=True)
    jobs: list[FoldJob] = []
    folders: dict[tuple[str, str], Path] = {}
    for protocol in protocols:
        pdir = protocol_dir(out, protocol)
        split = pdir / "split.json"
        if not split.is_file():
            pdir.mkdir(parents=True, exist_ok=True)
            write_split(dm, split, protocol, folds)
        for v, path in paths.items():
            vdir = pdir / v
            vjobs = fold_jobs([*configs, str(path)], vdir, split, seed, extra, cwd, env, build)
            record_inputs(vdir, None, vjobs)
            write_json(vdir / PROTOCOL_RECORD, {"final": final, "tuning": tuning})
            folders[(protocol, v)] = vdir
            jobs += vjobs
    if argv is not None:
        (out / "command.txt").write_text(" ".join(["bus-mtl", *argv]) + "\n")
    errors = run_jobs(jobs, parallel)
    failed = {str(jobs[i].folder): e for i, e in errors.items()}
    for vdir in folders.values():
        if any((d / "DONE").is_file() for d in vdir.glob("fold_*")):
            finish(vdir)
    table = write_comparison(out, folders, reference=reference)
    return table, failed


def _columns(frame: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    part = frame[[c for c in names if c in frame.columns]].copy()
    if "fold" not in part:
        part["fold"] = 0
    if "group" not in part:
        part["group"] = np.nan
    return part


def _paired_tests(
    ref: pd.DataFrame, pred: pd.DataFrame, n_boot: int, seed: int
) -> dict[str, float | int]:
    """Dice and AUC tests of ``pred`` (a) against ``ref`` (b) on the images both scored.

    Units and folds come from the reference's ``group`` and ``fold`` columns.
    """
    row: dict[str, float | int] = {}
    if "dice" in ref and "dice" in pred:
        j = _columns(ref, ["id", "fold", "group", "dice"]).merge(
            pred[["id", "dice"]], on="id", suffixes=("_ref", "")
        )
        a, b = j["dice"].to_numpy(dtype=float), j["dice_ref"].to_numpy(dtype=float)
        if (np.isfinite(a) & np.isfinite(b)).any():
            groups, folds = j["group"].to_numpy(dtype=object), j["fold"].to_numpy()
            wil = grouped_wilcoxon(a, b, groups)
            bs = paired_bootstrap_mean(a, b, n_boot, seed, groups, folds)
            row.update(
                delta_dice=bs.difference,
                delta_dice_ci_low=bs.ci_low,
                delta_dice_ci_high=bs.ci_high,
                n_dice_images=wil.n,
                n_dice_units=wil.n_units,
                p_dice_wilcoxon=wil.p_value,
                p_dice_bootstrap=bs.p_value,
            )
    if "prob" in ref and "prob" in pred:
        j = _columns(ref, ["id", "fold", "group", "label", "prob"]).merge(
            pred[["id", "label", "prob"]], on=["id", "label"], suffixes=("_ref", "")
        )
        j = j[j["label"].isin([0, 1]) & np.isfinite(j["prob"]) & np.isfinite(j["prob_ref"])]
        if j["label"].nunique() == 2:
            y = j["label"].to_numpy(dtype=int)
            a, b = j["prob"].to_numpy(dtype=float), j["prob_ref"].to_numpy(dtype=float)
            groups, folds = j["group"].to_numpy(dtype=object), j["fold"].to_numpy()
            dl = delong_test_by_fold(y, a, b, folds, groups)
            bs = paired_bootstrap_auc(y, a, b, n_boot, seed, groups, folds)
            row.update(
                delta_auc=dl.difference,
                delta_auc_ci_low=bs.ci_low,
                delta_auc_ci_high=bs.ci_high,
                n_auc_images=dl.n,
                n_auc_units=dl.n_units,
                p_auc_delong=dl.p_value,
                p_auc_bootstrap=bs.p_value,
            )
    return row


def significance(
    frames: dict[tuple[str, str], pd.DataFrame],
    table: pd.DataFrame,
    reference: str,
    n_boot: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> pd.DataFrame:
    """Paired tests of every variant against ``reference``, per protocol, with Holm.

    One row per (protocol, variant) of ``table`` with the :data:`STAT_COLUMNS`; the
    reference's own row has no tests. Holm's adjustment runs over the variants of one
    protocol, separately for each p-value column.
    """
    rows = []
    for protocol, group in table.groupby("protocol", sort=False):
        ref = frames.get((protocol, reference))
        for v in group["variant"]:
            row: dict[str, Any] = {"protocol": protocol, "variant": v, "reference": reference}
            pred = frames.get((protocol, v))
            if v != reference and ref is not None and pred is not None:
                row.update(_paired_tests(ref, pred, n_boot, seed))
            rows.append(row)
    sig = pd.DataFrame(rows).reindex(
        columns=["protocol", "variant", *(c for c in STAT_COLUMNS if not c.endswith("_holm"))]
    )
    for col in P_COLUMNS:
        sig[f"{col}_holm"] = np.nan
        for _, idx in sig.groupby("protocol", sort=False).groups.items():
            sig.loc[idx, f"{col}_holm"] = holm(sig.loc[idx, col].to_numpy(dtype=float))
    return sig[["protocol", "variant", *STAT_COLUMNS]]


def _units_line(protocol: str, frame: pd.DataFrame, source: str | None) -> str:
    """How many independent units the tests of one protocol have, and where they came from."""
    n = len(frame)
    grouped = frame["group"].dropna()
    n_groups = int(grouped.nunique())
    if source is None:
        return (
            f"{protocol}: no split.json beside the variant folders, so no near-duplicate "
            f"groups: each of the {n} images is its own unit"
        )
    return (
        f"{protocol}: {n - len(grouped) + n_groups} units for {n} images; "
        f"{n_groups} near-duplicate groups hold {len(grouped)} of them (from {source}), "
        "every other image is alone"
    )


def write_comparison(
    out: Path,
    folders: dict[tuple[str, str], Path],
    reference: str | None = None,
    n_boot: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> pd.DataFrame:
    """Build and write ``compare.{csv,md,json,png}`` and ``per_image.csv``.

    ``reference``: the variant all p-values compare against (default: see
    :func:`resolve_reference`); ``n_boot`` resamples with ``seed`` for the bootstraps.
    """
    from bus_mtl.experiments.plots import comparison_plot

    out = Path(out)
    reference, rule = resolve_reference([v for _, v in folders], reference)
    rows, frames, sources = [], {}, {}
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
            frames[(protocol, v)], source = attach_groups(pred, vdir)
            if v == reference or protocol not in sources:
                sources[protocol] = source
    if not rows:
        raise ValueError(f"{out}: no variant has a finished fold")
    table = pd.DataFrame(rows)
    sig = significance(frames, table, reference, n_boot, seed)
    table = table.merge(sig, on=["protocol", "variant"], how="left")
    table.to_csv(out / "compare.csv", index=False)

    shown = pd.DataFrame(
        {
            "protocol": table["protocol"],
            "variant": table["variant"],
            "folds": table["n_folds"],
        }
    )
    resolutions = {segmentation_resolution(f) for f in frames.values()}
    headers = dict(HEADERS)
    if resolutions == {"original"}:
        headers["hd95"] = "HD95 (original px)"
    elif resolutions == {"input"}:
        headers["hd95"] = "HD95 (input px)"
    for m in TABLE_METRICS:
        if f"{m}_mean" in table:
            shown[headers[m]] = [
                format_mean_std(r[f"{m}_mean"], r[f"{m}_std"], m) for _, r in table.iterrows()
            ]
    is_ref = (table["variant"] == reference).to_numpy()
    for metric, tests in (("dice", ("wilcoxon", "bootstrap")), ("auc", ("delong", "bootstrap"))):
        name = "Dice" if metric == "dice" else "AUC"
        if not table[f"delta_{metric}"].notna().any():
            continue
        shown[f"Δ {name} (pp) [95% CI]"] = [
            "ref"
            if r
            else _fmt_delta(
                t[f"delta_{metric}"], t[f"delta_{metric}_ci_low"], t[f"delta_{metric}_ci_high"]
            )
            for r, (_, t) in zip(is_ref, table.iterrows())
        ]
        for test in tests:
            col = f"p_{metric}_{test}"
            label = {"wilcoxon": "Wilcoxon", "bootstrap": "bootstrap", "delong": "DeLong"}[test]
            shown[f"p {name} {label} (raw / Holm)"] = [
                "ref" if r else f"{_fmt_p(t[col])} / {_fmt_p(t[f'{col}_holm'])}"
                for r, (_, t) in zip(is_ref, table.iterrows())
            ]
    units = {
        p: _units_line(p, frames[(p, reference)], sources.get(p))
        for p in table["protocol"].unique()
        if (p, reference) in frames
    }
    notes = _notes(table, frames, reference, rule, units, n_boot, seed)
    for protocol in table["protocol"].unique():
        vdir = folders.get((protocol, reference)) or next(
            d for (p, _), d in folders.items() if p == protocol
        )
        info = tuning_summary(vdir)
        if info is not None:
            first, *rest = tuning_lines(info)
            notes += ["", f"**Tuning ({protocol}).** {first}", *rest]
    if len(resolutions) > 1:
        resolution_note = (
            "; segmentation metrics at different resolutions across variants (some runs "
            "predate original-size metrics): rerun them before comparing Dice/IoU/HD95"
        )
    else:
        resolution_note = "".join(f"; {RESOLUTION_NOTE[r]}" for r in resolutions)
    md = [
        f"# Variant comparison: {out.name}",
        "",
        "Mean ± sample std over folds (k-fold) or over held-out centres (by_centre)"
        f"{resolution_note}.",
        "",
        markdown_table(shown),
        "",
        *notes,
        "",
    ]
    (out / "compare.md").write_text("\n".join(md))
    write_json(
        out / "compare.json",
        {
            "rows": table.to_dict(orient="records"),
            "statistics": {
                "reference": reference,
                "reference_rule": rule,
                "bootstrap_resamples": n_boot,
                "bootstrap_seed": seed,
                "units": units,
                "columns": STAT_COLUMNS,
            },
        },
    )
    plot_table = table.copy()
    plot_table["label"] = (
        plot_table["variant"]
        if plot_table["protocol"].nunique() == 1
        else plot_table["variant"] + " (" + plot_table["protocol"] + ")"
    )
    comparison_plot(plot_table, out / "compare.png")
    join_predictions(frames).to_csv(out / "per_image.csv", index=False)
    return table


def _notes(
    table: pd.DataFrame,
    frames: dict[tuple[str, str], pd.DataFrame],
    reference: str,
    rule: str,
    units: dict[str, str],
    n_boot: int,
    seed: int,
) -> list[str]:
    """The Markdown paragraph saying what every p-value tests."""
    lines = [
        f"**Statistics.** Reference: `{reference}` ({rule}; fixed before looking at these "
        "results, never the best one found here). Every p-value is two-sided and paired: a "
        "variant against the reference on the same test images; Δ = variant − reference in "
        "percentage points, its 95% interval from the cluster bootstrap. The independent unit "
        "is the near-duplicate group (near-duplicates and patient groups of `split.json`); "
        "an image in no group is a unit of its own; folds are strata.",
        "",
        *(f"* **units**, {line}." for line in units.values()),
        "* **p Dice Wilcoxon**: Wilcoxon signed-rank test over one value per unit, the unit's "
        "mean per-image Dice difference (H0: symmetric about 0).",
        "* **p Dice bootstrap**: paired cluster bootstrap of Δ Dice = mean over folds of the "
        "fold's mean per-image Dice difference: units drawn with replacement within each "
        f"fold, the same draw for both variants; {n_boot} resamples, seed {seed}; "
        "p = 2·min tail share beyond 0, with the (1 + count)/(B + 1) rule.",
        "* **p AUC DeLong**: DeLong's test in each fold with Obuchowski's (1997) clustered "
        "variance (units as clusters), combined over the F folds as "
        "z = mean_f ΔAUC_f / sqrt(Σ_f Var_f / F²): a test of the mean per-fold AUC "
        "difference (the table's AUC is the mean per-fold AUC), conditional on the trained "
        "models.",
        "* **p AUC bootstrap**: the same cluster bootstrap for Δ AUC = mean over folds of "
        "the per-fold AUC difference (benign vs malignant images).",
        "* **Holm**: the second number is Holm's step-down adjustment over the family of "
        "comparisons against the reference within one protocol and one test.",
    ]
    for protocol in table["protocol"].unique():
        ref = frames.get((protocol, reference))
        if ref is None:
            lines.append(f"* {protocol}: the reference has no test predictions: no p-values.")
            continue
        for col, what in (("dice", "per-image Dice"), ("prob", "malignancy probabilities")):
            if col not in ref or not np.isfinite(ref[col].to_numpy(dtype=float)).any():
                test = "Dice" if col == "dice" else "AUC"
                lines.append(
                    f"* {protocol}: the reference `{reference}` has no {what}: no {test} "
                    "tests (choose another with --reference)."
                )
    return lines


def _fmt_delta(d: float, lo: float, hi: float) -> str:
    if not _finite(d):
        return "—"
    text = f"{100 * d:+.2f}"
    if _finite(lo) and _finite(hi):
        text += f" [{100 * lo:+.2f}, {100 * hi:+.2f}]"
    return text


def _finite(x: object) -> bool:
    return isinstance(x, (float, int, np.floating, np.integer)) and math.isfinite(float(x))


def _fmt_p(p: object) -> str:
    return f"{float(p):.3g}" if _finite(p) else "—"


def join_predictions(frames: dict[tuple[str, str], pd.DataFrame]) -> pd.DataFrame:
    """One row per (protocol, image): ``prob_<variant>``, ``threshold_<variant>`` (the fold's
    stored decision threshold: malignant when ``prob > threshold``), ``dice_<variant>``, ...
    side by side, with the image's near-duplicate ``group`` where known."""
    merged: dict[str, pd.DataFrame] = {}
    keys = ["id", "centre", "label", "fold", "group"]
    for (protocol, v), pred in frames.items():
        names = ("prob", "threshold", "dice", "iou", "hd95", "mask_area")
        cols = [c for c in names if c in pred]
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
