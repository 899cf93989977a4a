"""``bus-mtl bench inference``: interleaved timing, the table with speed-ups and goals, and
the CSV/JSON it writes."""

from __future__ import annotations

import csv
import json

import pytest

from bus_mtl.benchmarks import inference as bench


def test_interleaved_runs_every_form_once_per_round():
    calls = []
    fns = {("v", f): (lambda f=f: calls.append(f)) for f in ("a", "b", "c")}
    times = bench.interleaved(fns, warmup=1, runs=3)
    # warm-up round, then rotated rounds: no form always follows the same one
    assert calls == ["a", "b", "c"] + ["a", "b", "c"] + ["b", "c", "a"] + ["c", "a", "b"]
    assert all(len(t) == 3 for t in times.values())


def _rows():
    rows = []
    for variant, form, ms in [
        ("seg_features_effnet", "eager", 200.0),
        ("seg_features_effnet", "onnx", 130.0),
        ("seg_features_effnet", "int8", 90.0),
        ("smp_unet", "eager", 160.0),
        ("smp_unet", "onnx", 100.0),
    ]:
        rows.append(bench.Row(variant, form, 5.6, 256, median_ms=ms, p25_ms=ms, p75_ms=ms))
    for r in rows:
        r.speedup = {"seg_features_effnet": 200.0, "smp_unet": 160.0}[r.variant] / r.median_ms
    return rows


def test_goal_lines_use_the_fastest_gated_form():
    rows = _rows()
    lines = bench.goal_lines(rows)
    assert "int8" in lines[0] and "90.0 ms" in lines[0]
    assert "0.45x (goal <= 0.5x: met)" in lines[1]
    assert "0.90x (goal <= 1.00x: met)" in lines[2]
    rows[2].gate = "FAILED"  # a form that failed its accuracy gate does not count
    lines = bench.goal_lines(rows)
    assert "fp32, default session, 130.0 ms" in lines[0]
    assert "NOT met" in lines[1] and "NOT met" in lines[2]
    table = bench.format_table(rows)
    assert "1.54x" in table and "FAILED" in table


def test_ckpt_argument_is_checked():
    assert bench._parse_ckpts(["smp_unet=a=b.ckpt"]) == {"smp_unet": "a=b.ckpt"}
    with pytest.raises(ValueError, match="VARIANT=PATH"):
        bench._parse_ckpts(["smp_unet"])
    with pytest.raises(SystemExit):
        bench.main(["--variants", "smp_unet", "--ckpt", "segresnet=x.ckpt"])


def test_bench_prints_table_and_writes_csv_json(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["--variants", "seg_features_effnet", "--forms", "eager", "onnx", "int8"]
    argv += ["--image-size", "64", "--runs", "2", "--warmup", "0", "--out", str(out)]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    for label in ("PyTorch eager", "fp32, default session", "int8 (QDQ)", "1-min load average"):
        assert label in printed
    assert "vs its eager" in printed
    with open(out / "inference.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["form"] for r in rows] == ["eager", "onnx", "int8"]
    assert float(rows[0]["speedup"]) == pytest.approx(1.0)
    data = json.loads((out / "inference.json").read_text())
    assert data["meta"]["threads"] == 2 and data["meta"]["image_size"] == 64
    assert len(data["rows"][1]["times_ms"]) == 2
