"""``bus-mtl predict``: masks, overlays and a CSV for image files.

``--ckpt CKPT`` runs the PyTorch network from a training checkpoint, ``--model MODEL.onnx``
the exported ONNX model (onnxruntime only). With ``--config`` the command is LightningCLI
``predict`` instead (``bus_mtl.cli.lightning``).
"""

from __future__ import annotations

import argparse
import sys

from bus_mtl.cli.errors import print_error
from bus_mtl.inference.metadata import TTA_MODES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bus-mtl predict",
        description="Predict lesion masks and malignancy probabilities for image files. "
        "Writes DIR/masks/<stem>.png (0/255, original size), DIR/overlays/<stem>.png and "
        "DIR/predictions.csv (with --cam also DIR/cams/<stem>.png). Exits 1 when any file "
        "could not be read.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="training checkpoint (PyTorch)")
    src.add_argument("--model", help="exported ONNX model (onnxruntime)")
    p.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="FILE_OR_FOLDER",
        help="image files and/or folders (folders: their image files, *_mask files skipped)",
    )
    p.add_argument("--output", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--tta",
        choices=TTA_MODES,
        default=None,
        help="test-time augmentation in the network, as model.tta (default: the model's "
        "own): 'none' runs the single pass of a checkpoint trained with model.tta: hflip, "
        "at about half the latency, with the temperature and threshold fitted for it. An "
        "ONNX model runs the one it was exported with (bus-mtl export --tta)",
    )
    p.add_argument(
        "--mirror-average",
        action="store_true",
        help="also run the horizontal mirror and average the two probabilities, at the "
        "single pass's temperature and thresholds (not what the model was calibrated for; "
        "a model with --tta hflip averages its logits inside and skips this)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="mask-pixel threshold (default: the model's); given alone it also sets the "
        "malignancy decision threshold",
    )
    p.add_argument(
        "--decision-threshold",
        type=float,
        default=None,
        help="malignancy decision threshold (default: the operating point fitted on the "
        "validation part at training time, stored in the checkpoint or export)",
    )
    p.add_argument("--device", default="cpu", help="torch device for --ckpt (cpu, cuda, ...)")
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="input side for a checkpoint that does not record it",
    )
    p.add_argument(
        "--cam",
        action="store_true",
        help="also write DIR/cams/<stem>.png: the Grad-CAM of the malignancy logit over the "
        "image (needs --ckpt and a variant with a classifier)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str]) -> int:
    if "--config" in argv or any(a.startswith("--config=") for a in argv):
        from bus_mtl.cli.lightning import main as lightning_main

        return int(lightning_main(["predict", *argv]) or 0)
    args = build_parser().parse_args(argv)
    if args.cam and args.model:
        print(
            "bus-mtl predict: --cam needs a checkpoint (--ckpt CKPT): the class-activation map "
            "follows the gradients of the PyTorch network, which an ONNX model does not have",
            file=sys.stderr,
        )
        return 2
    try:
        if args.model:
            from bus_mtl.inference.predictor import Predictor

            predictor = Predictor(
                args.model,
                threshold=args.threshold,
                mirror_average=args.mirror_average,
                decision_threshold=args.decision_threshold,
                tta=args.tta,
            )
        else:
            from bus_mtl.inference.torch_predictor import TorchPredictor

            predictor = TorchPredictor.from_checkpoint(
                args.ckpt,
                threshold=args.threshold,
                mirror_average=args.mirror_average,
                device=args.device,
                image_size=args.image_size,
                decision_threshold=args.decision_threshold,
                tta=args.tta,
            )
        from bus_mtl.inference.predict import predict_files

        summary = predict_files(
            predictor, args.input, args.output, progress=not args.no_progress, cam=args.cam
        )
    except (FileNotFoundError, ValueError) as err:
        return print_error("predict", err)
    print(summary, file=sys.stderr if summary.failed else sys.stdout)
    return 1 if summary.failed else 0
