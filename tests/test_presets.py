"""The YAML presets: found by name, named on the command line, and shipped in the wheel.

The slow test builds the wheel from a copy of the sources, installs it alone (``--no-deps``)
into a fresh virtual environment that borrows the dependencies of this one through a
``.pth`` line (nothing is downloaded, torch is not reinstalled), and runs a one-batch
``bus-mtl main`` from an unrelated folder: the package and its presets come from the wheel,
not from this source tree.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import venv
import zipfile
from pathlib import Path

import pytest

from bus_mtl import configs
from bus_mtl.cli.main import main as bus_mtl

PROJECT = Path(__file__).resolve().parents[1]


def test_presets_are_the_experiments_folder():
    """One copy of each file: in a checkout the package's presets are ``experiments/``
    itself (a wheel carries them as ``bus_mtl/presets``, see the wheel test)."""
    assert configs.PRESETS == (PROJECT / "experiments").resolve()
    assert configs.preset("recipes/cpu.yaml") == configs.PRESETS / "recipes" / "cpu.yaml"
    assert configs.preset("experiments/base.yaml") == configs.PRESETS / "base.yaml"
    assert configs.preset("preset:data/synthetic.yaml").is_file()
    names = configs.available()
    assert {"base.yaml", "recipes/cpu.yaml", "recipes/gpu.yaml", "data/busi.yaml"} <= set(names)
    assert all(n.endswith(".yaml") for n in names)
    with pytest.raises(FileNotFoundError, match="recipes/cpu.yaml"):
        configs.preset("recipes/nope.yaml")


def test_experiments_holds_no_python_module():
    """``experiments/`` is the package data of ``bus_mtl.presets``: a module there would ship
    in the wheel as ``bus_mtl.presets.<name>``. Scripts live in the package
    (``bus-mtl bench ...``); shell scripts may stay."""
    modules = sorted(p.relative_to(PROJECT).as_posix() for p in configs.PRESETS.rglob("*.py"))
    assert not modules, f"{modules}: move them into bus_mtl (e.g. bus_mtl/benchmarks/)"


def test_pyproject_ships_every_subpackage_and_the_presets():
    """``pyproject.toml`` lists the packages by name (``package-dir`` maps
    ``bus_mtl.presets`` onto ``experiments/``): a new subpackage must be added there."""
    tomllib = pytest.importorskip("tomllib")
    setup = tomllib.loads((PROJECT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {
        ".".join(p.parent.relative_to(PROJECT).parts)
        for p in (PROJECT / "bus_mtl").rglob("__init__.py")
    }
    assert set(setup["packages"]) == found | {"bus_mtl.presets"}
    assert setup["package-dir"] == {"bus_mtl.presets": "experiments"}
    assert setup["package-data"] == {"bus_mtl.presets": ["*.yaml", "**/*.yaml"]}


def test_resolve_args_names_presets(tmp_path, monkeypatch):
    here = configs.resolve_args(["--config", "experiments/base.yaml"])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text("trainer: {}\n")
    base = str(configs.PRESETS / "base.yaml")
    variants = str(configs.PRESETS / "variants")
    argv = [
        "--config", "experiments/base.yaml",  # missing here: the packaged preset
        "--config=preset:recipes/cpu.yaml",
        "-c", "mine.yaml",  # an existing file stays as given
        "--config", "nope.yaml",  # neither: left for the parser to report
        "--variants-dir", "experiments/variants",
        "--variant-config", "variants/segresnet.yaml",
        "--out", "experiments/base.yaml",  # not a config option: untouched
        "preset:sweeps/variant.yaml",
    ]  # fmt: skip
    assert configs.resolve_args(argv) == [
        "--config", base,
        f"--config={configs.PRESETS / 'recipes' / 'cpu.yaml'}",
        "-c", "mine.yaml",
        "--config", "nope.yaml",
        "--variants-dir", variants,
        "--variant-config", str(configs.PRESETS / "variants" / "segresnet.yaml"),
        "--out", "experiments/base.yaml",
        str(configs.PRESETS / "sweeps" / "variant.yaml"),
    ]  # fmt: skip
    # From the project root the documented relative paths are kept as they are.
    assert here == ["--config", "experiments/base.yaml"]


# Config files that are composed with each other (README, recipes, main job).
COMPOSED = [
    ("base.yaml", "recipes/cpu.yaml"),
    ("base.yaml", "recipes/gpu.yaml"),
    ("base.yaml", "busi_5fold.yaml"),
]


def _load(name: str):
    import yaml

    return yaml.safe_load(configs.preset(name).read_text())


def _leaves(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _subtrees(node):
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        yield from _subtrees(child)


def test_presets_restate_nothing():
    """Each setting is written once: a recipe or override restates no value of base.yaml,
    and no config file inlines a component preset (a net, a data source, the callback list)
    instead of naming it by path."""
    for first, later in COMPOSED:
        a, b = _leaves(_load(first)), _leaves(_load(later))
        # A class_path may repeat: a file that sets a component's init_args names its class
        # so that it also composes on configs that have none (recipes on quickstart.yaml).
        same = sorted(
            k for k in a.keys() & b.keys() if a[k] == b[k] and not k.endswith(".class_path")
        )
        assert not same, f"{later} restates {first}: {same}"
    components = {
        n: _load(n)
        for n in configs.available()
        if n.startswith("trainer/") or configs.component_kind(configs.preset(n))
    }
    assert {"trainer/callbacks.yaml", "variants/seg_features_effnet.yaml", "data/busi.yaml"} <= set(
        components
    )
    for name in configs.available():
        if name in components or name.startswith("sweeps/"):
            continue
        for sub in _subtrees(_load(name)):
            for cname, content in components.items():
                assert sub != content, f"{name} copies {cname}: name the file instead"
    assert _load("base.yaml")["model"]["net"] == "variants/seg_features_effnet.yaml"
    assert _load("base.yaml")["trainer"]["callbacks"] == "trainer/callbacks.yaml"


def test_component_presets_load_with_their_option(tmp_path, capsys):
    net = str(configs.preset("variants/smp_unet.yaml"))
    busi = str(configs.preset("data/busi.yaml"))
    base = str(configs.preset("base.yaml"))
    assert configs.config_args(net) == ["--model.net", net]
    assert configs.config_args(busi) == ["--data.sources", busi]
    assert configs.config_args(base) == ["--config", base]
    assert configs.config_args(tmp_path / "missing.yaml")[0] == "--config"  # parser reports it
    # --config takes config files only: a component preset there is one line naming the
    # option that loads it.
    configs.check_config_options(["fit", "--config", base, "--model.net", net])
    with pytest.raises(ValueError) as err:
        configs.check_config_options(["fit", "--config", base, f"--config={busi}"])
    assert str(err.value) == (
        f"--config {busi}: a data source preset, not a config file; give it with "
        f"--data.sources {busi}"
    )
    with pytest.raises(ValueError, match=re.escape(f"give it with --model.net {net}")):
        configs.check_config_options(["fit", "-c", net])
    odd = tmp_path / "odd.yaml"
    odd.write_text("class_path: collections.OrderedDict\n")
    with pytest.raises(ValueError, match="odd.yaml.*neither a net"):
        configs.component_kind(odd)
    typo = tmp_path / "typo.yaml"
    typo.write_text("class_path: bus_mtl.models.NoSuchNet\n")
    with pytest.raises(ValueError, match="typo.yaml.*NoSuchNet"):
        configs.component_kind(typo)


def test_component_presets_compose_with_their_options(monkeypatch, capsys):
    """``--data.sources``/``--model.net`` compose in order with config files; names in a
    preset are relative to it, not to the current folder. The same presets given with
    ``--config`` are refused in one line naming the option."""
    from bus_mtl.cli.lightning import build_cli

    monkeypatch.chdir("/")
    names = {n: str(configs.preset(n)) for n in ("base.yaml", "data/synthetic.yaml",
             "recipes/cpu.yaml", "variants/shared_encoder.yaml")}  # fmt: skip
    argv = [
        "--config", names["base.yaml"],
        "--data.sources", names["data/synthetic.yaml"],
        "--config", names["recipes/cpu.yaml"],
        "--model.net", names["variants/shared_encoder.yaml"],
    ]  # fmt: skip
    cli = build_cli([*argv, "--trainer.logger=false"], run=False)
    assert type(cli.model.net).__name__ == "SharedEncoder"
    assert type(cli.datamodule.source).__name__ == "SyntheticSource"
    callbacks = [type(c).__name__ for c in cli.trainer.callbacks]
    assert {"TemperatureCalibration", "TimeBudget", "ModelCheckpoint"} <= set(callbacks)
    old = ["fit", "--config", names["base.yaml"], "--config", names["data/synthetic.yaml"]]
    capsys.readouterr()
    assert bus_mtl(old) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"give it with --data.sources {names['data/synthetic.yaml']}" in err


def test_presets_command(capsys):
    assert bus_mtl(["presets"]) == 0
    out = capsys.readouterr().out
    (line,) = [x for x in out.splitlines() if x.startswith("recipes/cpu.yaml ")]
    assert line.split()[-1] == str(configs.PRESETS / "recipes" / "cpu.yaml")
    assert bus_mtl(["presets", "data/busi.yaml"]) == 0
    assert capsys.readouterr().out.strip() == str(configs.PRESETS / "data" / "busi.yaml")
    assert bus_mtl(["presets", "nope.yaml"]) == 2
    assert bus_mtl(["fit", "--config", "preset:nope.yaml"]) == 2
    assert "not found" in capsys.readouterr().err


def _copy_sources(dest: Path) -> Path:
    """What a wheel is built from (not the venv, runs or results of this checkout)."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(PROJECT / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("bus_mtl", "experiments"):
        shutil.copytree(PROJECT / name, dest / name, symlinks=True, ignore=ignore)
    return dest


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> str:
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{out[-4000:]}"
    return out


