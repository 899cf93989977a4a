"""``bus-mtl bench WHAT``: run one benchmark module (each prints its own table); the
measurements behind docs/results.md."""

from __future__ import annotations

import importlib
import sys

# name -> (module, one-line help); ``bus-mtl bench NAME --help`` gives a module's options.
BENCHMARKS = {
    "data": ("bus_mtl.benchmarks.data", "training-loader throughput, cached vs decoding"),
    "models": ("bus_mtl.benchmarks.models", "parameters, GFLOPs and latency of every variant"),
    "inference": ("bus_mtl.benchmarks.inference", "CPU latency of each deployed form"),
    "gpu": ("bus_mtl.benchmarks.gpu", "training throughput on a GPU: library vs bare loop"),
    "accuracy": ("bus_mtl.benchmarks.accuracy", "test accuracy at the same time budget"),
    "deploy-routes": (
        "bus_mtl.benchmarks.deploy_routes",
        "where a checkpoint's inference time goes, and the routes tried",
    ),
    "threshold-rules": (
        "bus_mtl.benchmarks.threshold_rules",
        "threshold rules on a cv folder, judged on validation",
    ),
    "tta": ("bus_mtl.benchmarks.tta", "post-hoc flip TTA on a cv folder's checkpoints"),
    "site-calibration": (
        "bus_mtl.benchmarks.site_calibration",
        "labelled cases a site calibration needs; adapting without labels",
    ),
}


def _usage() -> str:
    width = max(len(n) for n in BENCHMARKS)
    lines = [f"usage: bus-mtl bench {{{'|'.join(BENCHMARKS)}}} [OPTIONS]", ""]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in BENCHMARKS.items()]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    what = argv[0]
    if what not in BENCHMARKS:
        print(
            f"bus-mtl bench: unknown benchmark {what!r}; valid: {', '.join(BENCHMARKS)}",
            file=sys.stderr,
        )
        return 2
    return int(importlib.import_module(BENCHMARKS[what][0]).main(argv[1:]) or 0)
