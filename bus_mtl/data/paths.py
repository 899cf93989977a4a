"""Where bus_mtl finds data and keeps its caches."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$BUS_MTL_CACHE``, else ``~/.cache/bus_mtl``. Never inside a data folder."""
    env = os.environ.get("BUS_MTL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "bus_mtl"


def find_busi_root(start: str | Path | None = None) -> Path | None:
    """``$BUS_MTL_DATA``, else ``../shared/data/busi`` relative to ``start`` (the current
    directory by default) or to the project root; ``None`` when none exists."""
    env = os.environ.get("BUS_MTL_DATA")
    if env:
        p = Path(env).expanduser()
        return p if p.is_dir() else None
    here = Path(start) if start is not None else Path.cwd()
    project = Path(__file__).resolve().parents[2]
    for base in (here, project):
        p = (base / ".." / "shared" / "data" / "busi").resolve()
        if p.is_dir():
            return p
    return None
