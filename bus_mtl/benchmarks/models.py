"""``bus-mtl bench models``: parameters, GFLOPs, CPU latency (eager vs ONNX Runtime) and,
with CUDA, training throughput of every variant. Prints a Markdown table."""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bus_mtl.models import count_parameters, create, export_wrapper, list_variants


def _median_ms(fn: Callable[[], object], runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def gflops(net: torch.nn.Module, size: int, in_channels: int = 1) -> float:
    """Forward FLOPs (multiply and add counted separately, 2 per MAC) at batch 1, in 1e9."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(torch.randn(1, in_channels, size, size))
    return counter.get_total_flops() / 1e9


def onnx_latency_ms(net: torch.nn.Module, size: int, threads: int, runs: int, warmup: int) -> float:
    import onnxruntime as ort

    wrapper = export_wrapper(net)
    x = torch.randn(1, net.in_channels, size, size)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "net.onnx"
        torch.onnx.export(
            wrapper,
            (x,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=wrapper.output_names,
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"image": x.numpy()}
    return _median_ms(lambda: session.run(None, feed), runs, warmup)


def train_images_per_s(net: torch.nn.Module, size: int, batch: int, steps: int) -> float:
    """CUDA training throughput: bf16 autocast, channels_last, AdamW, both losses."""
    device = torch.device("cuda")
    net = net.to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.randn(batch, net.in_channels, size, size, device=device).to(
        memory_format=torch.channels_last
    )
    mask = (torch.rand(batch, 1, size, size, device=device) > 0.5).float()
    label = torch.randint(0, 2, (batch, 1), device=device).float()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = net(x)
            loss = x.new_zeros(())
            if out.mask is not None:
                loss = loss + F.binary_cross_entropy_with_logits(out.mask.float(), mask)
            if out.logits is not None:
                loss = loss + F.binary_cross_entropy_with_logits(out.logits.float(), label)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bus-mtl bench models", description=__doc__)
    p.add_argument("--variants", nargs="+", default=list_variants(), choices=list_variants())
    p.add_argument("--size", type=int, default=256, help="image side (default 256)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--runs", type=int, default=20, help="timed CPU runs (median)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-onnx", action="store_true", help="skip ONNX Runtime latency")
    p.add_argument("--train-batch", type=int, default=32)
    p.add_argument("--train-steps", type=int, default=20)
    p.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    rows = []
    for name in args.variants:
        torch.manual_seed(0)
        net = create(name).eval()
        x = torch.randn(1, 1, args.size, args.size)
        row: dict[str, object] = {
            "variant": name,
            "params_M": count_parameters(net) / 1e6,
            "gflops": gflops(net, args.size),
        }
        with torch.inference_mode():
            row["eager_ms"] = _median_ms(lambda: net(x), args.runs, args.warmup)  # noqa: B023
        if not args.no_onnx:
            row["onnx_ms"] = onnx_latency_ms(net, args.size, args.threads, args.runs, args.warmup)
        if cuda:
            row["train_img_s"] = train_images_per_s(
                create(name), args.size, args.train_batch, args.train_steps
            )
        rows.append(row)
        print(f"done {name}", flush=True)
    print(_table(rows, args, cuda))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


def _table(rows: list[dict], args: argparse.Namespace, cuda: bool) -> str:
    s = args.size
    header = ["variant", "params (M)", f"GFLOPs @{s}²", f"eager ms ({args.threads} thr)"]
    if not args.no_onnx:
        header.append(f"ONNX RT ms ({args.threads} thr)")
    if cuda:
        header.append(f"train img/s (bf16, bs {args.train_batch}, {torch.cuda.get_device_name()})")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["variant"], f"{r['params_M']:.2f}", f"{r['gflops']:.2f}", f"{r['eager_ms']:.1f}"]
        if not args.no_onnx:
            cells.append(f"{r['onnx_ms']:.1f}")
        if cuda:
            cells.append(f"{r['train_img_s']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(
        f"\nbatch 1, 1×{s}×{s} input, median of {args.runs} runs after {args.warmup} warm-up; "
        "GFLOPs count 2 FLOPs per multiply-add (torch.utils.flop_counter)."
    )
    return "\n".join(lines)
