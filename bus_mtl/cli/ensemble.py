"""``bus-mtl ensemble (--cv DIR | CKPT CKPT [...]) --out ENSEMBLE.ckpt``."""

from __future__ import annotations

import argparse

from bus_mtl.cli.errors import print_error


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bus-mtl ensemble",
        description="Join trained models (the fold models of a bus-mtl cv run, or any "
        "checkpoints with the same input and classes) into one model: the mean of their "
        "calibrated probabilities and of their mask probabilities, decided at the mean of "
        "their stored thresholds. Writes an ordinary checkpoint: evaluate, predict, calibrate "
        "and export take it with --ckpt (export writes one ONNX graph).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--cv", metavar="DIR", help="a bus-mtl cv folder: its folds' best models")
    src.add_argument("ckpts", nargs="*", default=[], metavar="CKPT", help="checkpoints (2 or more)")
    p.add_argument("--out", required=True, help="the ensemble checkpoint to write (.ckpt)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from bus_mtl.models.ensemble_checkpoint import cv_checkpoints, write_ensemble_checkpoint
    from bus_mtl.models.rebuild import load_checkpoint

    try:
        ckpts = cv_checkpoints(args.cv) if args.cv else args.ckpts
        out = write_ensemble_checkpoint(ckpts, args.out, overwrite=args.overwrite)
        meta = load_checkpoint(out)["bus_mtl"]
    except (FileNotFoundError, ValueError) as err:
        return print_error("ensemble", err)
    record = meta["ensemble"]
    print(
        f"wrote {out}: {meta['variant']}, input {meta['image_size']} px ({meta['resize']}), "
        f"test-time augmentation {meta['tta']}"
    )
    for mode, point in meta["operating_points"].items():
        members = ", ".join(f"{t:.3f}" for t in record["member_thresholds"][mode])
        print(f"  tta {mode}: threshold {point['decision_threshold']:.3f} = mean of ({members})")
    for path in record["members"]:
        print(f"  member {path}")
    return 0
