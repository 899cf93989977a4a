"""``bus-mtl cv``: k-fold (or cross-centre) cross-validation of one configuration."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bus_mtl.experiments.cv import PROTOCOLS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bus-mtl cv",
        allow_abbrev=False,
        description=(
            "Run fit + test for every fold of one split (written once to OUT/split.json), "
            "each fold built like bus-mtl main (in this process; in a subprocess per fold "
            "with --parallel > 1); resumable. Unknown arguments (the data source "
            "--data.sources FILE, a net --model.net FILE, --trainer.max_epochs=30, ...) are "
            "passed to every fold's LightningCLI, after the --config files."
        ),
    )
    p.add_argument(
        "--config",
        action="append",
        required=True,
        help="LightningCLI config file (repeat); a net or data-source preset goes with "
        "--model.net / --data.sources",
    )
    p.add_argument("--folds", type=int, default=5, help="number of k-fold folds (default 5)")
    p.add_argument("--out", default=None, help="results folder (default results/cv_<time>)")
    p.add_argument("--parallel", type=int, default=1, help="folds run at once (default 1)")
    p.add_argument(
        "--protocol",
        default="kfold",
        help=f"comma list of {PROTOCOLS}: by_centre trains on one centre, tests on the other",
    )
    p.add_argument("--seed", type=int, default=42, help="fold k uses seed_everything = SEED + k")
    p.add_argument(
        "--tuned-by",
        default=None,
        metavar="SWEEP",
        help=(
            "the hyper-parameters come from this sweep (its folder or tuning.json, or a trial's "
            "split.json): refuse to run when a test fold holds an image it tuned on; use with "
            "--data.tuning=exclude"
        ),
    )
    p.add_argument(
        "--final",
        action="store_true",
        help=(
            "declare this the run to report: refuse data.tuning: off (every image tested, so "
            "choices made on them could have seen the test images); use with "
            "--data.tuning exclude (docs/protocol.md)"
        ),
    )
    return p


def parse_protocols(text: str) -> list[str]:
    protocols = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad or not protocols:
        raise SystemExit(f"--protocol: {bad or text!r} not in {PROTOCOLS}")
    return protocols


def main(argv: list[str]) -> int:
    from bus_mtl.cli.lightning import build_cli
    from bus_mtl.configs import check_config_file
    from bus_mtl.experiments.cv import run_cv
    from bus_mtl.experiments.tuning import TuningLeak

    args, extra = build_parser().parse_known_args(argv)
    for path in args.config:
        check_config_file(path)
    protocols = parse_protocols(args.protocol)
    out = Path(args.out or f"results/cv_{time.strftime('%Y%m%d_%H%M%S')}")
    failed = {}
    for protocol in protocols:
        pdir = out if len(protocols) == 1 else out / protocol
        try:
            payload, errors = run_cv(
                args.config,
                pdir,
                folds=args.folds,
                extra=extra,
                parallel=args.parallel,
                protocol=protocol,
                seed=args.seed,
                argv=["cv", *argv],
                tuned_by=args.tuned_by,
                build=build_cli,
                final=args.final,
            )
        except TuningLeak as err:
            print(f"bus-mtl cv: refused: {err}", file=sys.stderr)
            return 2
        failed.update({f"{pdir}/fold_{k}": e for k, e in errors.items()})
        if payload is not None:
            print((pdir / "summary.md").read_text())
    if len(protocols) > 1:
        _write_protocol_table(out, protocols)
    for where, err in failed.items():
        print(f"bus-mtl cv: {where} failed: {err}", file=sys.stderr)
    print(f"results: {out}")
    if not failed and len(protocols) == 1:
        print(
            f"the fold models as one model: bus-mtl ensemble --cv {out} --out {out}/ensemble.ckpt"
        )
    return 1 if failed else 0


def _write_protocol_table(out: Path, protocols: list[str]) -> None:
    """One table with a ``protocol`` column: k-fold beside cross-centre numbers."""
    import pandas as pd

    frames = []
    for protocol in protocols:
        path = out / protocol / "summary.csv"
        if path.is_file():
            frames.append(pd.read_csv(path).assign(protocol=protocol))
    if frames:
        table = pd.concat(frames, ignore_index=True)
        cols = ["protocol", *[c for c in table.columns if c != "protocol"]]
        table[cols].to_csv(out / "summary.csv", index=False)
