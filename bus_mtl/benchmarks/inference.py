"""``bus-mtl bench inference``: CPU latency per image, PyTorch eager vs ONNX Runtime.

One process, same threads and input for both runtimes: the paper's best variant and the smp
U-Net comparator by default. Reports the median of ``--runs`` single-image forwards after
``--warmup`` untimed ones (random init: latency does not depend on the weights).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

DEFAULT_VARIANTS = ("seg_features_effnet", "smp_unet")


def _median_ms(fn: Callable[[], object], warmup: int, runs: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


def bench_variant(
    variant: str, image_size: int, threads: int, warmup: int, runs: int, workdir: Path
) -> dict[str, float | str]:
    """Median latency (ms) of one image through ``variant`` in PyTorch and ONNX Runtime."""
    import onnxruntime as ort
    import torch

    from bus_mtl.inference.export import export_onnx
    from bus_mtl.inference.metadata import ModelInfo
    from bus_mtl.models import create

    torch.manual_seed(0)
    net = create(variant).eval()
    info = ModelInfo(
        image_size=image_size, variant=variant, has_seg=net.has_seg, has_cls=net.has_cls
    )
    x = torch.randn(1, 1, image_size, image_size)
    report = export_onnx(net, info, workdir / f"{variant}.onnx")  # also checks parity

    def eager() -> object:
        with torch.inference_mode():
            return net(x)

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(report.path), options, providers=["CPUExecutionProvider"])
    feed = {"image": x.numpy()}
    return {
        "variant": variant,
        "params_M": sum(p.numel() for p in net.parameters()) / 1e6,
        "torch_ms": _median_ms(eager, warmup, runs),
        "onnx_ms": _median_ms(lambda: session.run(None, feed), warmup, runs),
        "max_abs_diff": max(report.max_abs_diff.values()),
    }


def format_table(rows: list[dict[str, float | str]]) -> str:
    head = (
        f"{'variant':<22} {'params':>8} {'PyTorch eager':>14} {'ONNX Runtime':>13} {'speed-up':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['variant']:<22} {r['params_M']:>7.2f}M {r['torch_ms']:>11.1f} ms "
            f"{r['onnx_ms']:>10.1f} ms {r['torch_ms'] / r['onnx_ms']:>8.2f}x"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bus-mtl bench inference", description=__doc__)
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--runs", type=int, default=30)
    args = p.parse_args(argv)
    if args.threads < 1 or args.runs < 1 or args.warmup < 0:
        p.error("--threads and --runs must be >= 1, --warmup >= 0")

    import onnxruntime as ort
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            rows.append(
                bench_variant(
                    variant, args.image_size, args.threads, args.warmup, args.runs, Path(tmp)
                )
            )
    print(
        f"CPU latency per {args.image_size}x{args.image_size} image (batch 1, 1 channel), "
        f"{args.threads} threads, median of {args.runs} after {args.warmup} warm-up runs"
    )
    print(
        f"torch {torch.__version__}, onnxruntime {ort.__version__}, "
        f"{platform.processor() or platform.machine()}, numpy {np.__version__}"
    )
    print(format_table(rows))
    return 0
