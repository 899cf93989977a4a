"""``bus-mtl sweep FILE --trials N``: run a W&B sweep file locally with optuna."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bus-mtl sweep",
        allow_abbrev=False,
        description=(
            "Sample a W&B sweep file's parameters with optuna (bayes=TPE, random, grid) and "
            "run each trial's command (a LightningCLI fit) with ${args} = --name=value. "
            "Arguments after '--' are added to every trial (e.g. --trainer.max_epochs=5). "
            "Trials train outside the tuning hold-out and validate on it (data.tuning=tune); "
            "OUT/tuning.json records it for 'bus-mtl cv --data.tuning=exclude --tuned-by OUT'."
        ),
    )
    p.add_argument("file", help="sweep YAML, e.g. experiments/sweeps/lr_weights.yaml")
    p.add_argument("--trials", type=int, required=True)
    p.add_argument("--out", default=None, help="default results/sweep_<file>_<time>")
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument("--timeout", type=float, default=None, help="seconds per trial")
    p.add_argument("--check", action="store_true", help="only validate the file")
    return p


def main(argv: list[str]) -> int:
    from bus_mtl.experiments.sweep import SweepError, load_sweep, run_local_sweep

    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args = build_parser().parse_args(argv)
    try:
        spec = load_sweep(args.file)
    except SweepError as err:
        print(f"bus-mtl sweep: {err}", file=sys.stderr)
        return 2
    if args.check:
        print(f"{args.file}: valid ({spec.method}, {len(spec.parameters)} parameters)")
        return 0
    if args.trials < 1:
        print("bus-mtl sweep: --trials must be >= 1", file=sys.stderr)
        return 2
    out = Path(args.out or f"results/sweep_{spec.path.stem}_{time.strftime('%Y%m%d_%H%M%S')}")
    try:
        ranked = run_local_sweep(
            spec, args.trials, out, extra, seed=args.seed, timeout=args.timeout
        )
    except SweepError as err:  # e.g. extra arguments that turn the tuning hold-out off
        print(f"bus-mtl sweep: {err}", file=sys.stderr)
        return 2
    print((out / "ranked.md").read_text())
    print(f"results: {out}")
    return 0 if (ranked["state"] == "COMPLETE").any() else 1
