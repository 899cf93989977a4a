"""Deployed forms: int8 quantisation (metadata kept, Predictor runs it), the accuracy gate
(passes for a lossless export, fails a lossy one, wired into ``bus-mtl export --check``) and
the serving session options. Small synthetic fixtures only: the real gate runs on BUSI."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from bus_mtl.inference.gate import (
    GateSample,
    binary_auc,
    check_accuracy,
    dice_score,
    evaluate,
)
from bus_mtl.inference.predictor import Predictor, session_options

from .conftest import DECISION_THRESHOLD, IMAGE_SIZE, TEMPERATURE


def _phantoms(n: int, start: int = 0) -> list[GateSample]:
    from bus_mtl.data.sources import make_phantom

    out = []
    for i in range(start, start + n):
        image, mask, label = make_phantom(i, seed=3, size=80)  # resized to 64 by the models
        out.append(GateSample(f"p{i}", image, mask > 0, label))
    return out


def test_dice_and_auc_reference_values():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert dice_score(a, b) == 1.0  # both empty
    a[:2] = True
    b[1:3] = True
    assert dice_score(a, b) == pytest.approx(2 * 4 / 16)
    rng = np.random.default_rng(0)
    probs = np.round(rng.random(40), 1)  # ties on purpose
    labels = rng.integers(0, 2, 40)
    pairs = [
        1.0 if p > q else 0.5 if p == q else 0.0
        for (p, y), (q, z) in itertools.product(zip(probs, labels), repeat=2)
        if y == 1 and z == 0
    ]
    assert binary_auc(probs, labels) == pytest.approx(np.mean(pairs))
    assert np.isnan(binary_auc([0.1, 0.2], [1, 1]))


@pytest.fixture(scope="module")
def int8_onnx(tmp_path_factory, mtl_ckpt):
    from bus_mtl.inference.export import export_checkpoint

    out = tmp_path_factory.mktemp("int8") / "mtl.int8.onnx"
    calibration = [s.image for s in _phantoms(6, start=100)]
    report = export_checkpoint(mtl_ckpt, "onnx", out, quantize="int8", calibration=calibration)
    assert report.precision == "int8" and "int8" in str(report)
    return out


def test_int8_export_keeps_metadata_and_runs(int8_onnx, mtl_onnx):
    import onnx

    ops = {n.op_type for n in onnx.load(str(int8_onnx)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    stored = json.loads(int8_onnx.with_suffix(".json").read_text())
    assert stored["temperature"] == pytest.approx(TEMPERATURE)
    assert stored["decision_threshold"] == pytest.approx(DECISION_THRESHOLD)
    assert stored["precision"] == "int8"
    assert stored["quantization"]["calibration_images"] == 6
    q, f = Predictor(int8_onnx, num_threads=1), Predictor(mtl_onnx, num_threads=1)
    assert (q.precision, f.precision) == ("int8", "fp32")
    assert q.info.temperature == pytest.approx(TEMPERATURE)
    assert q.info.image_size == IMAGE_SIZE
    sample = _phantoms(1)[0]
    rq, rf = q.predict_gray(sample.image), f.predict_gray(sample.image)
    assert rq.mask.shape == sample.image.shape
    assert 0.0 <= rq.probability <= 1.0
    assert abs(rq.probability - rf.probability) < 0.2  # quantised, not broken


def test_gate_passes_lossless_export_and_fails_lossy(mtl_ckpt, mtl_onnx, int8_onnx):
    from bus_mtl.inference.torch_predictor import TorchPredictor

    samples = _phantoms(8)
    eager = TorchPredictor.from_checkpoint(mtl_ckpt)
    ref = evaluate(eager, samples)
    assert ref.n == 8 and 0.0 <= ref.dice <= 1.0 and 0.0 <= ref.auc <= 1.0
    same = check_accuracy(eager, Predictor(mtl_onnx), samples, reference_scores=ref)
    assert same.passed and abs(same.delta["dice"]) < 1e-6 and abs(same.delta["auc"]) < 1e-6
    assert "PASSED" in str(same)
    # A deployed form that changes the masks: the gate must say so.
    lossy = Predictor(mtl_onnx, threshold=0.999, decision_threshold=DECISION_THRESHOLD)
    bad = check_accuracy(eager, lossy, samples, tolerance=0.005, reference_scores=ref)
    if ref.dice > 0.01:
        assert not bad.passed and "FAILED" in str(bad)
    int8 = check_accuracy(eager, Predictor(int8_onnx), samples, reference_scores=ref)
    assert np.isfinite(int8.delta["dice"]) and np.isfinite(int8.delta["auc"])


@pytest.mark.slow
def test_export_cli_quantize_and_check(mtl_ckpt, tmp_path, monkeypatch, capsys):
    """``bus-mtl export --quantize int8 --check``: calibrates on the fold's training part,
    gates on its test part (here: synthetic phantoms stand in for BUSI) and exits 1 when the
    gate fails."""
    from bus_mtl.cli.main import main
    from bus_mtl.inference import gate

    calls = []

    def fake_samples(busi_root=None, fold=0, part="test", cache_dir=None, n=None, seed=0):
        calls.append((fold, part, n))
        return _phantoms(n or 6, start=100 if part == "train" else 0)

    monkeypatch.setattr(gate, "load_fold_samples", fake_samples)
    out = tmp_path / "m.int8.onnx"
    argv = ["export", "--ckpt", str(mtl_ckpt), "--output", str(out), "--quantize", "int8"]
    argv += ["--calibration-images", "4", "--check", "--fold", "2", "--tolerance", "100"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "wrote int8 onnx model" in printed
    assert "accuracy gate PASSED" in printed and "int8 at 64px" in printed
    assert calls == [(2, "train", 4), (2, "test", None)]
    assert main([*argv[:-1], "0"]) in (0, 1)  # zero tolerance: exit code follows the gate
    assert "accuracy gate" in capsys.readouterr().out


def test_export_rejects_int8_torchscript(mtl_ckpt, tmp_path):
    from bus_mtl.inference.export import export_checkpoint

    with pytest.raises(ValueError, match="ONNX"):
        export_checkpoint(mtl_ckpt, "torchscript", tmp_path / "m.pt", quantize="int8")
    with pytest.raises(ValueError, match="quantize"):
        export_checkpoint(mtl_ckpt, "onnx", tmp_path / "m.onnx", quantize="int4")


def test_serving_session_options():
    import onnxruntime as ort

    opts = session_options(2)
    assert opts.intra_op_num_threads == 2 and opts.inter_op_num_threads == 1
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert opts.get_session_config_entry("session.set_denormal_as_zero") == "1"
    quiet = session_options(1, spinning=False)
    assert quiet.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_auc_ignores_float_noise_between_equal_probabilities():
    """A lossless export moves probabilities by ~1e-9; near-equal probabilities (an untrained
    net's) must not swap places in the gate's AUC because of it."""
    from types import SimpleNamespace

    class Fixed:
        def __init__(self, probs):
            self.probs = iter(probs)

        def predict_gray(self, image):
            return SimpleNamespace(mask=None, probability=next(self.probs))

    samples = [
        GateSample(f"s{i}", np.zeros((4, 4)), np.zeros((4, 4), bool), i % 2) for i in range(8)
    ]
    base = 0.5002354 + np.array([3, 0, 4, 0, 6, 0, 3, 2]) * 1e-9
    noisy = base + np.array([0, 1, -1, 2, -2, 1, 0, 3]) * 1e-9
    a, b = evaluate(Fixed(base), samples), evaluate(Fixed(noisy), samples)
    assert a.auc == b.auc == 0.5
    # Real differences are kept.
    spread = evaluate(Fixed([0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6]), samples)
    assert spread.auc == 1.0
