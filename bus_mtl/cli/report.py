"""``bus-mtl report DIR [-o report.html]``: the HTML report of a results folder."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bus-mtl report",
        description="Write one self-contained HTML file (figures embedded, opens from disk) "
        "for the output folder of bus-mtl main (runs/main/<Net>/version_N), cv, compare or "
        "evaluate: metrics with 95 % intervals, provenance, ROC / reliability / confusion / "
        "threshold / referral figures, per-centre tables and a gallery of the worst, missed, "
        "false-alarm and typical cases with the Grad-CAM of the malignancy logit.",
    )
    p.add_argument("folder", metavar="DIR", help="the results folder")
    p.add_argument("-o", "--out", default=None, help="the HTML file (default DIR/report.html)")
    p.add_argument(
        "--per-section", type=int, default=6, help="cases per gallery section (default 6)"
    )
    p.add_argument("--no-gallery", action="store_true", help="no gallery (no model is run)")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--device", default="cpu", help="torch device of the gallery's model")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from bus_mtl.report import write_report

    try:
        path = write_report(
            args.folder,
            args.out,
            gallery=not args.no_gallery,
            per_section=args.per_section,
            n_boot=args.n_boot,
            seed=args.seed,
            device=args.device,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"bus-mtl report: {err}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0
