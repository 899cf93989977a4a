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

from pathlib import Path

from bus_mtl.experiments.evaluate import N_BOOT, SCHEMA
from bus_mtl.report.cv_folder import compare_report, cv_report
from bus_mtl.report.evaluate_folder import evaluate_report
from bus_mtl.report.files import read_json
from bus_mtl.report.result_set import Report
from bus_mtl.report.run_folder import run_report

KINDS = ("evaluate", "run", "cv", "compare")


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
    if metrics.is_file() and read_json(metrics).get("schema") == SCHEMA:
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
    reader = {
        "evaluate": evaluate_report,
        "run": run_report,
        "cv": cv_report,
        "compare": compare_report,
    }
    return reader[kind](folder, n_boot, seed)
