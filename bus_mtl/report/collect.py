"""Read a results folder into one :class:`Report`: what kind of folder it is, its per-image
results, their metrics with 95 % intervals, where it came from, and how to reach its model
and images (for the gallery).

Four kinds, told apart by their files (:func:`detect_kind`)::

    evaluate  metrics.json (schema bus_mtl.evaluate/1), per_image.csv     bus-mtl evaluate
    run       metrics.csv / test_predictions.csv / checkpoints/,          bus-mtl main|fit
              config.yaml, split.json, budget.json, external_<name>/      (a Lightning version_N)
    cv        fold_k/{metrics.json,test_predictions.csv}, summary.json    bus-mtl cv
    compare   compare.{json,md,png}, per_image.csv, <variant>/fold_k/     bus-mtl compare

Nothing is recomputed that the folder already holds: an evaluate folder's metrics and
intervals are its ``metrics.json``'s; a run's metrics are its logged ``test/*`` values; only
where no interval was stored are they bootstrapped from the per-image CSV, with the
evaluate command's own function (:func:`bus_mtl.experiments.evaluate.bootstrap_intervals`:
near-duplicate groups from ``split.json`` as the resampled units).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bus_mtl.experiments.evaluate import CI_METRICS, N_BOOT, SCHEMA, bootstrap_intervals

KINDS = ("evaluate", "run", "cv", "compare")
#: The metrics table's rows: key -> label. Fractions unless named in NOT_FRACTIONS.
METRIC_ROWS = {
    "dice": "Dice",
    "iou": "IoU",
    "hd95": "HD95 (px)",
    "auc": "AUC",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "acc": "Accuracy",
    "balanced_acc": "Balanced accuracy",
    "f1": "F1",
    "ece": "ECE",
    "brier": "Brier",
}
#: The per-image frame every reader returns (``ResultSet.frame``), in this order.
FRAME_COLUMNS = (
    "id",
    "label",
    "probability",
    "threshold",
    "call",
    "dice",
    "iou",
    "hd95",
    "uncertainty",
    "centre",
    "group",
    "image",
    "fold",
)


@dataclass
class ResultSet:
    """One set of per-image results and what belongs to it.

    Attributes:
        name: what the set is (``test part (fold 0)``, ``breast_lesions_usg (external)``).
        frame: one row per image, :data:`FRAME_COLUMNS` (``call``: called malignant at
            ``threshold``; ``image``: the file, ``""`` when the CSV does not say; ``fold``:
            -1 outside cv).
        metrics: point values (keys of :data:`METRIC_ROWS`, ``n``, ``n_malignant``,
            ``threshold``) and ``<name>_ci`` = ``[low, high]``.
        ci_source: where the intervals come from, in words.
        checkpoints: fold -> model file (key -1 outside cv): the model the gallery runs.
        samples: returns ``{id: Sample}`` for the gallery's ground-truth masks (may raise;
            the gallery then says why); ``None`` when the folder does not say.
        referral: ``metrics.json``'s referral rows, when stored.
        figures: stored figure files by kind (``roc``, ``reliability``, ``referral``).
        notes: sentences shown under the set's heading.
    """

    name: str
    frame: pd.DataFrame
    metrics: dict[str, Any]
    ci_source: str = ""
    checkpoints: dict[int, Path] = field(default_factory=dict)
    samples: Callable[[], dict[str, Any]] | None = None
    referral: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    threshold_text: str = ""

    @property
    def has_cls(self) -> bool:
        return bool(np.isfinite(self.frame["probability"].to_numpy(dtype=float)).any())

    @property
    def has_seg(self) -> bool:
        return bool(np.isfinite(self.frame["dice"].to_numpy(dtype=float)).any())

    @property
    def has_uncertainty(self) -> bool:
        return bool(np.isfinite(self.frame["uncertainty"].to_numpy(dtype=float)).any())


@dataclass
class Report:
    """Everything the HTML shows, read from one folder.

    Attributes:
        kind: one of :data:`KINDS`.
        folder: the folder read.
        title: the page title.
        provenance: ``(what, value)`` rows: command, data, split, seed, machine, date.
        sets: the result sets, each drawn as a section.
        fold_table: cv: one row per metric, ``mean ± std``, pooled, and each fold's value.
        compare_md: compare: ``compare.md``'s text (the table with paired statistics).
        compare_png: compare: the stored bar chart.
        curves: compare: per protocol, ``(variant, labels, probabilities, calls)`` for the
            ROC overlay.
        notes: sentences for the whole report.
    """

    kind: str
    folder: Path
    title: str
    provenance: list[tuple[str, str]] = field(default_factory=list)
    sets: list[ResultSet] = field(default_factory=list)
    fold_table: pd.DataFrame | None = None
    compare_md: str = ""
    compare_png: Path | None = None
    curves: dict[str, list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]] = field(
        default_factory=dict
    )
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Which kind


def detect_kind(folder: str | Path) -> str:
    """The kind of results folder (:data:`KINDS`), from the files it holds.

    Raises:
        FileNotFoundError: ``folder`` is not a directory.
        ValueError: none of the kinds' files is there (the message lists them).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder (give a results folder)")
    metrics = folder / "metrics.json"
    if metrics.is_file() and _json(metrics).get("schema") == SCHEMA:
        return "evaluate"
    if (folder / "compare.json").is_file() or (folder / "compare.md").is_file():
        return "compare"
    if (folder / "summary.json").is_file() or any(folder.glob("fold_*/metrics.json")):
        return "cv"
    if (
        (folder / "test_predictions.csv").is_file()
        or (folder / "metrics.csv").is_file()
        or any(folder.glob("checkpoints/*.ckpt"))
    ):
        return "run"
    raise ValueError(
        f"{folder}: not a results folder of bus-mtl: expected metrics.json with schema "
        f"{SCHEMA!r} (bus-mtl evaluate), compare.json (bus-mtl compare), summary.json or "
        "fold_*/metrics.json (bus-mtl cv), or metrics.csv / test_predictions.csv / "
        "checkpoints/*.ckpt (a bus-mtl main or fit run: runs/main/<Net>/version_N)"
    )


