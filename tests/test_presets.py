"""The YAML presets: found by name, named on the command line, and shipped in the wheel.

The slow test builds the wheel from a copy of the sources, installs it alone (``--no-deps``)
into a fresh virtual environment that borrows the dependencies of this one through a
``.pth`` line (nothing is downloaded, torch is not reinstalled), and runs a one-batch
``bus-mtl main`` from an unrelated folder: the package and its presets come from the wheel,
not from this source tree.
"""

from __future__ import annotations

import os
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
    """One copy of each file: the package's presets are ``experiments/`` itself."""
    assert configs.PRESETS == (PROJECT / "experiments").resolve()
    assert configs.preset("recipes/cpu.yaml") == configs.PRESETS / "recipes" / "cpu.yaml"
    assert configs.preset("experiments/base.yaml") == configs.PRESETS / "base.yaml"
    assert configs.preset("preset:data/synthetic.yaml").is_file()
    names = configs.available()
    assert {"base.yaml", "recipes/cpu.yaml", "recipes/gpu.yaml", "data/busi.yaml"} <= set(names)
    assert all(n.endswith(".yaml") for n in names)
    with pytest.raises(FileNotFoundError, match="recipes/cpu.yaml"):
        configs.preset("recipes/nope.yaml")


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
    assert not any(n.endswith((".sh", ".json")) for n in names if "/presets/" in n)

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
