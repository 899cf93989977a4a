"""The package's layers only point down.

    cli, benchmarks  (top: command-line entry points and benchmark scripts; they may import
         |            every layer and each other, and nothing imports them)
    report           (HTML reports of the folders the commands write)
         |
    experiments      (cross-validation, comparisons, sweeps)
         |
    training   inference   (inference is the deployment side: it must run without Lightning,
         |      |           so it rebuilds nets through bus_mtl.models.rebuild, not training)
    configs          (where presets are found; reads data sources' class paths)
         |
    models           (the model zoo, recording and rebuilding nets)
         |
    data             (sources, splits, the datamodule)

Every ``import`` of every module counts, those inside functions too (the lazy ones are the
easiest to add by accident), and so do module paths written as strings for
``importlib.import_module`` (the lazy ``__getattr__`` maps of the package ``__init__``s).
The root package ``bus_mtl`` (``__version__``) imports nothing, so every layer may use it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bus_mtl"
TOP = {"cli", "benchmarks"}
# What each layer may import besides itself and the root package; the top may import all.
ALLOWED: dict[str, set[str]] = {
    "data": set(),
    "models": {"data"},
    "configs": {"data", "models"},
    "training": {"models", "data", "configs"},
    "inference": {"models", "data", "configs"},
    # experiments sits above training and inference alike: both point down from it.
    "experiments": {"training", "inference", "models", "data", "configs"},
    "report": {"experiments", "training", "inference", "models", "data", "configs"},
}


def _module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> str:
    """``bus_mtl.training.module`` -> ``training``; the root package -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _is_module_path(text: str, root: Path = PACKAGE) -> bool:
    """True when ``text`` names a module or package of bus_mtl (not a class path)."""
    parts = text.split(".")
    if parts[0] != "bus_mtl" or not all(p.isidentifier() for p in parts):
        return False
    where = root.parent.joinpath(*parts)
    return where.with_suffix(".py").is_file() or (where / "__init__.py").is_file()


def imports_of(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """``(line, module)`` of every bus_mtl import in ``path``: ``import``/``from`` statements
    anywhere (relative ones resolved) and module-path string constants."""
    module = _module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # "from bus_mtl import training" imports the sub-package, not just the root.
            names = [f"{target}.{a.name}" for a in node.names]
            subpackages = [n for n in names if _is_module_path(n, root)]
            found += [(node.lineno, n) for n in subpackages] or [(node.lineno, target)]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if _is_module_path(node.value, root):
                found.append((node.lineno, node.value))
    return [(line, name) for line, name in found if name.split(".")[0] == "bus_mtl"]


def violations(path: Path, root: Path = PACKAGE) -> list[str]:
    """One line per import of ``path`` (a file under ``root``, the bus_mtl folder) that
    points to a layer its own may not import."""
    module = _module_name(path, root)
    layer = _layer(module)
    if layer in TOP:
        return []
    allowed = {layer, ""} | ALLOWED.get(layer, set()) if layer else {""}
    rel = path.relative_to(root.parent)
    return [
        f"{rel}:{line}: {module} ({layer or 'root'} layer) imports {target} "
        f"({_layer(target)} layer); {layer or 'the root package'} may import only "
        f"{sorted(name or 'bus_mtl' for name in allowed)}"
        for line, target in imports_of(path, root)
        if _layer(target) not in allowed
    ]


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_layer_is_known():
    layers = {_layer(_module_name(p)) for p in SOURCES} - {""}
    assert layers <= TOP | set(ALLOWED), (
        f"new top-level part of bus_mtl: {sorted(layers - TOP - set(ALLOWED))}; give it a "
        "place in ALLOWED (or TOP) of tests/test_layers.py"
    )


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_imports_point_down(path):
    bad = violations(path)
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """An import inside a function, a relative one and a lazy-map string are all caught."""
    fake = tmp_path / "bus_mtl"
    for layer in ("models", "training", "inference"):
        (fake / layer).mkdir(parents=True)
        (fake / layer / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "training" / "checkpoint.py").write_text("")
    probe = fake / "inference" / "probe.py"
    probe.write_text(
        "def f():\n"
        "    from bus_mtl.training import checkpoint\n"
        "    from ..training.checkpoint import load_net\n"
        "_LAZY = {'x': 'bus_mtl.training.checkpoint', 'cls': 'bus_mtl.models.SMPUnet'}\n"
    )
    found = violations(probe, root=fake)
    assert [v.split(": ", 1)[0] for v in found] == [
        "bus_mtl/inference/probe.py:2",
        "bus_mtl/inference/probe.py:3",
        "bus_mtl/inference/probe.py:4",
    ]
    assert "imports bus_mtl.training.checkpoint (training layer)" in found[0]
