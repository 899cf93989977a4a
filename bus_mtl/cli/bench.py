"""``bus-mtl bench WHAT``: run one benchmark module (each prints its own table)."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "data": "bus_mtl.benchmarks.data",
    "models": "bus_mtl.benchmarks.models",
    "inference": "bus_mtl.benchmarks.inference",
    "gpu": "bus_mtl.benchmarks.gpu",
    "accuracy": "bus_mtl.benchmarks.accuracy",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help"}:
        print(f"usage: bus-mtl bench {{{'|'.join(BENCHMARKS)}}} [OPTIONS]")
        return 0
    what = argv[0]
    if what not in BENCHMARKS:
        print(
            f"bus-mtl bench: unknown benchmark {what!r}; valid: {', '.join(BENCHMARKS)}",
            file=sys.stderr,
        )
        return 2
    return int(importlib.import_module(BENCHMARKS[what]).main(argv[1:]) or 0)
