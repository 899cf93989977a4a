"""``bus-mtl bench inference``: CPU latency per image of each deployed form against PyTorch
eager, and (with ``--ckpt``) the accuracy each form costs.

Forms (``--forms``):

* ``eager``: PyTorch eager, ``torch.inference_mode``, ``--threads`` threads;
* ``onnx``: the fp32 ONNX export in a default onnxruntime session (``--threads`` intra-op);
* ``onnx-opt``: the same file in the serving session the ``Predictor`` uses
  (``bus_mtl.inference.predictor.session_options``: all graph optimisations, sequential,
  denormals flushed to zero);
* ``int8``: the int8 static-quantised (QDQ, per-channel, reduce-range) copy in the serving
  session; calibrated on training images of ``--fold`` with a checkpoint, else on random
  inputs.

Every form of every variant is timed in the same rounds, interleaved (A/B/A/B: one
single-image forward of each per round, ``--runs`` rounds after ``--warmup``), so load from
other processes on a shared machine hits all forms alike; the table gives medians and the
interquartile range, and the 1-minute load average before and after. Without ``--ckpt`` the
nets are randomly initialised (latency does not depend on the weights). With
``--ckpt VARIANT=PATH`` that variant's network is the checkpoint's, and each deployed form's
accuracy is gated against it on BUSI fold ``--fold``'s test part (Dice and AUC at each
image's original size, the checkpoint's own input size): the table gives the change in
points. A checkpoint trained with test-time augmentation (``model.tta: hflip``) runs with it
in every form, eager included (the image and its mirror as one batch of 2, as its export
does), so the ratios compare like with like; the table marks such a variant ``+hflip``.
``--tta none`` times (and gates) the single pass of such a checkpoint instead, with the
operating point fitted for it: the deployment that trades the mirror's accuracy for half
the latency (``bus-mtl export --tta none``).
Writes ``inference.csv`` and ``inference.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bus_mtl.inference.metadata import TTA_MODES

DEFAULT_VARIANTS = ("seg_features_effnet", "smp_unet")
FORMS = ("eager", "onnx", "onnx-opt", "int8")
FORM_LABELS = {
    "eager": "PyTorch eager",
    "onnx": "ONNX Runtime fp32, default session",
    "onnx-opt": "ONNX Runtime fp32, serving session",
    "int8": "ONNX Runtime int8 (QDQ), serving session",
}
# The deployment goals the table is read against: exporting must pay for itself (the best
# variant deployed at <= 0.5x its own eager latency), and the paper's best must cost no more
# than the smp U-Net peer in plain fp32 ONNX Runtime. Measured figures: docs/results.md.
BEST, PEER = "seg_features_effnet", "smp_unet"
EAGER_RATIO_GOAL = 0.5
CALIBRATION_RANDOM = 8


@dataclass
class Row:
    """One (variant, form) line of the table."""

    variant: str
    form: str
    params_M: float
    image_size: int
    median_ms: float = float("nan")
    p25_ms: float = float("nan")
    p75_ms: float = float("nan")
    min_ms: float = float("nan")
    speedup: float = float("nan")  # own eager median / this median
    dice: float = float("nan")
    auc: float = float("nan")
    delta_dice: float = float("nan")  # points (0-100 scale), deployed - eager
    delta_auc: float = float("nan")
    gate: str = ""  # "passed" / "FAILED" / "" (no checkpoint)
    tta: str = "none"  # the checkpoint's test-time augmentation, in every form
    times_ms: list[float] = field(default_factory=list, repr=False)


def interleaved(
    fns: dict[tuple[str, str], Callable[[], object]],
    warmup: int,
    runs: int,
    pause_s: float = 0.0,
) -> dict[tuple[str, str], list[float]]:
    """Per key, ``runs`` wall times (ms) of ``fn()``. Every round calls each ``fn`` once
    (after ``warmup`` untimed rounds), so slow phases of a shared CPU hit all alike; round r
    starts at the r-th form (rotation), so no form always follows the same one, and an
    untimed ``pause_s`` before each call lets the previous runtime's busy-waiting threads
    park (onnxruntime's and OpenMP's spin after each call and would slow the next form)."""
    keys = list(fns)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[tuple[str, str], list[float]] = {k: [] for k in fns}
    for r in range(runs):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            if pause_s:
                time.sleep(pause_s)
            t0 = time.perf_counter()
            fns[key]()
            times[key].append(1000.0 * (time.perf_counter() - t0))
    return times


def _load_net(variant: str, ckpt: str | None, net_tta: str | None = None):
    import torch

    from bus_mtl.models import create, with_tta

    if ckpt is None:
        torch.manual_seed(0)
        return with_tta(create(variant), net_tta or "none").eval(), None
    from bus_mtl.inference.torch_predictor import load_net_and_info

    # With the checkpoint's test-time augmentation (FlipTTA), as its export has it: eager and
    # deployed forms then do the same work. net_tta: another mode's network and operating point.
    net, info = load_net_and_info(ckpt, tta=net_tta)
    if info.variant and info.variant != variant:
        raise ValueError(f"--ckpt {variant}={ckpt}: the checkpoint is a {info.variant!r} model")
    return net.eval(), info


def prepare_variant(
    variant: str,
    forms: list[str],
    image_size: int,
    threads: int,
    workdir: Path,
    ckpt: str | None = None,
    calibration: list[np.ndarray] | None = None,
    spinning: bool = True,
    atol: float = 1e-3,
    net_tta: str | None = None,
) -> tuple[dict[str, Callable[[], object]], dict[str, object]]:
    """The timed callables of ``variant``'s forms at ``image_size`` and facts about them."""
    import onnxruntime as ort
    import torch

    from bus_mtl.inference.export import export_onnx, sample_inputs
    from bus_mtl.inference.metadata import ModelInfo
    from bus_mtl.inference.predictor import session_options
    from bus_mtl.inference.quantize import calibration_batches, quantize_onnx

    net, ck_info = _load_net(variant, ckpt, net_tta)
    base = dict(ck_info.to_dict()) if ck_info is not None else {"tta": net_tta or "none"}
    base.update(image_size=image_size, variant=variant, has_seg=net.has_seg, has_cls=net.has_cls)
    base.setdefault("in_channels", getattr(net, "in_channels", 1))
    base.setdefault("num_classes", getattr(net, "num_classes", 1))
    info = ModelInfo.from_dict(base)
    x = torch.randn(1, info.in_channels, image_size, image_size)
    feed = {"image": x.numpy()}
    fp32 = export_onnx(net, info, workdir / f"{variant}_{image_size}.onnx", atol=atol)
    fns: dict[str, Callable[[], object]] = {}

    def eager() -> object:
        with torch.inference_mode():
            return net(x)

    def session(path: Path, optimized: bool) -> Callable[[], object]:
        if optimized:
            opts = session_options(threads, optimized=True, spinning=spinning)
        else:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
        s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return lambda: s.run(None, feed)

    for form in forms:
        if form == "eager":
            fns[form] = eager
        elif form == "onnx":
            fns[form] = session(fp32.path, optimized=False)
        elif form == "onnx-opt":
            fns[form] = session(fp32.path, optimized=True)
        elif form == "int8":
            if calibration is not None:
                batches = calibration_batches(calibration, info)
            else:
                batches = list(sample_inputs(info, n=CALIBRATION_RANDOM).numpy()[:, None])
            q = quantize_onnx(fp32.path, workdir / f"{variant}_{image_size}.int8.onnx", batches)
            fns[form] = session(q, optimized=True)
    facts = {
        "params_M": sum(p.numel() for p in net.parameters()) / 1e6,
        "max_abs_diff": max(fp32.max_abs_diff.values()),
        "tta": info.tta,
    }
    return fns, facts


