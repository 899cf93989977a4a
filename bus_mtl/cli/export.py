"""``bus-mtl export --ckpt CKPT --format onnx|torchscript [--output PATH] [--image-size N]``."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bus-mtl export",
        description="Export a training checkpoint to ONNX or TorchScript with its "
        "preprocessing facts (size, normalisation, temperature, threshold, class names), "
        "checked against PyTorch on sample inputs.",
    )
    p.add_argument("--ckpt", required=True, help="checkpoint written by bus-mtl fit/cv")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument("--output", help="file to write (default: the checkpoint's name, .onnx/.pt)")
    p.add_argument(
        "--image-size", type=int, help="input side (default: the training size in the checkpoint)"
    )
    p.add_argument(
        "--atol", type=float, default=1e-4, help="largest accepted max |exported - PyTorch|"
    )
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from bus_mtl.inference.export import ParityError, export_checkpoint

    try:
        report = export_checkpoint(
            args.ckpt, args.format, args.output, image_size=args.image_size, atol=args.atol
        )
    except ParityError as err:
        print(f"bus-mtl export: parity check FAILED: {err}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as err:
        print(f"bus-mtl export: {err}", file=sys.stderr)
        return 2
    print(report)
    info = report.info
    print(
        f"  variant {info.variant or '?'}, input {info.in_channels}×{info.image_size}×"
        f"{info.image_size}, mean {info.mean:.4f}, std {info.std:.4f}, temperature "
        f"{info.temperature:.4f}, mask threshold {info.threshold:g}, malignancy threshold "
        f"{info.class_threshold:.4f} ({info.threshold_rule or 'fixed'}), classes "
        f"{list(info.class_names)}"
    )
    return 0