def collect(folder: str | Path, n_boot: int = N_BOOT, seed: int = 0) -> Report:
    """Read ``folder`` (any of :data:`KINDS`) into a :class:`Report`; ``n_boot``/``seed``:
    the bootstrap where intervals have to be computed."""
    folder = Path(folder)
    kind = detect_kind(folder)
    reader = {"evaluate": _evaluate_report, "run": _run_report, "cv": _cv_report}
    if kind == "compare":
        return _compare_report(folder, n_boot, seed)
    return reader[kind](folder, n_boot, seed)


# ---------------------------------------------------------------------------------------------
# bus-mtl evaluate


def _evaluate_report(folder: Path, n_boot: int, seed: int) -> Report:
    result = read_evaluate(folder)
    m = _json(folder / "metrics.json")
    report = Report("evaluate", folder, f"Evaluation: {result.name}", sets=[result])
    report.provenance = _evaluate_provenance(m)
    return report


def read_evaluate(folder: Path, name: str | None = None) -> ResultSet:
    """A ``bus-mtl evaluate`` folder as a :class:`ResultSet`: its metrics and intervals as
    stored, its per-image CSV, its model and the samples its ``data`` record names."""
    m = _json(folder / "metrics.json")
    per_image = pd.read_csv(folder / "per_image.csv", dtype={"id": str, "group": str})
    threshold = _float(m.get("threshold"))
    frame = pd.DataFrame(
        {
            "id": per_image["id"].astype(str),
            "label": per_image["label"].astype(int),
            "probability": per_image["probability"].astype(float),
            "threshold": threshold,
            "call": per_image["predicted_class"].fillna("").astype(str) == "malignant",
            "dice": per_image["dice"].astype(float),
            "iou": per_image["iou"].astype(float),
            "hd95": per_image["hd95"].astype(float),
            "uncertainty": _column(per_image, "uncertainty", np.nan).astype(float),
            "centre": _column(per_image, "centre", "").fillna("").astype(str),
            "group": _column(per_image, "group", "").fillna("").astype(str),
            "image": [_resolve_image(p, folder) for p in per_image["image"].fillna("")],
            "fold": -1,
        }
    )
    metrics = {k: m.get(k) for k in ("n", "n_malignant", *METRIC_ROWS, "threshold")}
    metrics.update({f"{k}_ci": m.get(f"{k}_ci") for k in CI_METRICS})
    boot = m.get("bootstrap") or {}
    ci_source = (
        f"stored in metrics.json: {int(boot.get('n_resamples', 0))} {boot.get('method', '')} "
        f"bootstrap resamples over {boot.get('n_units', '?')} {boot.get('unit', 'unit')}s "
        f"(seed {boot.get('seed', '?')})"
    )
    model = (m.get("model") or {}).get("path") or ""
    checkpoints = {-1: Path(model)} if model else {}
    rule = m.get("threshold_rule") or ""
    source = (
        "given on the command line"
        if m.get("threshold_source") == "override"
        else "the model's stored operating point"
    )
    notes = []
    unc = m.get("uncertainty") or {}
    if unc.get("note"):
        notes.append(f"No referral curve: {unc['note']}.")
    set_name = name or (m.get("name") or folder.name)
    return ResultSet(
        name=set_name,
        frame=frame[list(FRAME_COLUMNS)],
        metrics=metrics,
        ci_source=ci_source,
        checkpoints=checkpoints,
        samples=_evaluate_samples(m),
        referral=list(m.get("referral") or []),
        figures={k: folder / v for k, v in (m.get("files") or {}).items() if k != "per_image"},
        notes=notes,
        threshold_text=(
            f"malignant when P > {threshold:.4f} ({source}, rule {rule})"
            if math.isfinite(threshold)
            else "malignant = the class of highest probability"
        ),
    )