def gate_forms(
    variant: str,
    ckpt: str,
    forms: list[str],
    samples,
    calibration: list[np.ndarray] | None,
    threads: int,
    workdir: Path,
    spinning: bool = True,
    atol: float = 1e-3,
    net_tta: str | None = None,
) -> dict[str, dict[str, float]]:
    """Dice/AUC of eager and of each deployed form of ``ckpt`` (at its own input size) on
    ``samples``; per form ``{"dice", "auc", "delta_dice", "delta_auc", "passed"}``."""
    from bus_mtl.inference.export import export_checkpoint
    from bus_mtl.inference.gate import check_accuracy, evaluate
    from bus_mtl.inference.predictor import Predictor
    from bus_mtl.inference.torch_predictor import TorchPredictor

    eager = TorchPredictor.from_checkpoint(ckpt, tta=net_tta)
    ref = evaluate(eager, samples)
    out = {"eager": {"dice": ref.dice, "auc": ref.auc}}
    fp32 = export_checkpoint(
        ckpt, "onnx", workdir / f"gate_{variant}.onnx", atol=atol, tta=net_tta
    ).path
    int8 = None
    for form in forms:
        if form == "eager":
            continue
        if form == "int8" and int8 is None:
            int8 = export_checkpoint(
                ckpt, "onnx", workdir / f"gate_{variant}.int8.onnx", quantize="int8",
                calibration=calibration, atol=atol, tta=net_tta,
            ).path  # fmt: skip
        path = int8 if form == "int8" else fp32
        deployed = Predictor(path, num_threads=threads, optimized=form != "onnx", spinning=spinning)
        rep = check_accuracy(eager, deployed, samples, what=form, reference_scores=ref)
        out[form] = {
            "dice": rep.deployed.dice,
            "auc": rep.deployed.auc,
            "delta_dice": 100 * rep.delta["dice"],
            "delta_auc": 100 * rep.delta["auc"],
            "passed": rep.passed,
        }
    return out


