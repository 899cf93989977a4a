"""Sample lists and near-duplicate groups for split tests (no image files behind them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bus_mtl.data import Sample


def make_samples(n: int = 200, seed: int = 0) -> list[Sample]:
    """``n`` samples, about a third malignant, three quarters from centre ``a``."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = int(rng.random() < 0.33)
        centre = "a" if i % 4 else "b"
        out.append(Sample(f"{centre}/{i}", Path(f"{i}.png"), (), label, centre))
    return out


def make_groups(samples: list[Sample], n_grouped: int = 60, seed: int = 1) -> list[list[str]]:
    """Groups of 2-5 ids covering about ``n_grouped`` samples, some crossing classes, as
    near-duplicates do."""
    rng = np.random.default_rng(seed)
    ids = [s.id for s in samples]
    rng.shuffle(ids)
    groups, k = [], 0
    while k < n_grouped:
        size = int(rng.integers(2, 6))
        groups.append(ids[k : k + size])
        k += size
    return groups