def _evaluate_provenance(m: Mapping[str, Any]) -> list[tuple[str, str]]:
    model = m.get("model") or {}
    data = m.get("data") or {}
    centres = data.get("centres") or {}
    boot = m.get("bootstrap") or {}
    return [
        ("command", m.get("command") or "not recorded"),
        (
            "model",
            f"{model.get('path', '')} ({model.get('format', '?')}, variant "
            f"{model.get('variant', '?')}, {model.get('image_size', '?')} px "
            f"{model.get('resize') or 'squash'}, TTA {model.get('tta', '?')})",
        ),
        (
            "data",
            " ".join(
                dict.fromkeys(str(v) for v in [data.get("source"), *data.get("files", [])] if v)
            )
            or "not recorded",
        ),
        ("centres", ", ".join(f"{k}: {v}" for k, v in centres.items()) or "not recorded"),
        ("split", "none: every image is a test image (external validation)"),
        ("seed", f"bootstrap seed {boot.get('seed', '?')} (nothing is trained or fitted here)"),
        ("machine", "not recorded"),
        ("date", m.get("created") or "not recorded"),
        ("bus_mtl", m.get("bus_mtl_version") or "not recorded"),
    ]


def _evaluate_samples(m: Mapping[str, Any]) -> Callable[[], dict[str, Any]] | None:
    """The samples ``bus-mtl evaluate`` read, rebuilt from metrics.json's ``data`` record:
    its manifest files, else the options it was given (manifests, presets, ``--data.*``)."""
    data = m.get("data") or {}
    files = [f for f in data.get("files") or [] if str(f).endswith(".csv")]
    source = str(data.get("source") or "")
    if not files and not source:
        return None

    def load() -> dict[str, Any]:
        from bus_mtl.data.sources import ManifestSource

        if files:
            samples = [s for f in files for s in ManifestSource(f).samples()]
        else:
            samples = _samples_from_options(shlex.split(source))
        return {s.id: s for s in samples}

    return load


def _samples_from_options(tokens: list[str]) -> list[Any]:
    """Samples of ``bus-mtl evaluate``'s data options as recorded: manifests, config files
    and ``--data.*`` options (presets by name resolved as the dispatcher does)."""
    from bus_mtl.configs import resolve_args
    from bus_mtl.data.sources import ManifestSource

    tokens = resolve_args(tokens)
    first = next((i for i, t in enumerate(tokens) if t.startswith("--data.")), len(tokens))
    head, extra = tokens[:first], tokens[first:]
    manifests = [t for t in head if t.endswith(".csv")]
    configs = [t for t in head if not t.endswith(".csv") and not t.startswith("-")]
    samples = [s for mf in manifests for s in ManifestSource(mf).samples()]
    if configs or extra:
        from bus_mtl.experiments.cv import build_datamodule

        samples += build_datamodule(configs, extra).source.samples()
    return samples


def _resolve_image(path: str, folder: Path) -> str:
    """An image path as recorded (absolute; older files: relative to where the command
    ran, most often the project root) made absolute where the file is found."""
    if not path:
        return ""
    p = Path(path)
    if p.is_absolute():
        return str(p)
    for base in (Path.cwd(), folder, Path(__file__).resolve().parents[2]):
        if (base / p).is_file():
            return str((base / p).resolve())
    return str(p)