def format_table(rows: list[Row]) -> str:
    head = (
        f"{'variant':<20} {'form':<40} {'params':>7} {'median':>9} {'p25-p75':>13} {'min':>8} "
        f"{'vs eager':>9} {'dDice':>6} {'dAUC':>6} {'gate':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        acc = (
            f"{r.delta_dice:>+6.2f} {r.delta_auc:>+6.2f} {r.gate:>6}"
            if r.gate
            else f"{'':>6} {'':>6} {'':>6}"
        )
        name = r.variant if r.tta == "none" else f"{r.variant}+{r.tta}"
        lines.append(
            f"{name:<20} {FORM_LABELS[r.form]:<40} {r.params_M:>6.2f}M "
            f"{r.median_ms:>6.1f} ms {r.p25_ms:>5.0f}-{r.p75_ms:<5.0f}ms {r.min_ms:>5.1f} ms "
            f"{r.speedup:>8.2f}x {acc}"
        )
    return "\n".join(lines)


def goal_lines(rows: list[Row], stat: str = "median_ms") -> list[str]:
    """The deployment goals (see ``EAGER_RATIO_GOAL``), read from the table (``stat``: ``"median_ms"`` or ``"min_ms"``):
    the best variant's fastest deployed form that did not fail its accuracy gate, vs its own
    eager (<= 0.5x) and vs the peer in plain fp32 ONNX Runtime (<= 1x)."""
    by = {(r.variant, r.form): r for r in rows}
    deployed = [
        r for r in rows if r.variant == BEST and r.form != "eager" and r.gate in ("", "passed")
    ]
    peer = by.get((PEER, "onnx"))
    eager = by.get((BEST, "eager"))
    if not deployed:
        return []
    best = min(deployed, key=lambda r: getattr(r, stat))
    ms = getattr(best, stat)
    word = stat.removesuffix("_ms")
    out = [f"fastest deployed {BEST} by {word}: {FORM_LABELS[best.form]}, {ms:.1f} ms"]
    if eager is not None:
        ratio = ms / getattr(eager, stat)
        ok = "met" if ratio <= EAGER_RATIO_GOAL else "NOT met"
        out.append(
            f"  vs its eager {getattr(eager, stat):.1f} ms: {ratio:.2f}x "
            f"(goal <= {EAGER_RATIO_GOAL}x: {ok})"
        )
    if peer is not None:
        ratio = ms / getattr(peer, stat)
        ok = "met" if ratio <= 1.0 else "NOT met"
        out.append(
            f"  vs {PEER} in fp32 ONNX Runtime {getattr(peer, stat):.1f} ms: {ratio:.2f}x "
            f"(goal <= 1.00x: {ok})"
        )
    return out


