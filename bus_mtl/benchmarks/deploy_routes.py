"""``bus-mtl bench deploy-routes CKPT``: where the deployed paper's-best network spends its
time, and the inference routes tried beside ``bus-mtl bench inference`` (figures:
docs/results.md). On one checkpoint's single pass at 256²,
batch 1, ``--threads`` threads, it prints:

1. per part (SegResNet encoder, SegResNet decoder, classifier: adapter, laterals and
   EfficientNet) the PyTorch eager time and the serving onnxruntime session's (its
   profiler's kernel times), and onnxruntime's time per op type;
2. onnxruntime session variants of the same export, timed interleaved: onnxruntime's
   default options, a static batch dimension, ``session.dynamic_block_base=4``, the
   parallel executor (2 inter-op threads);
3. the lossy "frozen GroupNorm" route: every GroupNorm replaced by the fixed per-channel
   affine of its mean statistics on 64 training images of BUSI fold 0 (then foldable like
   BatchNorm), scored by the accuracy gate on fold 0's test part (Dice and AUC within 0.5
   points of the checkpoint run eagerly);
4. SegResNet with GroupNorm against SegResNet with BatchNorm (``norm="batch"``), same
   net otherwise, random weights: eager and onnxruntime latency.

    bus-mtl bench deploy-routes runs/main/SegResNetEffNetFeatures/version_3/checkpoints/best-epoch=014.ckpt
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bus_mtl.benchmarks.inference import interleaved
from bus_mtl.inference.predictor import session_options
from bus_mtl.models import create, export_wrapper
from bus_mtl.models.efficientnet_parts import classify, run_blocks, run_head

SIZE = 256
PAUSE_S = 0.05  # lets the previous runtime's spinning threads park between forms


def part_of(node_name: str) -> str:
    """The network part an onnxruntime node (named after the PyTorch module path) is in."""
    if "down_layers" in node_name or "convInit" in node_name:
        return "SegResNet encoder"
    if any(k in node_name for k in ("up_layers", "up_samples", "conv_final")):
        return "SegResNet decoder"
    if any(
        k in node_name for k in ("effnet", "_blocks", "_conv_head", "_fc", "adapter", "lateral")
    ):
        return "classifier"
    return "layout changes and glue"  # ReorderInput/Output, the fusion adds, outputs


def export(net: nn.Module, path: Path) -> Path:
    wrapper = export_wrapper(net.eval()).eval()
    x = torch.randn(1, 1, SIZE, SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's tracer and deprecation chatter
        torch.onnx.export(
            wrapper, (x,), str(path), input_names=["image"], output_names=wrapper.output_names,
            opset_version=17, dynamo=False, dynamic_axes={"image": {0: "batch"}},
        )  # fmt: skip
    return path


def session(path: Path, threads: int, **config: str):
    import onnxruntime as ort

    opts = session_options(threads)
    for key, value in config.items():
        if key == "defaults":  # onnxruntime's own options, as the bench's "onnx" form
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
        elif key == "parallel":
            opts.execution_mode = ort.ExecutionMode.ORT_PARALLEL
            opts.inter_op_num_threads = 2
        else:
            opts.add_session_config_entry(key, value)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def eager_parts(net, x: torch.Tensor, runs: int) -> dict[str, float]:
    """Median ms of the encoder, decoder and classifier of a SegResNetEffNetFeatures."""
    times = collections.defaultdict(list)
    with torch.inference_mode():
        for i in range(runs + 3):
            t0 = time.perf_counter()
            bottleneck, stages = net.segresnet.encode(x)
            t1 = time.perf_counter()
            net.segresnet.decode(bottleneck, stages[::-1])
            t2 = time.perf_counter()
            by_stride = dict(zip((1, 2, 4, 8), stages))
            h, j = net.adapter(by_stride[net.entry_stride]), net.start
            for r in net.lateral_strides:
                h = run_blocks(net.effnet, h, j, net.splits[r])
                h, j = h + net.laterals[str(r)](by_stride[r]), net.splits[r]
            h = run_blocks(net.effnet, h, j, len(net.effnet._blocks))
            classify(net.effnet, run_head(net.effnet, h))
            t3 = time.perf_counter()
            if i >= 3:
                times["SegResNet encoder"].append(t1 - t0)
                times["SegResNet decoder"].append(t2 - t1)
                times["classifier"].append(t3 - t2)
            time.sleep(PAUSE_S)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def ort_parts(path: Path, threads: int, runs: int) -> tuple[dict[str, float], dict[str, float]]:
    """Mean kernel ms per part and per op type from onnxruntime's profiler."""
    import onnxruntime as ort

    opts = session_options(threads)
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feed = {"image": np.random.randn(1, 1, SIZE, SIZE).astype(np.float32)}
        for _ in range(runs):
            s.run(None, feed)
            time.sleep(PAUSE_S)
        events = json.loads(Path(s.end_profiling()).read_text())
    parts, ops = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            parts[part_of(e["name"])] += e["dur"] / 1000 / runs
            ops[e["args"]["op_name"]] += e["dur"] / 1000 / runs
    return dict(parts), dict(ops)