# ---------------------------------------------------------------------------------------------
# A training run: runs/main/<Net>/version_N


def _run_report(folder: Path, n_boot: int, seed: int) -> Report:
    config = _yaml(folder / "config.yaml")
    logged = read_logged_test_metrics(folder / "metrics.csv")
    ckpt = find_best_checkpoint(folder)
    fold = (config.get("data") or {}).get("fold")
    report = Report("run", folder, f"Training run: {_run_name(folder)}")
    report.provenance = _run_provenance(folder, config, ckpt)
    predictions = folder / "test_predictions.csv"
    groups = _split_groups(folder / "split.json")
    if predictions.is_file():
        threshold = logged.get("decision_threshold")
        notes = []
        if threshold is None and ckpt is not None:
            threshold = _checkpoint_threshold(ckpt)
        if threshold is None:
            threshold = 0.5
            notes.append(
                "No decision threshold recorded (no test/decision_threshold in metrics.csv, no "
                "checkpoint): the calls use P > 0.5."
            )
        frame = read_test_predictions(predictions, threshold, groups)
        name = f"test part (fold {fold})" if fold is not None else "test part"
        result = result_from_frame(name, frame, logged, n_boot, seed, groups is not None)
        result.checkpoints = {-1: ckpt} if ckpt is not None else {}
        result.samples = _config_samples(folder / "config.yaml")
        result.notes += notes
        result.threshold_text = f"malignant when P > {threshold:.4f} (the checkpoint's stored operating point, as the test step used it)"
        report.sets.append(result)
    else:
        report.notes.append(
            f"{folder}: no test_predictions.csv (the run has not been tested, or ran without "
            "the PerImagePredictions callback): no test-part section."
        )
    for ext in sorted(folder.glob("external_*/metrics.json")):
        if _json(ext).get("schema") == SCHEMA:
            result = read_evaluate(ext.parent)
            result.name = f"{result.name} (external)"
            report.sets.append(result)
    return report


def _run_name(folder: Path) -> str:
    return "/".join(folder.resolve().parts[-3:])


def read_logged_test_metrics(path: Path) -> dict[str, float]:
    """The ``test/*`` values a Lightning ``metrics.csv`` logged (the last row holding
    each), without the prefix; ``{}`` without the file."""
    if not path.is_file():
        return {}
    table = pd.read_csv(path)
    out: dict[str, float] = {}
    for col in table.columns:
        if col.startswith("test/"):
            values = pd.to_numeric(table[col], errors="coerce").dropna()
            if len(values):
                out[col[len("test/") :]] = float(values.iloc[-1])
    return out


def find_best_checkpoint(folder: Path) -> Path | None:
    """``checkpoints/best-*.ckpt`` (the newest when several), else ``last.ckpt``."""
    best = sorted(folder.glob("checkpoints/best*.ckpt"), key=lambda p: p.stat().st_mtime)
    if best:
        return best[-1]
    last = folder / "checkpoints" / "last.ckpt"
    return last if last.is_file() else None


def _checkpoint_threshold(ckpt: Path) -> float | None:
    import torch

    try:
        meta = torch.load(ckpt, map_location="cpu", weights_only=True).get("bus_mtl", {})
    except Exception:  # an unreadable checkpoint: the report says it has no threshold
        return None
    value = meta.get("decision_threshold", meta.get("threshold"))
    return float(value) if value is not None else None


