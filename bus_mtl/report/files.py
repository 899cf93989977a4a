"""Small readers shared by the folder readers: JSON / YAML files, numbers, file times, the
near-duplicate groups of a ``split.json``, the samples and sources of a ``config.yaml``,
the best checkpoint of a Lightning version folder."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file as a dict (``ValueError`` naming the file when unreadable)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not readable JSON ({err})") from None
    return data if isinstance(data, dict) else {}


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping file as a dict; ``{}`` when the file is missing or not a mapping."""
    if not path.is_file():
        return {}
    import yaml

    data = yaml.safe_load(path.read_text())
    return data if isinstance(data, dict) else {}


def column(frame: pd.DataFrame, name: str, default: Any) -> pd.Series:
    """``frame[name]``, or ``default`` in every row when the column is missing."""
    return frame[name] if name in frame else pd.Series(default, index=frame.index)


def as_float(value: Any) -> float:
    """``float(value)``, NaN for ``None`` and anything not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def file_time(path: Path | None) -> str:
    """A file's modification time, ISO 8601 and named as such; ``""`` without the file."""
    if path is None or not Path(path).exists():
        return ""
    stamp = dt.datetime.fromtimestamp(Path(path).stat().st_mtime).astimezone()
    return f"{stamp.isoformat(timespec='seconds')} (time of {Path(path).name})"


def split_groups(path: Path) -> dict[str, str] | None:
    if not path.is_file():
        return None
    from bus_mtl.experiments.compare import read_groups

    return read_groups(path) or None


def config_samples(config: Path) -> Callable[[], dict[str, Any]] | None:
    """The samples of a LightningCLI ``config.yaml``'s data section, by id."""
    if not config.is_file():
        return None

    def load() -> dict[str, Any]:
        from bus_mtl.experiments.cv import build_datamodule

        return {s.id: s for s in build_datamodule([str(config)]).source.samples()}

    return load


def sources_text(sources: Any) -> str:
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


def find_best_checkpoint(folder: Path) -> Path | None:
    """``checkpoints/best-*.ckpt`` (the newest when several), else ``last.ckpt``."""
    best = sorted(folder.glob("checkpoints/best*.ckpt"), key=lambda p: p.stat().st_mtime)
    if best:
        return best[-1]
    last = folder / "checkpoints" / "last.ckpt"
    return last if last.is_file() else None
