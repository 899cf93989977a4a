"""``bus-mtl export --ckpt CKPT --format onnx|torchscript [--output PATH] [--image-size N]
[--quantize int8 --calibration-images N] [--check]``."""

from __future__ import annotations

import argparse
import sys

from bus_mtl.cli.errors import print_error
from bus_mtl.inference.metadata import TTA_MODES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bus-mtl export",
        description="Export a training checkpoint to ONNX or TorchScript with its "
        "preprocessing facts (size, normalisation, temperature, threshold, class names) and "
        "its test-time augmentation (model.tta: hflip is part of the exported graph), "
        "checked against PyTorch on sample inputs. --quantize int8 writes an int8 "
        "static-quantised ONNX model calibrated on training images; --check runs the "
        "accuracy gate (Dice and AUC on a BUSI fold's test part within --tolerance points "
        "of the eager model).",
    )
    p.add_argument("--ckpt", required=True, help="checkpoint written by bus-mtl fit/cv")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument(
        "--output",
        help="file to write (default: the checkpoint's name, .onnx/.pt; .int8.onnx quantised)",
    )
    p.add_argument(
        "--image-size", type=int, help="input side (default: the training size in the checkpoint)"
    )
    p.add_argument(
        "--atol", type=float, default=1e-4, help="largest accepted max |exported - PyTorch|"
    )
    p.add_argument(
        "--quantize",
        choices=("int8",),
        help="int8 static quantisation (QDQ, per-channel, ONNX Runtime's tools); lossy: "
        "use with --check",
    )
    p.add_argument(
        "--calibration-images",
        type=int,
        default=64,
        help="random training-part images of --fold that calibrate int8 (64)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="accuracy gate: Dice and AUC of the exported ONNX model on the test part of "
        "--fold within --tolerance points of the checkpoint run eagerly; exit 1 if not",
    )
    p.add_argument("--fold", type=int, default=0, help="BUSI fold of the gate/calibration (0)")
    p.add_argument(
        "--busi-root", help="BUSI folder (default: $BUS_MTL_DATA or ../shared/data/busi)"
    )
    p.add_argument(
        "--tolerance", type=float, default=0.5, help="largest |Dice/AUC change| in points (0.5)"
    )
    p.add_argument("--threads", type=int, default=2, help="onnxruntime threads of the gate (2)")
    p.add_argument(
        "--tta",
        choices=TTA_MODES,
        help="test-time augmentation in the network, as model.tta (default: the model's "
        "own), exported in its graph: 'none' exports the single pass of a checkpoint trained "
        "with model.tta: hflip, at about half the latency, with the temperature and "
        "threshold fitted for it",
    )
    return p


def main(argv: list[str]) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.check and args.format != "onnx":
        p.error("--check gates ONNX exports (--format onnx)")
    from bus_mtl.inference.export import ParityError, export_checkpoint

    try:
        report = export_checkpoint(
            args.ckpt,
            args.format,
            args.output,
            image_size=args.image_size,
            atol=args.atol,
            quantize=args.quantize,
            calibration_images=args.calibration_images,
            busi_root=args.busi_root,
            fold=args.fold,
            tta=args.tta,
        )
    except ParityError as err:
        print(f"bus-mtl export: parity check FAILED: {err}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as err:
        return print_error("export", err)
    print(report)
    info = report.info
    print(
        f"  variant {info.variant or '?'}, input {info.in_channels}×{info.image_size}×"
        f"{info.image_size} ({info.resize}), mean {info.mean:.4f}, std {info.std:.4f}, temperature "
        f"{info.temperature:.4f}, mask threshold {info.threshold:g}, malignancy threshold "
        f"{info.class_threshold:.4f} ({info.threshold_rule or 'fixed'}), classes "
        f"{list(info.class_names)}, test-time augmentation {info.tta}"
    )
    if not args.check:
        return 0
    from bus_mtl.inference.gate import gate_model, load_fold_samples

    try:
        samples = load_fold_samples(args.busi_root, args.fold, "test")
    except FileNotFoundError as err:
        print(f"bus-mtl export: --check: {err}", file=sys.stderr)
        return 2
    gate = gate_model(
        args.ckpt, report.path, samples, tolerance=args.tolerance / 100, num_threads=args.threads
    )
    print(f"{gate} [BUSI fold {args.fold} test part]")
    return 0 if gate.passed else 1
