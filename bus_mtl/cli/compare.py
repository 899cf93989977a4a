"""``bus-mtl compare``: variant × fold matrix on identical folds, with paired statistics."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bus_mtl.cli.cv import parse_protocols


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bus-mtl compare",
        allow_abbrev=False,
        description=(
            "Cross-validate several variants on one shared split and write the paper-style "
            "table (mean ± std; paired, group-aware p-values with Holm's correction against "
            "a pre-specified reference variant), a plot and per-image predictions joined by "
            "id. Unknown arguments (the data source --data.sources FILE, "
            "--trainer.max_epochs=30, ...) go to every LightningCLI run, after the configs."
        ),
    )
    p.add_argument(
        "--variants",
        required=True,
        help="comma list of experiments/variants/<name>.yaml names, or 'all'",
    )
    p.add_argument(
        "--config",
        action="append",
        default=None,
        help="config files before each variant's (repeat; default experiments/base.yaml); "
        "the data source goes with --data.sources FILE",
    )
    p.add_argument(
        "--variants-dir",
        default=None,
        help="folder of the variant YAMLs (default experiments/variants, else the packaged one)",
    )
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--out", default=None, help="default results/compare_<time>")
    p.add_argument("--parallel", type=int, default=1, help="fold runs at once (default 1)")
    p.add_argument("--protocol", default="kfold", help="comma list of kfold, by_centre")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--reference",
        default=None,
        metavar="NAME",
        help=(
            "variant every p-value compares against; fix it before looking at results "
            "(default seg_features_effnet, the paper's best, or the first variant given "
            "when it is not compared)"
        ),
    )
    p.add_argument(
        "--final",
        action="store_true",
        help=(
            "declare this the comparison to report: refuse data.tuning: off (every image "
            "tested, so choices made on them could have seen the test images); use with "
            "--data.tuning exclude (docs/protocol.md)"
        ),
    )
    return p


def main(argv: list[str]) -> int:
    from bus_mtl.cli.lightning import build_cli
    from bus_mtl.configs import check_config_file, resolve
    from bus_mtl.experiments.compare import run_compare

    args, extra = build_parser().parse_known_args(argv)
    for path in args.config or []:
        check_config_file(path)
    out = Path(args.out or f"results/compare_{time.strftime('%Y%m%d_%H%M%S')}")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    start = time.perf_counter()
    try:
        _, failed = run_compare(
            variants,
            args.config or [resolve("experiments/base.yaml")],
            out,
            folds=args.folds,
            extra=extra,
            parallel=args.parallel,
            protocols=parse_protocols(args.protocol),
            seed=args.seed,
            variants_dir=args.variants_dir or resolve("experiments/variants"),
            argv=["compare", *argv],
            reference=args.reference,
            build=build_cli,
            final=args.final,
        )
    except ValueError as err:
        print(f"bus-mtl compare: {err}", file=sys.stderr)
        return 2
    print((out / "compare.md").read_text())
    for where, err in failed.items():
        print(f"bus-mtl compare: {where} failed: {err}", file=sys.stderr)
    print(f"results: {out}  (wall time {time.perf_counter() - start:.0f} s)")
    return 1 if failed else 0
