"""Where the YAML presets are found, by name.

The presets are written once, in the project's top-level ``experiments/`` folder (the place a
user reads and copies them from). ``bus_mtl/presets`` is a symbolic link to that folder, so
the package sees them in a git checkout and in an editable install, and a wheel build copies
the YAML files it reaches through the link into ``bus_mtl/presets/`` (``package-data`` in
``pyproject.toml``): an installed package carries its presets without a second copy in the
repository. ``preset("recipes/cpu.yaml")`` finds one; on the command line,
``--config preset:recipes/cpu.yaml`` names one, and a ``--config experiments/<name>`` that
does not exist from the current folder falls back to the packaged preset (see
:func:`resolve_args`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE.parent


def _presets_dir() -> Path:
    """``bus_mtl/presets`` (a wheel's copy, or the checkout's link to ``experiments/``), else
    the checkout's ``experiments/`` (a checkout made without symbolic links)."""
    packaged = PACKAGE / "presets"
    if packaged.is_dir():
        return packaged.resolve()
    return PROJECT_ROOT / "experiments"


PRESETS = _presets_dir()
EXPERIMENTS = PRESETS  # the name this module used before the presets shipped in the package

PREFIX = "preset:"
# Options whose value is a preset file or folder: a path missing from the current folder
# that names a preset (``experiments/base.yaml``, ``base.yaml``) falls back to it.
PATH_OPTIONS = ("--config", "-c", "--variant-config", "--variants-dir")


def available() -> list[str]:
    """Every YAML preset, by name (``"base.yaml"``, ``"recipes/cpu.yaml"``, …)."""
    return sorted(p.relative_to(PRESETS).as_posix() for p in PRESETS.rglob("*.yaml"))


def _preset_name(name: str) -> str:
    name = name.removeprefix(PREFIX).replace("\\", "/").lstrip("/")
    return name.removeprefix("experiments/")


def preset(name: str) -> Path:
    """The preset ``name`` (e.g. ``"recipes/cpu.yaml"``; ``experiments/`` and ``preset:``
    prefixes allowed); ``FileNotFoundError`` naming it and the presets there are."""
    path = PRESETS / _preset_name(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"config preset {name!r} not found under {PRESETS}; available: {available()}"
        )
    return path


def resolve(value: str, *, fallback: bool = True) -> str:
    """A command-line path, with presets named: ``preset:NAME`` is the preset ``NAME``; with
    ``fallback``, a path that does not exist here but names a preset file or folder (e.g.
    ``experiments/base.yaml`` run outside a checkout) is that preset; anything else is kept."""
    if value.startswith(PREFIX):
        name = _preset_name(value)
        if name and (PRESETS / name).is_dir():
            return str(PRESETS / name)
        return str(preset(name))
    if not fallback or not value or Path(value).exists():
        return value
    name = _preset_name(value)
    if name and (PRESETS / name).exists():
        return str(PRESETS / name)
    return value


def resolve_args(argv: Sequence[str]) -> list[str]:
    """``argv`` with presets named: every ``preset:NAME`` value (``--opt preset:NAME`` or
    ``--opt=preset:NAME``) and every missing path given to a :data:`PATH_OPTIONS` option that
    names a preset become the preset's full path."""
    out: list[str] = []
    after_path_option = False
    for arg in argv:
        if after_path_option:
            out.append(resolve(arg))
            after_path_option = False
            continue
        option, eq, value = arg.partition("=")
        if eq and option.startswith("-"):
            out.append(f"{option}={resolve(value, fallback=option in PATH_OPTIONS)}")
            continue
        after_path_option = arg in PATH_OPTIONS
        out.append(resolve(arg, fallback=False))
    return out
