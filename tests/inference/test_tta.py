"""A checkpoint trained with ``model.tta: hflip``: its eager predictor, exports, ``Predictor``,
``bus-mtl predict``, the accuracy gate and ``bench inference`` all run the flip average."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bus_mtl.inference.metadata import ModelInfo
from bus_mtl.inference.predictor import Predictor
from bus_mtl.inference.torch_predictor import TorchPredictor
from bus_mtl.models import FlipTTA
from bus_mtl.models.rebuild import load_net

from .conftest import IMAGE_SIZE, TEMPERATURE

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tta_ckpt(tmp_path_factory, mtl_ckpt: Path) -> Path:
    """``mtl_ckpt``'s weights, recorded as trained with ``tta="hflip"`` (as
    ``MultiTaskModule(tta="hflip")`` writes it: hparams and metadata)."""
    checkpoint = torch.load(mtl_ckpt, map_location="cpu", weights_only=True)
    checkpoint["bus_mtl"]["tta"] = "hflip"
    checkpoint["hyper_parameters"]["tta"] = "hflip"
    path = tmp_path_factory.mktemp("tta_ckpt") / "tta.ckpt"
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="module")
def tta_onnx(tmp_path_factory, tta_ckpt: Path):
    from bus_mtl.inference.export import export_checkpoint

    return export_checkpoint(tta_ckpt, "onnx", tmp_path_factory.mktemp("tta_export") / "tta.onnx")


def _inputs(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 1, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(4))


def test_onnx_export_of_a_tta_checkpoint_matches_the_eager_wrapper(tta_ckpt, tta_onnx):
    import onnx
    import onnxruntime as ort

    assert max(tta_onnx.max_abs_diff.values()) <= 1e-4 and tta_onnx.info.tta == "hflip"
    assert "test-time augmentation hflip in the graph" in str(tta_onnx)
    props = {p.key: p.value for p in onnx.load(str(tta_onnx.path)).metadata_props}
    assert json.loads(props["bus_mtl"])["tta"] == "hflip"
    net, _ = load_net(tta_ckpt)
    x = _inputs()  # batch 3, exported with batch 1: the 2B split stays dynamic
    with torch.no_grad():
        ref, bare = FlipTTA(net)(x), net(x)
    session = ort.InferenceSession(str(tta_onnx.path), providers=["CPUExecutionProvider"])
    mask, logits = session.run(["mask", "logits"], {"image": x.numpy()})
    assert np.abs(mask - ref.mask.numpy()).max() <= 1e-4
    assert np.abs(logits - ref.logits.numpy()).max() <= 1e-4
    assert np.abs(mask - bare.mask.numpy()).max() > 1e-3  # the graph does hold the mirror


def test_torchscript_export_of_a_tta_checkpoint(tta_ckpt, tmp_path):
    from bus_mtl.inference.export import export_checkpoint, load_torchscript

    report = export_checkpoint(tta_ckpt, "torchscript", tmp_path / "tta.pt")
    assert max(report.max_abs_diff.values()) <= 1e-4
    module, info = load_torchscript(report.path)
    assert info.tta == "hflip"
    net, _ = load_net(tta_ckpt)
    x = _inputs(2)
    with torch.no_grad():
        ref, got = FlipTTA(net)(x), module(x)
    torch.testing.assert_close(got[0], ref.mask, atol=1e-4, rtol=0)


def test_predictors_of_a_tta_checkpoint_run_the_flip(mtl_ckpt, tta_ckpt, tta_onnx, odd_images):
    eager = TorchPredictor.from_checkpoint(tta_ckpt)
    assert isinstance(eager.net, FlipTTA) and eager.info.tta == "hflip"
    assert TorchPredictor.from_checkpoint(mtl_ckpt).info.tta == "none"  # no key: none
    deployed = Predictor(tta_onnx.path)
    assert deployed.info.tta == "hflip"
    image = odd_images["gray"]
    p_eager, p_onnx = eager.predict(image), deployed.predict(image)
    assert p_onnx.probability == pytest.approx(p_eager.probability, abs=1e-4)
    np.testing.assert_allclose(p_onnx.mask_prob, p_eager.mask_prob, atol=1e-4)
    # The calibrated probability of the flip-averaged logit.
    net, meta = load_net(tta_ckpt)
    assert meta["temperature"] == pytest.approx(TEMPERATURE)
    # The predictor's --mirror-average adds nothing to a model that has the flip inside.
    averaged = Predictor(tta_onnx.path, mirror_average=True).predict(image)
    assert averaged.probability == p_onnx.probability
    plain = TorchPredictor.from_checkpoint(mtl_ckpt).predict(image)
    assert not np.allclose(plain.mask_prob, p_eager.mask_prob, atol=1e-4)


def test_predict_cli_on_a_tta_checkpoint(tta_ckpt, odd_images, tmp_path):
    from bus_mtl.cli.main import main

    out = tmp_path / "out"
    image = odd_images["rgb"]
    argv = ["predict", "--ckpt", str(tta_ckpt), "--input", str(image), "--output", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    with open(out / "predictions.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    expected = TorchPredictor.from_checkpoint(tta_ckpt).predict(image).probability
    assert float(row["probability"]) == pytest.approx(expected, abs=1e-6)


def test_a_net_without_its_metadata_tta_is_refused(tta_ckpt, tta_onnx, tmp_path):
    from bus_mtl.inference.export import export_onnx
    from bus_mtl.inference.gate import check_accuracy

    bare, _ = load_net(tta_ckpt)
    info = TorchPredictor.from_checkpoint(tta_ckpt).info
    with pytest.raises(ValueError, match=r"'none' but its metadata says tta='hflip'.*with_tta"):
        TorchPredictor(bare, info)
    with pytest.raises(ValueError, match=r"'none' but the metadata says tta='hflip'"):
        export_onnx(bare, info, tmp_path / "bare.onnx")
    with pytest.raises(ValueError, match="tta must be one of"):
        ModelInfo(image_size=64, tta="rot90")
    # The gate compares like with like: an export without the checkpoint's TTA is refused.
    eager_none = TorchPredictor(bare, ModelInfo.from_dict({**info.to_dict(), "tta": "none"}))
    with pytest.raises(ValueError, match=r"'none' but the deployed one .* 'hflip'.*re-export"):
        check_accuracy(eager_none, Predictor(tta_onnx.path), samples=[])


def test_bench_inference_times_the_tta_checkpoint_with_its_flip(tta_ckpt):
    from bus_mtl.benchmarks import inference as bench

    net, info = bench._load_net("seg_features_effnet", str(tta_ckpt))
    assert isinstance(net, FlipTTA) and info.tta == "hflip"
    row = bench.Row("seg_features_effnet", "eager", 1.0, 64, median_ms=2.0, tta="hflip")
    row.speedup = 1.0
    assert "seg_features_effnet+hflip" in bench.format_table([row])
    # One option name for the network's test-time augmentation, as in predict/export/evaluate.
    assert bench.build_parser().parse_args(["--tta", "none"]).tta == "none"


@pytest.fixture(scope="module")
def tta_ckpt_with_single_pass(tmp_path_factory, tta_ckpt: Path) -> Path:
    """``tta_ckpt`` with the single pass's operating point that ``TemperatureCalibration``
    adds to a TTA checkpoint (values chosen to differ from the flip's)."""
    checkpoint = torch.load(tta_ckpt, map_location="cpu", weights_only=True)
    meta = checkpoint["bus_mtl"]
    own = {k: meta.get(k) for k in ("temperature", "decision_threshold", "threshold_rule")}
    single = {"temperature": 2.5, "decision_threshold": 0.3, "threshold_rule": "youden"}
    meta["operating_points"] = {"hflip": own, "none": {**single, "calibration": {}}}
    path = tmp_path_factory.mktemp("tta_single") / "tta_single.ckpt"
    torch.save(checkpoint, path)
    return path


def test_the_single_pass_of_a_tta_checkpoint_exports_with_its_own_operating_point(
    tta_ckpt, tta_ckpt_with_single_pass, odd_images, tmp_path
):
    import onnxruntime as ort

    from bus_mtl.cli.main import main
    from bus_mtl.inference.export import export_checkpoint
    from bus_mtl.inference.gate import check_accuracy

    report = export_checkpoint(tta_ckpt_with_single_pass, "onnx", tmp_path / "one.onnx", tta="none")
    info = report.info
    assert info.tta == "none" and info.temperature == 2.5 and info.class_threshold == 0.3
    net, _ = load_net(tta_ckpt_with_single_pass)
    x = _inputs()
    with torch.no_grad():
        bare = net(x)
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    mask, logits = session.run(["mask", "logits"], {"image": x.numpy()})
    assert np.abs(logits - bare.logits.numpy()).max() <= 1e-4  # one pass, no mirror
    # Eager at the same mode: same probabilities, and the gate accepts the pair.
    eager = TorchPredictor.from_checkpoint(tta_ckpt_with_single_pass, tta="none")
    assert not isinstance(eager.net, FlipTTA) and eager.info.temperature == 2.5
    deployed = Predictor(report.path)
    image = odd_images["gray"]
    assert deployed.predict(image).probability == pytest.approx(
        eager.predict(image).probability, abs=1e-4
    )
    check_accuracy(eager, deployed, samples=[])  # same mode: no mismatch
    # The default stays the checkpoint's own mode; a checkpoint without the single pass's
    # operating point says so instead of exporting a miscalibrated model.
    assert (
        export_checkpoint(tta_ckpt_with_single_pass, "onnx", tmp_path / "two.onnx").info.tta
        == "hflip"
    )
    with pytest.raises(ValueError, match=r"\['hflip'\] only, not 'none'"):
        export_checkpoint(tta_ckpt, "onnx", tmp_path / "bad.onnx", tta="none")
    out = tmp_path / "cli.onnx"
    argv = ["export", "--ckpt", str(tta_ckpt_with_single_pass), "--output", str(out)]
    assert main([*argv, "--tta", "none"]) == 0
    assert Predictor(out).info.tta == "none"
    assert main(["export", "--ckpt", str(tta_ckpt), "--output", str(out), "--tta", "none"]) == 2
    # bus-mtl predict's --tta is the same option: the single pass of the checkpoint, at its
    # own operating point; an export runs the mode it was exported with, and says so.
    pred = ["predict", "--input", str(image), "--no-progress", "--output"]
    ckpt = ["--ckpt", str(tta_ckpt_with_single_pass)]
    assert main([*pred, str(tmp_path / "p"), *ckpt, "--tta", "none"]) == 0
    with (tmp_path / "p" / "predictions.csv").open() as fh:
        row = next(csv.DictReader(fh))
    assert float(row["probability"]) == pytest.approx(eager.predict(image).probability, abs=1e-5)
    assert main([*pred, str(tmp_path / "q"), "--model", str(out), "--tta", "hflip"]) == 2


def test_bench_inference_times_the_single_pass_on_request(tta_ckpt_with_single_pass):
    from bus_mtl.benchmarks import inference as bench

    net, info = bench._load_net("seg_features_effnet", str(tta_ckpt_with_single_pass), "none")
    assert not isinstance(net, FlipTTA) and info.tta == "none" and info.temperature == 2.5
    net, info = bench._load_net("seg_features_effnet", None, "hflip")
    assert isinstance(net, FlipTTA) and info is None
