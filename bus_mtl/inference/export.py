"""Export a trained network to ONNX or TorchScript with its preprocessing facts, checked
against PyTorch on sample inputs.

A checkpoint trained with test-time augmentation (``checkpoint["bus_mtl"]["tta"] ==
"hflip"``) is exported with it: the graph runs the image and its mirror as one batch of 2
and averages the logits (:class:`~bus_mtl.models.FlipTTA`), and the metadata records
``tta``, so a ``Predictor`` needs nothing extra to compute what the checkpoint was validated
and calibrated with.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bus_mtl.inference.metadata import INPUT_NAME, METADATA_KEY, ModelInfo, sidecar_path

FORMATS = ("onnx", "torchscript")
TORCHSCRIPT_EXTRA_FILE = "bus_mtl.json"
DEFAULT_ATOL = 1e-4


class ParityError(RuntimeError):
    """The exported model's outputs differ from PyTorch's by more than the tolerance."""


@dataclass(frozen=True)
class ExportReport:
    """Where the model went and how far its outputs are from PyTorch's (per output)."""

    path: Path
    format: str
    max_abs_diff: dict[str, float]
    info: ModelInfo
    precision: str = "fp32"

    def __str__(self) -> str:
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in self.max_abs_diff.items())
        if self.info.tta != "none":
            diffs += f" (test-time augmentation {self.info.tta} in the graph)"
        if self.precision != "fp32":
            return (
                f"wrote {self.precision} {self.format} model {self.path} (quantised from an fp32 "
                f"export whose max |exported - PyTorch| was {diffs}; int8 is lossy: check it "
                "with --check)"
            )
        return f"wrote {self.format} model {self.path}; max |exported - PyTorch|: {diffs}"


def sample_inputs(info: ModelInfo, n: int = 2, seed: int = 0) -> torch.Tensor:
    """n×C×S×S inputs shaped like normalised images (standard normal, fixed seed)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, info.in_channels, info.image_size, info.image_size, generator=g)


def _reference_outputs(wrapper: nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    with torch.inference_mode():
        return [t.float().numpy() for t in wrapper(x)]


def _check_parity(
    names: list[str], ref: list[np.ndarray], got: list[np.ndarray], atol: float, what: str
) -> dict[str, float]:
    if len(ref) != len(got):
        raise ParityError(f"{what}: {len(got)} outputs, PyTorch gives {len(ref)}")
    diffs = {}
    for name, a, b in zip(names, ref, got):
        if a.shape != b.shape:
            raise ParityError(f"{what}: output {name!r} has shape {b.shape}, PyTorch {a.shape}")
        diffs[name] = float(np.max(np.abs(a - b))) if a.size else 0.0
    bad = {k: v for k, v in diffs.items() if not v <= atol}
    if bad:
        raise ParityError(
            f"{what} differs from PyTorch by more than {atol:g}: "
            + ", ".join(f"{k} max |diff| {v:.3e}" for k, v in bad.items())
        )
    return diffs


def _prepare(net: nn.Module, info: ModelInfo) -> tuple[nn.Module, list[str]]:
    from bus_mtl.models import export_wrapper, tta_of

    if tta_of(net) != info.tta:
        # The metadata would describe another model than the graph: a Predictor would apply a
        # temperature and threshold fitted on other logits.
        raise ValueError(
            f"the network runs test-time augmentation {tta_of(net)!r} but the metadata says "
            f"tta={info.tta!r}; wrap the net with bus_mtl.models.with_tta(net, {info.tta!r}) "
            "(export_checkpoint does) or give the info tta matching the net"
        )
    wrapper = export_wrapper(net.eval().cpu().float()).eval()
    names = list(wrapper.output_names)
    if names != info.output_names:
        raise ValueError(
            f"the network's outputs {names} do not match the metadata's {info.output_names} "
            "(has_seg / has_cls)"
        )
    return wrapper, names


def export_onnx(
    net: nn.Module,
    info: ModelInfo,
    path: str | Path,
    opset: int = 17,
    atol: float = DEFAULT_ATOL,
    dynamo: bool = False,
) -> ExportReport:
    """Write ``net`` as ONNX (dynamic batch, S×S input) with ``info`` in ``metadata_props``
    and in the sidecar ``<path>.json``; check it with onnxruntime against PyTorch.

    ``dynamo=False`` uses the TorchScript-based exporter: same numbers, several times faster
    to export these networks than ``torch.export``.

    Raises:
        ParityError: an output differs from PyTorch by more than ``atol``.
    """
    import onnx
    import onnxruntime as ort

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper, names = _prepare(net, info)
    x = sample_inputs(info)
    axes = {n: {0: "batch"} for n in [INPUT_NAME, *names]}
    kwargs: dict = (
        {"dynamic_axes": axes}
        if not dynamo
        else {"dynamic_shapes": ({0: torch.export.Dim("batch", min=1)},)}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' deprecation chatter
        torch.onnx.export(
            wrapper,
            (x[:1],),
            str(path),
            input_names=[INPUT_NAME],
            output_names=names,
            opset_version=opset,
            dynamo=dynamo,
            external_data=False,
            **kwargs,
        )
    model = onnx.load(str(path))
    meta_json = info.to_json()
    props = {METADATA_KEY: meta_json, **{k: json.dumps(v) for k, v in info.to_dict().items()}}
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    sidecar_path(path).write_text(json.dumps(info.to_dict(), indent=2, sort_keys=True) + "\n")

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(names, {INPUT_NAME: x.numpy()})
    diffs = _check_parity(names, _reference_outputs(wrapper, x), got, atol, f"ONNX model {path}")
    return ExportReport(path, "onnx", diffs, info)


def export_torchscript(
    net: nn.Module, info: ModelInfo, path: str | Path, atol: float = DEFAULT_ATOL
) -> ExportReport:
    """Trace ``net`` to TorchScript with ``info`` in ``_extra_files["bus_mtl.json"]`` (and
    the sidecar JSON); reload it and check it against PyTorch.

    Raises:
        ParityError: an output differs from PyTorch by more than ``atol``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper, names = _prepare(net, info)
    x = sample_inputs(info)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # TracerWarnings and torch.jit deprecation notices
        traced = torch.jit.trace(wrapper, (x[:1],), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_EXTRA_FILE: info.to_json()})
    sidecar_path(path).write_text(json.dumps(info.to_dict(), indent=2, sort_keys=True) + "\n")
    loaded, _ = load_torchscript(path)
    with torch.inference_mode():
        got = [t.float().numpy() for t in loaded(x)]
    what = f"TorchScript model {path}"
    diffs = _check_parity(names, _reference_outputs(wrapper, x), got, atol, what)
    return ExportReport(path, "torchscript", diffs, info)