class FrozenGroupNorm(nn.Module):
    """GroupNorm with fixed statistics: a per-channel affine (what BatchNorm is at eval)."""

    def __init__(self, gn: nn.GroupNorm, mean: torch.Tensor, var: torch.Tensor) -> None:
        super().__init__()
        k = gn.num_channels // gn.num_groups
        mean, var = mean.repeat_interleave(k), var.repeat_interleave(k)
        scale = gn.weight / torch.sqrt(var + gn.eps)
        self.register_buffer("scale", scale.view(1, -1, 1, 1))
        self.register_buffer("shift", (gn.bias - mean * scale).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def freeze_group_norms(net: nn.Module, batches: list[np.ndarray]) -> nn.Module:
    """A copy of ``net`` with each GroupNorm frozen at its mean group statistics on
    ``batches``."""
    out = copy.deepcopy(net).eval()
    stats: dict[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def record(module, inputs, _output):
        x = inputs[0].reshape(inputs[0].shape[0], module.num_groups, -1)
        stats.setdefault(module, []).append((x.mean(-1), x.var(-1, unbiased=False)))

    hooks = [m.register_forward_hook(record) for m in out.modules() if isinstance(m, nn.GroupNorm)]
    with torch.inference_mode():
        for b in batches:
            out(torch.from_numpy(b))
    for h in hooks:
        h.remove()
    for parent in list(out.modules()):
        for name, child in list(parent.named_children()):
            if child in stats:
                mean = torch.cat([s[0] for s in stats[child]]).mean(0)
                var = torch.cat([s[1] for s in stats[child]]).mean(0)
                setattr(parent, name, FrozenGroupNorm(child, mean, var))
    return out


def where_time_goes(net: nn.Module, path: Path, x: torch.Tensor, threads: int, runs: int) -> None:
    """1. Eager and onnxruntime milliseconds per part of the network, and per op type."""
    print(f"1. where the time goes, {SIZE}², batch 1, {threads} threads (ms)")
    eager = eager_parts(net, x, runs)
    ort_by_part, ort_by_op = ort_parts(path, threads, runs)
    for part in ("SegResNet encoder", "SegResNet decoder", "classifier",
                 "layout changes and glue"):  # fmt: skip
        e = eager.get(part)
        o = ort_by_part.get(part, 0.0)
        ratio = f"{o / e:.2f}x" if e else ""
        print(f"   {part:<26} eager {e or 0:7.1f}   onnxruntime {o:7.1f}   {ratio}")
    total = sum(ort_by_op.values())
    top = sorted(ort_by_op.items(), key=lambda kv: -kv[1])[:8]
    print("   onnxruntime by op: " + ", ".join(f"{k} {v / total:.0%}" for k, v in top))


def session_variants(path: Path, x: torch.Tensor, threads: int, runs: int, tmp: Path) -> None:
    """2. The same export under several onnxruntime session options, timed interleaved."""
    print("\n2. onnxruntime session variants (interleaved, median / min ms)")
    import onnx
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_dim_param_fixed

    model = onnx.load(str(path))
    make_dim_param_fixed(model.graph, "batch", 1)
    fix_output_shapes(model)
    static = tmp / "static.onnx"
    onnx.save(model, str(static))
    feed = {"image": x.numpy()}
    variants = {
        "serving session": session(path, threads),
        "onnxruntime's default options": session(path, threads, defaults="1"),
        "static batch dimension": session(static, threads),
        "dynamic_block_base 4": session(path, threads, **{"session.dynamic_block_base": "4"}),
        "parallel executor": session(path, threads, parallel="1"),
    }
    fns = {(k, ""): (lambda s=s: s.run(None, feed)) for k, s in variants.items()}
    times = interleaved(fns, warmup=3, runs=runs, pause_s=PAUSE_S)
    for (k, _), t in times.items():
        print(f"   {k:<30} {statistics.median(t):7.1f} / {min(t):6.1f}")


def frozen_group_norm(ckpt: str, busi_root: str | None) -> None:
    """3. The lossy frozen-GroupNorm route, scored by the accuracy gate on BUSI fold 0."""
    print("\n3. frozen GroupNorm (lossy): accuracy gate on BUSI fold 0's test part")
    from bus_mtl.inference.gate import check_accuracy, load_fold_samples
    from bus_mtl.inference.quantize import calibration_batches
    from bus_mtl.inference.torch_predictor import TorchPredictor, load_net_and_info

    tta_net, tta_info = load_net_and_info(ckpt)
    calibration = load_fold_samples(busi_root, 0, "train", n=64)
    batches = calibration_batches([s.image for s in calibration], tta_info)
    frozen = freeze_group_norms(tta_net, batches)
    report = check_accuracy(
        TorchPredictor(tta_net, tta_info), TorchPredictor(frozen, tta_info),
        load_fold_samples(busi_root, 0, "test"), what="frozen GroupNorm",
    )  # fmt: skip
    r, d = report.reference, report.deployed
    print(
        f"   eager Dice {r.dice:.3f} AUC {r.auc:.3f}; frozen Dice {d.dice:.3f} AUC "
        f"{d.auc:.3f}; gate {'passed' if report.passed else 'FAILED'}"
    )


def group_vs_batch_norm(
    net: nn.Module, x: torch.Tensor, threads: int, runs: int, tmp: Path
) -> None:
    """4. SegResNet with GroupNorm against BatchNorm, same net otherwise, random weights."""
    print("\n4. SegResNet GroupNorm vs BatchNorm, random weights (interleaved, median ms)")
    feed = {"image": x.numpy()}
    fns = {}
    for norm in ("group", "batch"):
        torch.manual_seed(0)
        kwargs = dict(model_name=net.model_name, init_filters=net.segresnet.init_filters)
        n = create("seg_features_effnet", norm=norm, **kwargs).eval()
        s = session(export(n, tmp / f"{norm}.onnx"), threads)

        def run_eager(n=n):
            with torch.inference_mode():
                return n(x)

        fns[(norm, "eager")] = run_eager
        fns[(norm, "onnxruntime")] = lambda s=s: s.run(None, feed)
    times = interleaved(fns, warmup=3, runs=runs, pause_s=PAUSE_S)
    med = {k: statistics.median(v) for k, v in times.items()}
    for norm in ("group", "batch"):
        e, o = med[(norm, "eager")], med[(norm, "onnxruntime")]
        print(f"   {norm:<6} eager {e:7.1f}   onnxruntime {o:7.1f}   {o / e:.2f}x")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="bus-mtl bench deploy-routes", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("ckpt", help="a seg_features_effnet checkpoint (bus-mtl main / fit)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--busi-root", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from bus_mtl.inference.torch_predictor import load_net_and_info

    net, _ = load_net_and_info(args.ckpt, tta="none")
    x = torch.randn(1, 1, SIZE, SIZE)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        path = export(net, tmp / "single.onnx")
        where_time_goes(net, path, x, args.threads, args.runs)
        session_variants(path, x, args.threads, args.runs, tmp)
        frozen_group_norm(args.ckpt, args.busi_root)
        group_vs_batch_norm(net, x, args.threads, args.runs, tmp)
    return 0