def _parse_ckpts(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        variant, sep, path = item.partition("=")
        if not sep or not variant or not path:
            raise ValueError(f"--ckpt takes VARIANT=PATH, got {item!r}")
        out[variant] = path
    return out


def _write(rows: list[Row], meta: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    keys = [k for k in asdict(rows[0]) if k != "times_ms"] if rows else []
    with open(out / "inference.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: v for k, v in asdict(r).items() if k in keys})
    data = {"meta": meta, "rows": [asdict(r) for r in rows]}
    (out / "inference.json").write_text(json.dumps(data, indent=2, default=float) + "\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bus-mtl bench inference",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    p.add_argument("--forms", nargs="+", default=list(FORMS), choices=FORMS)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=5, help="untimed rounds (5)")
    p.add_argument("--runs", type=int, default=30, help="timed interleaved rounds (30)")
    p.add_argument(
        "--ckpt",
        action="append",
        default=[],
        metavar="VARIANT=PATH",
        help="time this checkpoint's network for VARIANT and gate each form's accuracy "
        "against it on the test part of --fold (repeatable)",
    )
    p.add_argument(
        "--atol",
        type=float,
        default=1e-3,
        help="largest accepted max |ONNX fp32 - PyTorch| of the exports (1e-3: trained "
        "nets' logits reach tens, where fp32 reordering leaves ~1e-4)",
    )
    p.add_argument("--fold", type=int, default=0)
    p.add_argument(
        "--busi-root", help="BUSI folder (default: $BUS_MTL_DATA or ../shared/data/busi)"
    )
    p.add_argument("--calibration-images", type=int, default=64)
    p.add_argument("--gate-images", type=int, help="score only this many test images (all)")
    p.add_argument(
        "--no-spinning",
        action="store_true",
        help="serving sessions without busy-waiting intra-op threads (kinder to a shared CPU)",
    )
    p.add_argument(
        "--pause-ms",
        type=float,
        default=50.0,
        help="untimed pause before each timed call, for busy-waiting threads to park (50)",
    )
    p.add_argument(
        "--tta",
        choices=TTA_MODES,
        help="test-time augmentation of every timed network (default: each checkpoint's own, "
        "none for random weights); 'none' with a model.tta: hflip checkpoint times its single "
        "pass with the operating point fitted for it",
    )
    p.add_argument("--out", default="results/bench_inference", help="CSV/JSON folder")
    return p


def _parse_args(argv: list[str]) -> tuple[argparse.Namespace, dict[str, str]]:
    """The options and ``{variant: checkpoint}``; argparse's usage error (exit 2) on a bad
    value or combination."""
    p = build_parser()
    args = p.parse_args(argv)
    if args.threads < 1 or args.runs < 1 or args.warmup < 0:
        p.error("--threads and --runs must be >= 1, --warmup >= 0")
    try:
        ckpts = _parse_ckpts(args.ckpt)
    except ValueError as err:
        p.error(str(err))
    unknown = sorted(set(ckpts) - set(args.variants))
    if unknown:
        p.error(f"--ckpt for variants not benchmarked: {unknown}")
    return args, ckpts


def _gate_data(args: argparse.Namespace, ckpts: dict[str, str]):
    """BUSI fold ``--fold``'s test samples (the accuracy gate) and training images (int8
    calibration); ``(None, None)`` without a checkpoint to gate."""
    if not ckpts:
        return None, None
    from bus_mtl.inference.gate import load_fold_samples

    print(f"loading BUSI fold {args.fold} (test part for the gate, training for int8)")
    samples = load_fold_samples(args.busi_root, args.fold, "test", n=args.gate_images)
    calib: list[np.ndarray] | None = None
    if "int8" in args.forms:
        train = load_fold_samples(args.busi_root, args.fold, "train", n=args.calibration_images)
        calib = [s.image for s in train]
    return samples, calib


@dataclass
class Timing:
    """What one bench run measured."""

    times: dict[tuple[str, str], list[float]]  # (variant, form) -> ms of each timed round
    facts: dict[str, dict]  # variant -> prepare_variant's facts
    gates: dict[str, dict[str, dict[str, float]]]  # variant -> form -> gate_forms' figures
    load_before: float  # 1-minute load average before the timed rounds
    load_after: float
    wall_s: float  # of the timed rounds


def _measure(
    args: argparse.Namespace,
    ckpts: dict[str, str],
    samples,
    calib: list[np.ndarray] | None,
) -> Timing:
    """Export every variant's forms, time them all in the same interleaved rounds, then gate
    each checkpoint's forms (exports live in a temporary folder for the whole run)."""
    spinning = not args.no_spinning
    gates: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        fns: dict[tuple[str, str], Callable[[], object]] = {}
        facts: dict[str, dict] = {}
        for variant in args.variants:
            print(f"exporting {variant} ({', '.join(args.forms)})", flush=True)
            v_fns, facts[variant] = prepare_variant(
                variant,
                args.forms,
                args.image_size,
                args.threads,
                Path(tmp),
                ckpts.get(variant),
                calib if variant in ckpts else None,
                spinning,
                args.atol,
                args.tta,
            )
            fns.update({(variant, f): fn for f, fn in v_fns.items()})
        load_before = os.getloadavg()[0]
        print(f"timing {len(fns)} forms, {args.runs} interleaved rounds", flush=True)
        t0 = time.perf_counter()
        times = interleaved(fns, args.warmup, args.runs, args.pause_ms / 1000)
        wall = time.perf_counter() - t0
        load_after = os.getloadavg()[0]
        for variant, path in ckpts.items():
            print(f"accuracy gate of {variant} on fold {args.fold}'s test part", flush=True)
            gates[variant] = gate_forms(
                variant,
                path,
                args.forms,
                samples,
                calib,
                args.threads,
                Path(tmp),
                spinning,
                args.atol,
                args.tta,
            )
    return Timing(times, facts, gates, load_before, load_after, wall)


def _rows(timing: Timing, image_size: int) -> list[Row]:
    """One table row per (variant, form): latency percentiles, speed-up against the
    variant's own eager form, and the accuracy gate's figures where a checkpoint was given."""
    rows: list[Row] = []
    for (variant, form), ts in timing.times.items():
        q = np.percentile(ts, [25, 75])
        row = Row(
            variant,
            form,
            timing.facts[variant]["params_M"],
            image_size,
            median_ms=statistics.median(ts),
            p25_ms=float(q[0]),
            p75_ms=float(q[1]),
            min_ms=min(ts),
            times_ms=[round(t, 3) for t in ts],
            tta=timing.facts[variant]["tta"],
        )
        g = timing.gates.get(variant, {}).get(form)
        if g is not None:
            row.dice, row.auc = g["dice"], g["auc"]
            if form != "eager":
                row.delta_dice, row.delta_auc = g["delta_dice"], g["delta_auc"]
                row.gate = "passed" if g["passed"] else "FAILED"
        rows.append(row)
    for r in rows:
        eager = next((e for e in rows if e.variant == r.variant and e.form == "eager"), None)
        if eager is not None:
            r.speedup = eager.median_ms / r.median_ms
    return rows


def _cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        return next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _meta(
    argv: list[str],
    args: argparse.Namespace,
    ckpts: dict[str, str],
    timing: Timing,
    n_gate_images: int | None,
) -> dict:
    """The machine, versions and settings the figures were taken with (``inference.json``)."""
    import onnxruntime as ort
    import torch

    return {
        "command": "bus-mtl bench inference " + " ".join(argv),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "image_size": args.image_size,
        "runs": args.runs,
        "warmup": args.warmup,
        "pause_ms": args.pause_ms,
        "spinning": not args.no_spinning,
        "load_avg_1min_before": timing.load_before,
        "load_avg_1min_after": timing.load_after,
        "timing_wall_s": timing.wall_s,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "checkpoints": ckpts,
        "tta_option": args.tta or "checkpoint",
        "fold": args.fold if ckpts else None,
        "gate_images": n_gate_images,
        "atol": args.atol,
        "max_abs_diff_fp32": {v: f["max_abs_diff"] for v, f in timing.facts.items()},
        "tta": {v: f["tta"] for v, f in timing.facts.items()},
    }


def _print_report(rows: list[Row], meta: dict) -> None:
    """The table, what it was measured on, and the deployment goals read from it."""
    size, threads = meta["image_size"], meta["threads"]
    print()
    print(
        f"CPU latency per {size}x{size} image (batch 1), {threads} threads; median of "
        f"{meta['runs']} interleaved rounds after {meta['warmup']} warm-up; "
        f"vs eager = own eager median / this median"
    )
    print(
        f"{meta['cpu']}, {meta['cpus']} CPUs; torch {meta['torch']}, onnxruntime "
        f"{meta['onnxruntime']}; 1-min load average {meta['load_avg_1min_before']:.2f} before, "
        f"{meta['load_avg_1min_after']:.2f} after timing (this process adds about 1-2; more: "
        "other processes shared the CPU)"
    )
    if meta["checkpoints"]:
        print(
            f"dDice/dAUC: deployed - eager, points, BUSI fold {meta['fold']} test part "
            f"({meta['gate_images']} images, each checkpoint at its own input size); gate: "
            "both within 0.5"
        )
    for variant, tta in meta["tta"].items():
        if tta != "none":
            print(
                f"{variant}+{tta}: its checkpoint's test-time augmentation ({tta}) runs "
                "in every form, eager included: 2 forward passes (one batch of 2) per image"
            )
    print(format_table(rows))
    for line in goal_lines(rows) + goal_lines(rows, "min_ms"):
        print(line)
    print(
        "  (on a shared CPU the minimum is the closer estimate of an idle machine's latency; "
        "PyTorch eager suffers far more from other processes than onnxruntime)"
    )


def main(argv: list[str]) -> int:
    args, ckpts = _parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    samples, calib = _gate_data(args, ckpts)
    timing = _measure(args, ckpts, samples, calib)
    rows = _rows(timing, args.image_size)
    meta = _meta(argv, args, ckpts, timing, len(samples) if samples is not None else None)
    _print_report(rows, meta)
    out = Path(args.out)
    _write(rows, meta, out)
    print(f"wrote {out / 'inference.csv'} and {out / 'inference.json'}")
    return 0