def load_torchscript(path: str | Path) -> tuple[torch.jit.ScriptModule, ModelInfo]:
    """A TorchScript export and its :class:`ModelInfo`."""
    extra = {TORCHSCRIPT_EXTRA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    raw = extra[TORCHSCRIPT_EXTRA_FILE]
    if not raw:
        raise ValueError(f"{path}: no {TORCHSCRIPT_EXTRA_FILE} metadata in the TorchScript file")
    text = raw.decode() if isinstance(raw, bytes) else raw
    return module.eval(), ModelInfo.from_json(text, source=str(path))


def export_checkpoint(
    ckpt_path: str | Path,
    format: str = "onnx",
    output: str | Path | None = None,
    image_size: int | None = None,
    atol: float = DEFAULT_ATOL,
    quantize: str | None = None,
    calibration_images: int = 64,
    busi_root: str | Path | None = None,
    fold: int = 0,
    calibration: list[np.ndarray] | None = None,
    tta: str | None = None,
) -> ExportReport:
    """Export a training checkpoint; the temperature, threshold, normalisation, class names
    and test-time augmentation come from its ``bus_mtl`` metadata (a ``"hflip"`` checkpoint
    is exported with the flip average in its graph, parity-checked against the eager
    :class:`~bus_mtl.models.FlipTTA`).

    Args:
        ckpt_path: Lightning checkpoint written by ``MultiTaskModule``.
        format: ``"onnx"`` or ``"torchscript"``.
        output: file to write (default: next to the checkpoint, ``.onnx`` / ``.pt``;
            ``.int8.onnx`` when quantised).
        image_size: input side when the checkpoint has none (or to override it).
        atol: largest accepted max |exported - PyTorch| (of the fp32 export).
        quantize: ``"int8"``: write an int8 static-quantised ONNX model instead (see
            :mod:`bus_mtl.inference.quantize`), calibrated on ``calibration`` (H×W uint8
            grey images) or else on ``calibration_images`` random images of the training
            part of BUSI fold ``fold`` (at ``busi_root``).
        tta: the test-time augmentation in the exported graph; ``None``: the checkpoint's.
            ``"none"`` exports the single pass of an ``"hflip"`` checkpoint (half the
            latency) with the temperature and threshold fitted for the single pass.
    """
    from bus_mtl.inference.torch_predictor import load_net_and_info

    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    if quantize and format != "onnx":
        raise ValueError("int8 quantisation is for ONNX exports (--format onnx)")
    ckpt_path = Path(ckpt_path)
    net, info = load_net_and_info(ckpt_path, image_size=image_size, tta=tta)
    divisor = int(getattr(net, "size_divisor", 1))
    if info.image_size % divisor:
        raise ValueError(
            f"image size {info.image_size} is not a multiple of {divisor}, which "
            f"{type(net).__name__} needs"
        )
    suffix = {"onnx": ".onnx", "torchscript": ".pt"}[format]
    if quantize:
        suffix = f".{quantize}.onnx"
    output = Path(output) if output is not None else ckpt_path.with_suffix(suffix)
    if quantize:
        return _export_int8(
            net, info, output, atol, calibration, calibration_images, busi_root, fold
        )
    if format == "onnx":
        return export_onnx(net, info, output, atol=atol)
    return export_torchscript(net, info, output, atol=atol)


def _export_int8(
    net: nn.Module,
    info: ModelInfo,
    output: Path,
    atol: float,
    calibration: list[np.ndarray] | None,
    calibration_images: int,
    busi_root: str | Path | None,
    fold: int,
) -> ExportReport:
    import tempfile

    from bus_mtl.inference.quantize import calibration_batches, quantize_onnx

    if calibration is None:
        from bus_mtl.inference.gate import load_fold_samples

        if calibration_images < 1:
            raise ValueError(f"calibration_images must be >= 1, got {calibration_images}")
        samples = load_fold_samples(busi_root, fold, "train", n=calibration_images)
        calibration = [s.image for s in samples]
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(net, info, Path(tmp) / "fp32.onnx", atol=atol)
        quantize_onnx(fp32.path, output, calibration_batches(calibration, info))
    return ExportReport(output, "onnx", fp32.max_abs_diff, info, precision="int8")
