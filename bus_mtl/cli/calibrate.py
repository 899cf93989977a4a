"""``bus-mtl calibrate``: a model's operating point refitted for another site.

    bus-mtl calibrate (--ckpt CK | --model M.onnx) --manifest LOCAL.csv --out NEW
        [--rule sensitivity|youden_binormal|youden] [--target-sensitivity 0.9] [--site NAME]
    bus-mtl calibrate (--ckpt CK | --model M.onnx) --manifest LOCAL.csv --out NEW
        --unlabelled --adapt prior|bn|both [--source-prior P]

Writes a new checkpoint (or ONNX export) whose stored operating point is the site's;
``bus-mtl predict``, ``evaluate`` and ``export`` then use it with no extra flag. The logic is
:mod:`bus_mtl.experiments.site_calibration`.
"""

from __future__ import annotations

import argparse

from bus_mtl.cli.errors import print_error


def build_parser() -> argparse.ArgumentParser:
    from bus_mtl.experiments.site_calibration import (
        ADAPT_MODES,
        DEFAULT_RULE,
        DEFAULT_TARGET_SENSITIVITY,
        MIN_PER_CLASS,
        SITE_RULES,
    )

    p = argparse.ArgumentParser(
        prog="bus-mtl calibrate",
        description="Fit a model's operating point (temperature and malignancy decision "
        "threshold) to a new site from a few local cases and write a NEW checkpoint or ONNX "
        "export that carries it (recorded with the site, the number of cases, the rule and "
        "the date); predict, evaluate and export then use it. With labels: the temperature "
        "is refitted by minimum NLL and the threshold chosen by --rule (default: the highest "
        f"threshold reaching --target-sensitivity {DEFAULT_TARGET_SENSITIVITY:g}, a screening "
        f"operating point); at least {MIN_PER_CLASS} malignant and {MIN_PER_CLASS} benign "
        "cases are required (fewer are refused). With --unlabelled: no label is read, and "
        "--adapt says how: prior (EM estimate of the site's prevalence; the threshold moves "
        "with it), bn (BatchNorm statistics re-estimated on the site's images; --ckpt only) "
        "or both (bn, then prior). How each did on BrEaST-Lesions_USG with BUSI checkpoints, "
        "labelled and not: docs/results.md (Site calibration).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="training checkpoint")
    src.add_argument("--model", help="ONNX export (bus-mtl export)")
    p.add_argument(
        "--manifest",
        required=True,
        help="CSV of the site's cases: image (path relative to the CSV), label "
        "(benign/malignant; not read with --unlabelled), optional centre",
    )
    p.add_argument("--out", required=True, help="the new checkpoint / .onnx file to write")
    p.add_argument(
        "--rule",
        choices=SITE_RULES,
        default=DEFAULT_RULE,
        help=f"threshold rule on the site's labelled cases (default {DEFAULT_RULE})",
    )
    p.add_argument(
        "--target-sensitivity",
        type=float,
        default=DEFAULT_TARGET_SENSITIVITY,
        help=f"for --rule sensitivity (default {DEFAULT_TARGET_SENSITIVITY:g})",
    )
    p.add_argument(
        "--site",
        help="site name to record (default: the manifest's centre column, else its folder)",
    )
    p.add_argument("--unlabelled", action="store_true", help="adapt without labels (see --adapt)")
    p.add_argument(
        "--adapt",
        choices=ADAPT_MODES,
        default=None,
        help="with --unlabelled (required there): prior, bn (--ckpt only) or both",
    )
    p.add_argument(
        "--source-prior",
        type=float,
        default=None,
        help="with --adapt prior/both: the prevalence the model's probabilities refer to "
        "(default: what its checkpoint or export recorded; 0.5 under the class-balanced loss)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (32)")
    p.add_argument("--device", default="cpu", help="torch device for --ckpt (cpu, cuda, ...)")
    return p


def main(argv: list[str]) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.adapt is not None and not args.unlabelled:
        p.error("--adapt needs --unlabelled (with labels the operating point is refitted)")
    if args.unlabelled and args.adapt is None:
        p.error("--unlabelled needs --adapt prior, bn or both (see --help for what each did)")
    if args.source_prior is not None and args.adapt == "bn":
        p.error("--source-prior is for --adapt prior or both")
    from bus_mtl.experiments.site_calibration import adapt_site, calibrate_site

    try:
        if args.unlabelled:
            result = adapt_site(
                args.out,
                args.manifest,
                args.adapt,
                ckpt=args.ckpt,
                model=args.model,
                site=args.site,
                source_prior=args.source_prior,
                batch_size=args.batch_size,
                device=args.device,
            )
        else:
            result = calibrate_site(
                args.out,
                args.manifest,
                ckpt=args.ckpt,
                model=args.model,
                rule=args.rule,
                target_sensitivity=args.target_sensitivity,
                site=args.site,
                batch_size=args.batch_size,
                device=args.device,
            )
    except (FileNotFoundError, ValueError) as err:  # DataError is a ValueError
        return print_error("calibrate", err)
    print(result)
    return 0
