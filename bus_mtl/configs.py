"""Where the YAML presets (``experiments/``) are found, by name."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = PROJECT_ROOT / "experiments"


def preset(name: str) -> Path:
    """``experiments/<name>`` (e.g. ``"recipes/cpu.yaml"``); ``FileNotFoundError`` naming it."""
    path = EXPERIMENTS / name
    if not path.is_file():
        available = sorted(str(p.relative_to(EXPERIMENTS)) for p in EXPERIMENTS.rglob("*.yaml"))
        raise FileNotFoundError(
            f"config preset {name!r} not found under {EXPERIMENTS}; available: {available}"
        )
    return path
