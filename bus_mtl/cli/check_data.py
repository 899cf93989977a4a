"""``bus-mtl check-data``: validate a dataset and print its summary; non-zero exit on errors."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bus-mtl check-data",
        description="Check every image and mask, count classes and centres, find near-duplicates. "
        "Without a source option: $BUS_MTL_DATA or ../shared/data/busi.",
    )
    p.add_argument("--busi", type=Path, help="BUSI folder (holding Dataset_BUSI_with_GT)")
    p.add_argument(
        "--udiat", type=Path, help="UDIAT Dataset B folder (original/, GT/, DatasetB.xlsx)"
    )
    p.add_argument(
        "--manifest", type=Path, action="append", default=[], help="manifest CSV (repeatable)"
    )
    p.add_argument("--synthetic", type=int, metavar="N", help="N synthetic phantom images")
    p.add_argument(
        "--normal",
        default="exclude",
        choices=["exclude", "class", "seg_only"],
        help="BUSI normal-class policy (default: exclude)",
    )
    p.add_argument("--image-size", type=int, default=256, help="cache size to fill (default 256)")
    p.add_argument(
        "--dup-threshold",
        type=int,
        default=None,
        help="pHash Hamming threshold (default 10; -1 off)",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="decode cache (default $BUS_MTL_CACHE or ~/.cache/bus_mtl)",
    )
    p.add_argument("--workers", type=int, default=None, help="decoding threads")
    p.add_argument(
        "--split-out", type=Path, default=None, help="also write a 5-fold split JSON here"
    )
    p.add_argument(
        "--conflicts-out",
        type=Path,
        default=None,
        help="also write the cross-class near-duplicate groups (group, id, label, image file; "
        "with --split-out, the fold whose test part holds each) as CSV here",
    )
    p.add_argument("--max-problems", type=int, default=200, help="problems printed at most")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from bus_mtl.data import (
        DEFAULT_DUP_THRESHOLD,
        BUSISource,
        ManifestSource,
        SyntheticSource,
        UDIATSource,
        check_data,
        conflict_rows,
        find_busi_root,
        format_report,
        kfold_split,
        write_conflicts_csv,
    )

    sources = []
    if args.busi:
        sources.append(BUSISource(args.busi, normal=args.normal))
    if args.udiat:
        sources.append(UDIATSource(args.udiat))
    sources += [ManifestSource(m) for m in args.manifest]
    if args.synthetic:
        sources.append(SyntheticSource(n=args.synthetic, image_size=max(args.image_size, 32)))
    if not sources:
        root = find_busi_root()
        if root is None:
            print(
                "bus-mtl check-data: no dataset given and none found at $BUS_MTL_DATA or "
                "../shared/data/busi; pass --busi/--udiat/--manifest/--synthetic N",
                file=sys.stderr,
            )
            return 2
        print(f"using BUSI at {root}")
        sources.append(BUSISource(root, normal=args.normal))
    threshold = DEFAULT_DUP_THRESHOLD if args.dup_threshold is None else args.dup_threshold
    report = check_data(sources, args.image_size, args.cache_dir, threshold, args.workers)
    print(format_report(report, args.max_problems))
    if not report.ok:
        print(f"FAILED: {len(report.errors)} error(s)", file=sys.stderr)
        return 1
    split = None
    if args.split_out:
        split = kfold_split(report.samples, report.groups, dup_threshold=threshold)
        print(f"split written to {split.save(args.split_out)}")
    if args.conflicts_out:
        path = write_conflicts_csv(conflict_rows(report, split), args.conflicts_out)
        print(f"cross-class groups written to {path}")
    print("OK")
    return 0