def read_test_predictions(
    path: Path, threshold: float | np.ndarray, groups: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """A ``PerImagePredictions`` CSV (``id, centre, label, prob, dice, iou, hd95,
    mask_area``) as the report's frame, called malignant when ``prob > threshold``
    (:func:`bus_mtl.training.metrics.malignant_calls`, the test step's rule)."""
    from bus_mtl.training.metrics import malignant_calls

    pred = pd.read_csv(path, dtype={"id": str})
    return _frame_from_predictions(pred, threshold, groups, malignant_calls)


def _frame_from_predictions(
    pred: pd.DataFrame,
    threshold: float | np.ndarray,
    groups: Mapping[str, str] | None,
    malignant_calls: Callable[..., Any],
) -> pd.DataFrame:
    n = len(pred)
    probs = pred["prob"].to_numpy(dtype=float) if "prob" in pred else np.full(n, np.nan)
    t = np.broadcast_to(np.asarray(threshold, dtype=float), (n,)).copy()
    calls = malignant_calls(np.nan_to_num(probs, nan=-1.0), t).cpu().numpy().astype(bool)
    ids = pred["id"].astype(str)

    def col(name: str, default: Any = np.nan) -> Any:
        return pred[name] if name in pred else default

    frame = pd.DataFrame(
        {
            "id": ids,
            "label": pred["label"].astype(int),
            "probability": probs,
            "threshold": t,
            "call": calls,
            "dice": col("dice"),
            "iou": col("iou"),
            "hd95": col("hd95"),
            "uncertainty": col("uncertainty"),
            "centre": col("centre", "").fillna("").astype(str) if "centre" in pred else "",
            "group": [(groups or {}).get(i, "") for i in ids],
            "image": "",
            "fold": pred["fold"].astype(int) if "fold" in pred else -1,
        }
    )
    return frame[list(FRAME_COLUMNS)]


def result_from_frame(
    name: str,
    frame: pd.DataFrame,
    logged: Mapping[str, float] | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
    grouped: bool = False,
) -> ResultSet:
    """A :class:`ResultSet` from a per-image frame: point values as ``logged`` (a run's
    test metrics) where given, else from the frame (:func:`frame_metrics`); intervals
    bootstrapped from the frame (:func:`bus_mtl.experiments.evaluate.bootstrap_intervals`)."""
    metrics = frame_metrics(frame)
    from_log = [k for k in METRIC_ROWS if logged and logged.get(k) is not None]
    for key in from_log:
        metrics[key] = float(logged[key])
    cis, boot = frame_intervals(frame, n_boot, seed)
    metrics.update({f"{k}_ci": cis.get(k) for k in CI_METRICS})
    unit = (
        f"{boot['n_units']} units (near-duplicate groups of split.json; other images alone)"
        if grouped and boot["unit"] == "group"
        else f"{boot['n_units']} images"
    )
    ci_source = (
        f"bootstrapped here from the per-image CSV: {boot['n_resamples']} percentile "
        f"resamples over {unit}, seed {boot['seed']}"
    )
    notes = []
    if from_log:
        notes.append(
            "Point values: the run's logged test metrics (metrics.csv); intervals: "
            "bootstrap of its per-image CSV."
        )
    return ResultSet(name, frame, metrics, ci_source=ci_source, notes=notes)


def frame_metrics(frame: pd.DataFrame) -> dict[str, Any]:
    """The metrics of a frame: classification by
    :func:`bus_mtl.training.metrics.binary_metrics` (each row at its own threshold, as
    ``bus-mtl cv`` pools folds), Dice/IoU/HD95 as per-image means ignoring NaN."""
    from bus_mtl.training.metrics import binary_metrics

    labels = frame["label"].to_numpy()
    probs = frame["probability"].to_numpy(dtype=float)
    out: dict[str, Any] = {
        "n": int(len(frame)),
        "n_malignant": int((labels == 1).sum()),
    }
    for key in ("dice", "iou", "hd95"):
        v = frame[key].to_numpy(dtype=float)
        out[key] = float(np.nanmean(v)) if np.isfinite(v).any() else math.nan
    keep = np.isin(labels, (0, 1)) & np.isfinite(probs)
    if keep.any():
        values = binary_metrics(
            probs[keep], labels[keep], calls=frame["call"].to_numpy(dtype=bool)[keep]
        )
        out.update({k: float(v) for k, v in values.items()})
    thresholds = np.unique(frame["threshold"].to_numpy(dtype=float))
    out["threshold"] = float(thresholds[0]) if thresholds.size == 1 else math.nan
    return out


def frame_intervals(
    frame: pd.DataFrame, n_boot: int = N_BOOT, seed: int = 0
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """95 % percentile bootstrap intervals of a frame's metrics (groups as units)."""
    groups = frame["group"].to_numpy(dtype=object)
    return bootstrap_intervals(
        frame["label"].to_numpy(),
        frame["probability"].to_numpy(dtype=float),
        frame["call"].to_numpy(dtype=bool),
        {k: frame[k].to_numpy(dtype=float) for k in ("dice", "iou")},
        groups if any(g for g in groups) else None,
        n_boot=n_boot,
        seed=seed,
    )


def _split_groups(path: Path) -> dict[str, str] | None:
    if not path.is_file():
        return None
    from bus_mtl.experiments.compare import read_groups

    return read_groups(path) or None


def _config_samples(config: Path) -> Callable[[], dict[str, Any]] | None:
    """The samples of a LightningCLI ``config.yaml``'s data section, by id."""
    if not config.is_file():
        return None

    def load() -> dict[str, Any]:
        from bus_mtl.experiments.cv import build_datamodule

        return {s.id: s for s in build_datamodule([str(config)]).source.samples()}

    return load


def _run_provenance(
    folder: Path, config: Mapping[str, Any], ckpt: Path | None
) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    budget = folder / "budget.json"
    if budget.is_file() and (folder / "config.yaml").is_file():
        from bus_mtl.training.budget import reproduce_command

        record = _json(budget)
        rows.append(
            ("command", reproduce_command(["--config", str(folder / "config.yaml")], record))
        )
        rows.append(
            (
                "time budget",
                f"{record.get('epochs_run', '?')} epoch(s) in "
                f"{float(record.get('elapsed_s', 0)) / 60:.1f} of {record.get('minutes', '?')} min",
            )
        )
    elif (folder / "config.yaml").is_file():
        rows.append(("command", f"bus-mtl fit --config {folder / 'config.yaml'}"))
    else:
        rows.append(("command", "not recorded"))
    data = config.get("data") or {}
    model = config.get("model") or {}
    trainer = config.get("trainer") or {}
    net = model.get("net") or {}
    rows.append(
        (
            "model",
            f"{net.get('class_path', '?')} {json.dumps(net.get('init_args') or {})}, TTA {model.get('tta', 'none')}",
        )
    )
    rows.append(("checkpoint", str(ckpt) if ckpt is not None else "none found in checkpoints/"))
    rows.append(("data", _sources_text(data.get("sources"))))
    rows.append(("split", _split_text(folder / "split.json", data)))
    seed = config.get("seed_everything")
    rows.append(
        (
            "seed",
            f"seed_everything {seed}, data.seed {data.get('seed', '?')}"
            if seed is not None
            else "not recorded",
        )
    )
    rows.append(
        (
            "machine",
            f"accelerator {trainer.get('accelerator', '?')}, devices {trainer.get('devices', '?')}, "
            f"precision {trainer.get('precision', '?')}, {data.get('image_size', '?')} px "
            f"({data.get('resize', 'squash')}), batch {data.get('batch_size', '?')}"
            if trainer
            else "not recorded",
        )
    )
    rows.append(("date", _mtime(folder / "metrics.csv") or _mtime(ckpt) or "not recorded"))
    return rows


def _sources_text(sources: Any) -> str:
    items = sources if isinstance(sources, list) else [sources]
    parts = []
    for s in items:
        if isinstance(s, Mapping):
            args = s.get("init_args") or {}
            where = args.get("root") or args.get("csv") or ""
            parts.append(f"{str(s.get('class_path', '?')).rpartition('.')[2]} {where}".strip())
        elif s:
            parts.append(str(s))
    return ", ".join(parts) or "not recorded"


def _split_text(path: Path, data: Mapping[str, Any]) -> str:
    if not path.is_file():
        return f"{data.get('split', '?')}, fold {data.get('fold', '?')} (no split.json)"
    split = _json(path)
    fold = int(data.get("fold") or 0)
    folds = split.get("folds") or []
    sizes = ""
    if 0 <= fold < len(folds):
        part = folds[fold]
        sizes = ", " + ", ".join(f"{k} {len(part.get(k, []))}" for k in ("train", "val", "test"))
    return (
        f"{split.get('kind', '?')} (version {split.get('version', 1)}), seed "
        f"{split.get('seed', '?')}, {split.get('n_folds', '?')} fold(s), fold {fold}{sizes}; "
        f"{len(split.get('groups') or [])} near-duplicate groups (pHash distance <= "
        f"{split.get('dup_threshold', '?')}); file {path}"
    )


# ---------------------------------------------------------------------------------------------
# bus-mtl cv


def _cv_report(folder: Path, n_boot: int, seed: int, name: str | None = None) -> Report:
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
    groups = _split_groups(_cv_split(folder))
    thresholds = pred["threshold"].to_numpy(dtype=float)
    missing = ~np.isfinite(thresholds)
    thresholds = np.where(missing, 0.5, thresholds)
    frame = _frame_from_predictions(pred, thresholds, groups, malignant_calls)
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
    result.samples = _config_samples(config) if config is not None else None
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
            data = _json(p)
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
        data = _json(path)
    rows = []
    for metric, values in (data.get("metrics") or {}).items():
        folds = values.get("values") or []
        row = {
            "metric": metric,
            "mean": _float(values.get("mean")),
            "std": _float(values.get("std")),
            "pooled": _float((data.get("pooled") or {}).get(metric)),
        }
        row.update({f"fold {k}": _float(v) for k, v in enumerate(folds)})
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
        s = _json(split)
        rows.append(
            (
                "split",
                f"{s.get('kind', '?')} (version {s.get('version', 1)}), seed {s.get('seed', '?')}, "
                f"{len(s.get('folds') or [])} fold(s), {len(s.get('groups') or [])} near-duplicate "
                f"groups; file {split}",
            )
        )
    seeds = folder / "seeds.json"
    rows.append(("seed", json.dumps(_json(seeds)) if seeds.is_file() else "not recorded"))
    protocol = folder / "protocol.json"
    if not protocol.is_file():
        protocol = folder.parent / "protocol.json"
    if protocol.is_file():
        rows.append(("protocol", json.dumps(_json(protocol))))
    config = next(iter(sorted(folder.glob("fold_*/*/version_*/config.yaml"))), None)
    if config is not None:
        cfg = _yaml(config)
        trainer, data = cfg.get("trainer") or {}, cfg.get("data") or {}
        rows.append(("data", _sources_text(data.get("sources"))))
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
    rows.append(("date", _mtime(folder / "summary.json") or "not recorded"))
    return rows


# ---------------------------------------------------------------------------------------------
# bus-mtl compare


def _compare_report(folder: Path, n_boot: int, seed: int) -> Report:
    report = Report("compare", folder, f"Variant comparison: {folder.name}")
    md = folder / "compare.md"
    report.compare_md = md.read_text() if md.is_file() else ""
    png = folder / "compare.png"
    report.compare_png = png if png.is_file() else None
    stats = (
        _json(folder / "compare.json").get("statistics", {})
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
        s = _json(folder / "split.json")
        report.provenance.append(
            (
                "split",
                f"{s.get('kind', '?')}, seed {s.get('seed', '?')}, {len(s.get('folds') or [])} fold(s); file {folder / 'split.json'}",
            )
        )
    report.provenance.append(
        ("date", _mtime(folder / "compare.json") or _mtime(md) or "not recorded")
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
                        "The reference variant in full; the others are in the table and the ROC overlay.",
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


# ---------------------------------------------------------------------------------------------
# Small readers


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not readable JSON ({err})") from None
    return data if isinstance(data, dict) else {}


def _yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    import yaml

    data = yaml.safe_load(path.read_text())
    return data if isinstance(data, dict) else {}


def _column(frame: pd.DataFrame, name: str, default: Any) -> pd.Series:
    """``frame[name]``, or ``default`` in every row when the column is missing."""
    return frame[name] if name in frame else pd.Series(default, index=frame.index)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _mtime(path: Path | None) -> str:
    if path is None or not Path(path).exists():
        return ""
    stamp = dt.datetime.fromtimestamp(Path(path).stat().st_mtime).astimezone()
    return f"{stamp.isoformat(timespec='seconds')} (time of {Path(path).name})"


# ---------------------------------------------------------------------------------------------
# Per centre


def centre_table(result: ResultSet, n_boot: int = N_BOOT, seed: int = 0) -> pd.DataFrame | None:
    """One row per centre (``None`` with a single centre): n, malignant, Dice, AUC,
    sensitivity, specificity (:func:`frame_metrics`) and their bootstrap intervals
    (:func:`frame_intervals`), each centre on its own images."""
    centres = result.frame["centre"].fillna("").astype(str)
    names = sorted(c for c in centres.unique())
    if len(names) < 2:
        return None
    rows = []
    for name in names:
        part = result.frame[centres == name]
        values = frame_metrics(part)
        cis, _ = frame_intervals(part, n_boot, seed)
        row: dict[str, Any] = {
            "centre": name or "(none)",
            "n": values["n"],
            "malignant": values["n_malignant"],
        }
        for key in ("dice", "auc", "sensitivity", "specificity"):
            row[key] = values.get(key, math.nan)
            row[f"{key}_ci"] = cis.get(key)
        rows.append(row)
    return pd.DataFrame(rows)
