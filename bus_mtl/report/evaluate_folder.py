"""A ``bus-mtl evaluate`` folder (``metrics.json`` with schema ``bus_mtl.evaluate/1``,
``per_image.csv``, ``roc.png``, ``reliability.png``, ``referral.png``): its metrics and
intervals as stored, its per-image rows, its model, and the samples its ``data`` record
names (for the gallery's ground truth)."""

from __future__ import annotations

import math
import shlex
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bus_mtl.experiments.evaluate import CI_METRICS
from bus_mtl.report.files import as_float, column, read_json
from bus_mtl.report.result_set import FRAME_COLUMNS, METRIC_ROWS, Report, ResultSet


def evaluate_report(folder: Path, n_boot: int, seed: int) -> Report:
    """The :class:`Report` of a ``bus-mtl evaluate`` folder (nothing is bootstrapped again:
    ``n_boot``/``seed`` serve the per-centre intervals only)."""
    result = read_evaluate(folder)
    m = read_json(folder / "metrics.json")
    report = Report("evaluate", folder, f"Evaluation: {result.name}", sets=[result])
    report.provenance = _evaluate_provenance(m)
    return report


def read_evaluate(folder: Path, name: str | None = None) -> ResultSet:
    """A ``bus-mtl evaluate`` folder as a :class:`ResultSet`: its metrics and intervals as
    stored, its per-image CSV, its model and the samples its ``data`` record names."""
    m = read_json(folder / "metrics.json")
    per_image = pd.read_csv(folder / "per_image.csv", dtype={"id": str, "group": str})
    threshold = as_float(m.get("threshold"))
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
            "uncertainty": column(per_image, "uncertainty", np.nan).astype(float),
            "centre": column(per_image, "centre", "").fillna("").astype(str),
            "group": column(per_image, "group", "").fillna("").astype(str),
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
