"""``bus-mtl bench data``: training-loader throughput, cached vs decoding every PNG.

Measures, in one run with the same workers and the light preset: the cold first epoch
(``setup()`` validating and filling a fresh decode cache, then one epoch), warm epochs
(cache hits only), and a naive loader that decodes and resizes every PNG every epoch.
Uses BUSI when found, else the synthetic set (and says so).
"""

from __future__ import annotations

import argparse
import tempfile
import time

from torch.utils.data import DataLoader


def _epoch(loader: DataLoader) -> tuple[int, float]:
    start = time.perf_counter()
    n = sum(len(b["id"]) for b in loader)
    return n, time.perf_counter() - start


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bus-mtl bench data", description=__doc__)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--warm-epochs", type=int, default=2)
    p.add_argument("--augmentation", default="light")
    p.add_argument(
        "--cache-dir", default=None, help="default: a fresh temporary folder (cold start)"
    )
    args = p.parse_args(argv)

    from bus_mtl.data import BUSDataModule, default_source
    from bus_mtl.data.dataset import BUSDataset, seed_worker_augmentation
    from bus_mtl.data.io import resize_pair

    source, which = default_source(image_size=args.image_size)
    print(which)
    with tempfile.TemporaryDirectory(prefix="bus_mtl_bench_") as tmp:
        cache_dir = args.cache_dir or tmp
        dm = BUSDataModule(
            source,
            image_size=args.image_size,
            batch_size=args.batch_size,
            num_workers=args.workers,
            augmentation=args.augmentation,
            cache_dir=cache_dir,
            val_fraction=0.0,
        )
        t0 = time.perf_counter()
        dm.setup("fit")
        t_setup = time.perf_counter() - t0
        loader = dm.train_dataloader()
        n, t_first = _epoch(loader)
        warm = [_epoch(loader) for _ in range(args.warm_epochs)]

        class NaiveDataset(BUSDataset):
            def load_pair(self, index):  # decode + resize from the PNGs every time
                image, mask, _ = self.cache.decode(self.samples[index])
                return resize_pair(image, mask, self.cache.image_size)

        train = dm.datasets["train"]
        naive_ds = NaiveDataset(train.samples, train.cache, train.transform, train.in_channels)
        naive_loader = DataLoader(
            naive_ds,
            batch_size=args.batch_size,
            shuffle=True,
            num_workers=args.workers,
            persistent_workers=args.workers > 0,
            worker_init_fn=seed_worker_augmentation,
        )
        naive = [_epoch(naive_loader) for _ in range(args.warm_epochs)]

    def rate(runs: list[tuple[int, float]]) -> float:
        return sum(k for k, _ in runs) / sum(t for _, t in runs)

    cold_rate = n / (t_setup + t_first)
    warm_rate, naive_rate = rate(warm), rate(naive)
    print(
        f"{n} training images/epoch, {args.image_size}x{args.image_size}, batch {args.batch_size}, "
        f"{args.workers} workers, augmentation={args.augmentation!r}"
    )
    print(f"{'loader':<34}{'seconds':>10}{'images/s':>12}")
    print(f"{'cold (setup + cache build)':<34}{t_setup:>10.2f}{'':>12}")
    print(f"{'cold first epoch (after setup)':<34}{t_first:>10.2f}{n / t_first:>12.1f}")
    print(f"{'cold total (setup + epoch 1)':<34}{t_setup + t_first:>10.2f}{cold_rate:>12.1f}")
    print(
        f"{'warm (cached), mean epoch':<34}{sum(t for _, t in warm) / len(warm):>10.2f}{warm_rate:>12.1f}"
    )
    print(
        f"{'naive (PNG decode every epoch)':<34}{sum(t for _, t in naive) / len(naive):>10.2f}{naive_rate:>12.1f}"
    )
    print(f"warm / naive = {warm_rate / naive_rate:.1f}x (goal >= 5x)")
    return 0
