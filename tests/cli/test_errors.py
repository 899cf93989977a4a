"""Errors a user meets at the ``bus-mtl`` prompt: one line ``bus-mtl CMD: error: ...`` on
stderr, exit code 2, no traceback; ``BUS_MTL_DEBUG=1`` shows it, and a bug keeps it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bus_mtl.cli import errors
from bus_mtl.cli.main import COMMANDS, main
from bus_mtl.data.errors import DataError, Problem

FIX = "pass the .ckpt file that bus-mtl fit wrote (RUN/checkpoints/*.ckpt)"


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(errors.DEBUG_ENV, raising=False)


@pytest.fixture
def text_ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "notes.ckpt"
    path.write_text("epoch 3: val/score 0.7\n")
    return path


def _one_error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bus-mtl {command}: error: "), err
    return lines[0].removeprefix(f"bus-mtl {command}: error: ")


def test_text_file_as_checkpoint_says_what_it_is(text_ckpt, tmp_path, synthetic_root, capsys):
    manifest = str(synthetic_root / "manifest.csv")
    out = tmp_path / "out"
    commands = {
        "predict": ["--input", str(synthetic_root), "--output", str(out)],
        "evaluate": ["--manifest", manifest, "--out", str(out)],
        "export": ["--output", str(tmp_path / "model.onnx")],
        "calibrate": ["--manifest", manifest, "--out", str(tmp_path / "site.ckpt")],
    }
    for command, args in commands.items():
        assert main([command, "--ckpt", str(text_ckpt), *args]) == 2, command
        message = _one_error_line(capsys, command)
        assert message == f"{text_ckpt} is not a PyTorch checkpoint (a text file); {FIX}"
    assert not out.exists()


def test_onnx_file_as_checkpoint_names_the_option(tmp_path, capsys):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"\x08\x07\x12\x07pytorch")
    assert main(["export", "--ckpt", str(model), "--output", str(tmp_path / "x.pt")]) == 2
    assert _one_error_line(capsys, "export").endswith("pass it with --model")


def test_debug_env_shows_the_traceback(text_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv(errors.DEBUG_ENV, "1")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint") as info:
        main(["export", "--ckpt", str(text_ckpt), "--output", str(tmp_path / "m.onnx")])
    assert info.value.__cause__ is not None  # torch.load's own error, chained


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    """A ValueError out of a third-party library (here numpy, called from outside bus_mtl)
    is not bad input: the dispatcher lets it through."""

    def broken(argv: list[str]) -> int:
        np.zeros(3).reshape(2, 2)
        return 0

    module = type(sys)("fake_command")
    module.main = broken
    monkeypatch.setitem(sys.modules, "fake_command", module)
    monkeypatch.setitem(COMMANDS, "broken", ("fake_command:main", "raises a bug"))
    with pytest.raises(ValueError, match="reshape"):
        main(["broken"])


def test_is_user_error():
    try:
        np.zeros(3).reshape(2, 2)
    except ValueError as err:
        numpy_error = err
    assert not errors.is_user_error(numpy_error)
    assert not errors.is_user_error(RuntimeError("CUDA out of memory"))
    assert errors.is_user_error(DataError([Problem("a.csv", "no rows")]))
    assert errors.is_user_error(errors.ConfigError("x: bad"))
    try:
        Path("/nonexistent/bus_mtl/x.json").read_text()  # the standard library's frames only
    except FileNotFoundError as err:
        assert not errors.is_user_error(err)  # raised on behalf of a test, not of bus_mtl


def test_data_error_prints_one_line_per_problem(capsys):
    problems = [Problem("a.png", "unreadable"), Problem("b.png", "odd", severity="warning")]
    assert errors.print_error("evaluate", DataError(problems)) == 2
    assert capsys.readouterr().err == "bus-mtl evaluate: error: a.png: unreadable\n"


def test_bad_config_value_at_the_prompt(tmp_path):
    """The issue's example, through the real entry point (a fresh process: Lightning's log
    handler writes there as it does for a user)."""
    argv = ["fit", "--config", "preset:quickstart.yaml", "--data.image_size", "100"]
    argv.append(f"--trainer.default_root_dir={tmp_path}")
    run = subprocess.run(
        [sys.executable, "-m", "bus_mtl.cli.main", *argv],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        "bus-mtl fit: error: BUSDataModule: image_size: must be a positive multiple of 32, got 100"
    )
