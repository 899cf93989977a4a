"""Where bus_mtl finds data and keeps its caches."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$BUS_MTL_CACHE``, else ``~/.cache/bus_mtl``. Never inside a data folder."""
    env = os.environ.get("BUS_MTL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "bus_mtl"


def _find_shared(env_var: str, name: str, start: str | Path | None) -> Path | None:
    """``$<env_var>``, else ``../shared/data/<name>`` relative to ``start`` (the current
    directory by default) or to the project root; ``None`` when none exists."""
    env = os.environ.get(env_var)
    if env:
        p = Path(env).expanduser()
        return p if p.is_dir() else None
    here = Path(start) if start is not None else Path.cwd()
    project = Path(__file__).resolve().parents[2]
    for base in (here, project):
        p = (base / ".." / "shared" / "data" / name).resolve()
        if p.is_dir():
            return p
    return None


def find_busi_root(start: str | Path | None = None) -> Path | None:
    """``$BUS_MTL_DATA``, else ``../shared/data/busi`` relative to ``start`` (the current
    directory by default) or to the project root; ``None`` when none exists."""
    return _find_shared("BUS_MTL_DATA", "busi", start)


#: The external test set's folder name under ``../shared/data`` (BrEaST-Lesions_USG).
EXTERNAL_NAME = "breast_lesions_usg"


def find_external_root(start: str | Path | None = None) -> Path | None:
    """The external test set (BrEaST-Lesions_USG, a folder holding ``manifest.csv``):
    ``$BUS_MTL_EXTERNAL``, else ``../shared/data/breast_lesions_usg`` relative to ``start``
    (the current directory by default) or to the project root; ``None`` when none exists."""
    return _find_shared("BUS_MTL_EXTERNAL", EXTERNAL_NAME, start)
