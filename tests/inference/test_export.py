"""ONNX / TorchScript export: metadata round trip and parity with PyTorch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from bus_mtl.inference.export import (
    ParityError,
    export_checkpoint,
    export_onnx,
    load_torchscript,
)
from bus_mtl.inference.metadata import ModelInfo
from bus_mtl.models import MTLOutput

from .conftest import IMAGE_SIZE, TEMPERATURE


def _checkpoint_meta(ckpt):
    return torch.load(ckpt, map_location="cpu", weights_only=False)["bus_mtl"]


def _inputs(n=3, size=IMAGE_SIZE):
    return torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(7))


def test_onnx_round_trip_metadata_and_outputs(mtl_ckpt, mtl_onnx):
    import onnx
    import onnxruntime as ort

    from bus_mtl.models.rebuild import load_net

    meta = _checkpoint_meta(mtl_ckpt)
    props = {p.key: p.value for p in onnx.load(str(mtl_onnx)).metadata_props}
    stored = json.loads(props["bus_mtl"])
    assert stored["temperature"] == pytest.approx(TEMPERATURE)
    assert stored["image_size"] == IMAGE_SIZE
    assert stored["normalization"] == pytest.approx(meta["normalization"])
    assert stored["class_names"] == ["benign", "malignant"]
    assert stored["variant"] == "seg_features_effnet"
    assert stored["bus_mtl_version"]
    assert json.loads(mtl_onnx.with_suffix(".json").read_text()) == stored

    net, _ = load_net(mtl_ckpt)
    x = _inputs()  # batch 3: the batch axis is dynamic
    with torch.no_grad():
        ref = net(x)
    session = ort.InferenceSession(str(mtl_onnx), providers=["CPUExecutionProvider"])
    mask, logits = session.run(["mask", "logits"], {"image": x.numpy()})
    assert np.abs(mask - ref.mask.numpy()).max() <= 1e-4
    assert np.abs(logits - ref.logits.numpy()).max() <= 1e-4


@pytest.mark.slow
def test_torchscript_round_trip(mtl_ckpt, tmp_path, capsys):
    from bus_mtl.cli.main import main
    from bus_mtl.models.rebuild import load_net

    out = tmp_path / "model.pt"
    assert (
        main(["export", "--ckpt", str(mtl_ckpt), "--format", "torchscript", "--output", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "max |exported - PyTorch|" in printed and "temperature 2.5" in printed
    module, info = load_torchscript(out)
    assert info.temperature == pytest.approx(TEMPERATURE) and info.image_size == IMAGE_SIZE
    net, _ = load_net(mtl_ckpt)
    x = _inputs()
    with torch.no_grad():
        ref, got = net(x), module(x)
    assert torch.allclose(got[0], ref.mask, atol=1e-4)
    assert torch.allclose(got[1], ref.logits, atol=1e-4)


class _ExportDrift(nn.Module):
    """A net whose exported graph adds 1 to the mask: parity must catch it."""

    has_seg, has_cls, size_divisor = True, True, 1

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.fc = nn.Linear(1, 1)

    def forward(self, x):
        mask = self.conv(x)
        if torch.onnx.is_in_onnx_export():
            mask = mask + 1.0
        return MTLOutput(mask, self.fc(mask.mean(dim=(2, 3))))


def test_parity_failure_is_loud(tmp_path):
    info = ModelInfo(image_size=32)
    with pytest.raises(ParityError, match=r"mask max \|diff\| 1\.0"):
        export_onnx(_ExportDrift(), info, tmp_path / "drift.onnx")


def test_metadata_must_match_heads(tmp_path):
    info = ModelInfo(image_size=32, has_cls=False)
    with pytest.raises(ValueError, match="do not match"):
        export_onnx(_ExportDrift(), info, tmp_path / "x.onnx")


def test_export_rejects_bad_image_size_and_format(mtl_ckpt, tmp_path):
    with pytest.raises(ValueError, match="multiple of"):
        export_checkpoint(mtl_ckpt, "onnx", tmp_path / "m.onnx", image_size=70)
    with pytest.raises(ValueError, match="format"):
        export_checkpoint(mtl_ckpt, "tflite", tmp_path / "m.tflite")


def test_export_cli_reports_missing_checkpoint(tmp_path, capsys):
    from bus_mtl.cli.main import main

    assert main(["export", "--ckpt", str(tmp_path / "none.ckpt")]) == 2
    assert "none.ckpt" in capsys.readouterr().err