@pytest.mark.slow
def test_wheel_carries_the_package_and_its_presets(tmp_path):
    start = time.perf_counter()
    # 1. The wheel, built offline with this environment's setuptools.
    src = _copy_sources(tmp_path / "src")
    dist = tmp_path / "dist"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(dist), str(src)],
        tmp_path, dict(os.environ),
    )  # fmt: skip
    (wheel,) = dist.glob("bus_mtl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in configs.available():
        assert f"bus_mtl/presets/{name}" in names
    shipped = [n for n in names if n.startswith("bus_mtl/presets/")]
    assert all(n.endswith(".yaml") for n in shipped), "only YAML presets ship, no script"
    # Every module of the package (pyproject.toml lists its subpackages by name).
    modules = {p.relative_to(PROJECT).as_posix() for p in (PROJECT / "bus_mtl").rglob("*.py")}
    assert not modules - names, f"missing from the wheel: {sorted(modules - names)}"

    # 2. A fresh environment: the wheel alone, its dependencies borrowed from this one.
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    env_vars = {"base": str(env_dir), "platbase": str(env_dir)}
    site = Path(sysconfig.get_path("purelib", vars=env_vars))
    ours = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    # A plain path line: this environment's .pth files (the editable install's finder) are
    # not processed, so only the wheel's bus_mtl can be imported.
    (site / "_borrowed_dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "-q", str(wheel)],
        tmp_path, dict(os.environ),
    )  # fmt: skip

    # 3. From an unrelated folder, without the source tree on the path.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    env.update(
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        BUS_MTL_DATA=str(tmp_path / "no_busi"),
        PYTHONNOUSERSITE="1",
    )
    where = _run(
        [str(python), "-c", "import bus_mtl, bus_mtl.configs as c; "
         "print(bus_mtl.__file__); print(c.preset('recipes/cpu.yaml'))"],
        elsewhere, env,
    ).split()  # fmt: skip
    assert Path(where[0]).is_relative_to(env_dir), where
    assert Path(where[1]).is_relative_to(site / "bus_mtl" / "presets"), where
    assert not Path(where[0]).resolve().is_relative_to(PROJECT)

    script = env_dir / ("Scripts/bus-mtl.exe" if os.name == "nt" else "bin/bus-mtl")
    # The README's relative preset paths, and preset:NAME, work outside a checkout too.
    printed = _run(
        [str(script), "fit", "--config", "experiments/quickstart.yaml",
         "--config", "preset:recipes/cpu.yaml", "--print_config"],
        elsewhere, env,
    )  # fmt: skip
    assert "efficientnet-lite0" in printed, printed[-4000:]
    out = _run(
        [str(script), "main", "--data", "synthetic", "--synthetic-n", "16",
         "--image-size", "64", "--max-epochs", "1", "--limit-batches", "1",
         "--accelerator", "cpu", "--root", str(tmp_path / "runs")],
        elsewhere, env,
    )  # fmt: skip
    assert "bus-mtl main: done" in out and "test/dice" in out, out[-4000:]
    assert list((tmp_path / "runs").rglob("*.ckpt"))
    print(f"wheel check: {time.perf_counter() - start:.0f} s")
