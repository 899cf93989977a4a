"""``bus-mtl bench data``: training-loader throughput, cached vs decoding every PNG.

Measures, in one run with the same workers, sampler, collation and augmentation: the cold
first epoch (``setup()`` validating and filling a fresh decode cache, then one epoch), then
``--rounds`` rounds of one warm epoch (the module's own loader: preloaded uint8 arrays) and
one naive epoch (the same dataset and loader, but decoding and resizing every PNG on every
access), interleaved so that both see the same machine load. Reports the median of each and
the ratio; uses BUSI when found, else the synthetic set (and says so).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import DataLoader

from bus_mtl.data.io import RESIZE_MODES

GOAL = 5.0  # warm / naive: caching must pay for itself many times over on a small CPU


def _epoch(loader: DataLoader) -> tuple[int, float, dict]:
    """Images, seconds, and the first batch (for its dtypes and sizes) of one epoch."""
    start = time.perf_counter()
    n, first = 0, None
    for b in loader:
        n += len(b["id"])
        first = b if first is None else first
    return n, time.perf_counter() - start, first or {}


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        return "n/a"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bus-mtl bench data", description=__doc__)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--rounds",
        "--warm-epochs",
        type=int,
        default=5,
        help="interleaved (warm epoch, naive epoch) pairs; medians are reported",
    )
    p.add_argument("--augmentation", default="light")
    p.add_argument(
        "--resize",
        choices=RESIZE_MODES,
        default="squash",
        help="how images become the square input (data.resize)",
    )
    p.add_argument(
        "--no-preload",
        action="store_true",
        help="warm loader reads one cached .npy per item instead of the in-RAM arrays",
    )
    p.add_argument(
        "--cache-dir", default=None, help="default: a fresh temporary folder (cold start)"
    )
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    return p


@dataclass
class LoaderRun:
    """What one ``bus-mtl bench data`` run measured."""

    images: int  # training images per epoch
    setup_s: float  # cold: setup() validating and filling a fresh decode cache
    first_epoch_s: float  # cold: the first epoch after setup
    batch: dict  # the first batch (its dtypes and sizes)
    warm: list[float]  # images/s of each round's warm (cached) epoch
    naive: list[float]  # images/s of each round's naive (PNG-decoding) epoch
    preloaded_bytes: int

    @property
    def ratio(self) -> float:
        return statistics.median(self.warm) / statistics.median(self.naive)

    @property
    def paired_ratio(self) -> float:
        return statistics.median(w / v for w, v in zip(self.warm, self.naive))


def measure(source, args: argparse.Namespace, cache_dir: str) -> LoaderRun:
    """The cold setup and first epoch, then ``args.rounds`` interleaved warm and naive
    epochs, with ``cache_dir`` as the (fresh) decode cache."""
    from bus_mtl.data import BUSDataModule
    from bus_mtl.data.dataset import BUSDataset
    from bus_mtl.data.io import resize_pair

    dm = BUSDataModule(
        source,
        image_size=args.image_size,
        resize=args.resize,
        batch_size=args.batch_size,
        num_workers=args.workers,
        augmentation=args.augmentation,
        cache_dir=cache_dir,
        val_fraction=0.0,
        preload=not args.no_preload,
    )
    t0 = time.perf_counter()
    dm.setup("fit")
    t_setup = time.perf_counter() - t0
    loader = dm.train_dataloader()
    n, t_first, batch = _epoch(loader)

    class NaiveDataset(BUSDataset):
        def load_pair(self, index):  # decode + resize from the PNGs every time
            image, mask, _ = self.cache.decode(self.samples[index])
            return resize_pair(image, mask, self.cache.image_size, self.cache.resize)

    train = dm.datasets["train"]
    naive_ds = NaiveDataset(
        train.samples, train.cache, train.transform, train.in_channels, train.keys
    )
    naive_loader = dm.loader_for(naive_ds, train=True)
    _epoch(naive_loader)  # untimed: starts its workers, as the warm loader's did
    warm: list[float] = []
    naive: list[float] = []
    for _ in range(args.rounds):
        k, t, _ = _epoch(loader)
        warm.append(k / t)
        k, t, _ = _epoch(naive_loader)
        naive.append(k / t)
    preloaded = train.pixels.nbytes if train.pixels is not None else 0
    return LoaderRun(n, t_setup, t_first, batch, warm, naive, preloaded)


def _print_report(run: LoaderRun, args: argparse.Namespace, load_before: str) -> None:
    n, t_setup, t_first = run.images, run.setup_s, run.first_epoch_s
    image = run.batch["image"]
    batch_bytes = sum(
        v.element_size() * v.nelement() for v in run.batch.values() if hasattr(v, "nelement")
    )
    warm_med, naive_med = statistics.median(run.warm), statistics.median(run.naive)
    print(
        f"{n} training images/epoch, {args.image_size}x{args.image_size} ({args.resize}), "
        f"batch {args.batch_size}, "
        f"{args.workers} workers, augmentation={args.augmentation!r}, {os.cpu_count()} CPUs, "
        f"load average {load_before} before / {_load()} after"
    )
    print(
        f"batch from the workers: image {str(image.dtype).removeprefix('torch.')} "
        f"{'x'.join(map(str, image.shape))}, {batch_bytes / 2**20:.2f} MiB in all; "
        f"preloaded arrays {run.preloaded_bytes / 2**20:.0f} MiB"
        + (" (off: one .npy read per item)" if args.no_preload else "")
    )
    print(f"{'loader':<34}{'seconds':>10}{'images/s':>12}")
    print(f"{'cold (setup + cache build)':<34}{t_setup:>10.2f}{'':>12}")
    print(f"{'cold first epoch (after setup)':<34}{t_first:>10.2f}{n / t_first:>12.1f}")
    cold_rate = n / (t_setup + t_first)
    print(f"{'cold total (setup + epoch 1)':<34}{t_setup + t_first:>10.2f}{cold_rate:>12.1f}")
    print(f"{'warm (cached), median epoch':<34}{n / warm_med:>10.2f}{warm_med:>12.1f}")
    print(f"{'naive (PNG decode), median epoch':<34}{n / naive_med:>10.2f}{naive_med:>12.1f}")
    print(
        "per round, warm / naive images/s: "
        + ", ".join(f"{w:.0f}/{v:.0f}" for w, v in zip(run.warm, run.naive))
    )
    print(
        f"warm / naive = {run.ratio:.1f}x (median of per-round ratios {run.paired_ratio:.1f}x; "
        f"goal >= {GOAL:g}x)"
    )


def _summary(run: LoaderRun, args: argparse.Namespace, which: str, load_before: str) -> dict:
    """The ``--json`` record of ``run``."""
    return {
        "source": which,
        "images_per_epoch": run.images,
        "image_size": args.image_size,
        "resize": args.resize,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "augmentation": args.augmentation,
        "preload": not args.no_preload,
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "batch_image_dtype": str(run.batch["image"].dtype),
        "setup_s": run.setup_s,
        "cold_first_epoch_images_per_s": run.images / run.first_epoch_s,
        "warm_images_per_s": run.warm,
        "naive_images_per_s": run.naive,
        "warm_median": statistics.median(run.warm),
        "naive_median": statistics.median(run.naive),
        "ratio": run.ratio,
        "ratio_paired_median": run.paired_ratio,
        "goal": GOAL,
    }


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.rounds < 1:
        raise SystemExit("bus-mtl bench data: --rounds must be >= 1")

    from bus_mtl.data import default_source

    source, which = default_source(image_size=args.image_size)
    print(which)
    load_before = _load()
    with tempfile.TemporaryDirectory(prefix="bus_mtl_bench_") as tmp:
        run = measure(source, args, args.cache_dir or tmp)
    _print_report(run, args, load_before)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        summary = _summary(run, args, which, load_before)
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0
