"""Where the YAML presets are found, by name, and which option loads each kind.

The presets are written once, in the project's top-level ``experiments/`` folder (the place a
user reads, copies and runs them from). A wheel carries them as the package data of
``bus_mtl.presets`` (``package-dir`` maps that package to ``experiments/`` in
``pyproject.toml``), so an installed package finds them in ``bus_mtl/presets/``; a checkout,
installed editable or only on ``sys.path``, finds them in ``experiments/`` itself.
``preset("recipes/cpu.yaml")`` finds one; on the command line, ``--config
preset:recipes/cpu.yaml`` names one, and an ``experiments/<name>`` path that does not exist
from the current folder falls back to the packaged preset (see :func:`resolve_args`).

Two kinds of preset, each with its own option: config files (``trainer``/``model``/``data``
sections) go with ``--config``; a component preset (one ``class_path``) with the option of
what it is, ``--model.net`` for a net and ``--data.sources`` for a data source
(:data:`COMPONENT_OPTIONS`). :func:`check_config_options` refuses a component preset given
with ``--config``, naming the option that loads it.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

PACKAGE = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE.parent


def _presets_dir() -> Path:
    """``bus_mtl/presets`` of an installed wheel, else the checkout's ``experiments/``."""
    packaged = PACKAGE / "presets"
    return packaged if packaged.is_dir() else PROJECT_ROOT / "experiments"


PRESETS = _presets_dir()

PREFIX = "preset:"
# Options whose value is a preset file or folder: a path missing from the current folder
# that names a preset (``experiments/base.yaml``, ``base.yaml``) falls back to it.
PATH_OPTIONS = (
    "--config",
    "-c",
    "--model.net",
    "--data.sources",
    "--trainer.callbacks",
    "--variant-config",
    "--variants-dir",
)


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


# Where a component preset goes, by what its class is.
COMPONENT_OPTIONS = {"net": "--model.net", "sources": "--data.sources"}


def _import_class(class_path: str, where: str) -> type:
    module_name, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"{where}: class_path {class_path!r} cannot be imported ({err})") from err


def component_kind(path: str | Path) -> str | None:
    """``"net"`` or ``"sources"`` when ``path`` is a component preset (a YAML mapping with a
    top-level ``class_path``), ``None`` for a config file or a path that is not a readable
    YAML file (left for the parser to report). ``ValueError`` naming the file for a
    ``class_path`` that is neither a ``torch.nn.Module`` nor a ``bus_mtl.data.Source``."""
    try:
        data: Any = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(data, dict) or "class_path" not in data:
        return None
    cls = _import_class(str(data["class_path"]), str(path))
    from torch import nn

    from bus_mtl.data.sources.base import Source

    if isinstance(cls, type) and issubclass(cls, nn.Module):
        return "net"
    if isinstance(cls, type) and issubclass(cls, Source):
        return "sources"
    raise ValueError(
        f"{path}: class_path {data['class_path']!r} is neither a net (torch.nn.Module, give it "
        "with --model.net) nor a data source (bus_mtl.data.Source, --data.sources); a config "
        "file has trainer/model/data sections instead"
    )


def config_args(path: str | Path) -> list[str]:
    """The options that load ``path``: ``["--config", path]`` for a config file,
    ``["--model.net", path]`` for a net preset, ``["--data.sources", path]`` for a source."""
    kind = component_kind(path)
    return [COMPONENT_OPTIONS[kind] if kind else "--config", str(path)]


_KIND_NAMES = {"net": "net", "sources": "data source"}


def check_config_file(path: str | Path, option: str = "--config") -> None:
    """``ValueError`` (one line, naming the option that loads it) when ``path``, given with
    ``option``, is a net or data-source preset rather than a config file."""
    kind = component_kind(path)
    if kind:
        raise ValueError(
            f"{option} {path}: a {_KIND_NAMES[kind]} preset, not a config file; give it with "
            f"{COMPONENT_OPTIONS[kind]} {path}"
        )


def check_config_options(argv: Sequence[str]) -> None:
    """:func:`check_config_file` on every ``--config``/``-c`` value of ``argv`` (``--config
    FILE`` or ``--config=FILE``)."""
    for i, arg in enumerate(argv):
        option, eq, value = arg.partition("=")
        if eq and option in ("--config", "-c"):
            check_config_file(value, option)
        elif arg in ("--config", "-c") and i + 1 < len(argv):
            check_config_file(argv[i + 1], arg)
