"""RNG states carried in checkpoints, so a resumed run draws what an uninterrupted one would.

Stored as tensors and plain Python values only, so checkpoints stay loadable with
``torch.load(weights_only=True)`` (the default of ``Trainer.fit/test(ckpt_path=...)``).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def collect_rng_states() -> dict[str, Any]:
    """The python, numpy, torch CPU and (when present) CUDA generator states of this process."""
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["torch.cuda"] = torch.cuda.get_rng_state_all()
    return states


def _numpy_state() -> tuple[str, torch.Tensor, int, int, float]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`collect_rng_states` returned; missing entries are left alone."""
    if "python" in states:
        version, internal, gauss = states["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in states:
        name, keys, pos, has_gauss, cached = states["numpy"]
        keys = np.asarray(keys.numpy() if isinstance(keys, torch.Tensor) else keys).astype(
            np.uint32
        )
        np.random.set_state((name, keys, pos, has_gauss, cached))
    if "torch" in states:
        torch.set_rng_state(torch.as_tensor(states["torch"], dtype=torch.uint8).cpu())
    cuda = states.get("torch.cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def seed_epoch(seed: int, epoch: int) -> None:
    """Seed python, numpy and torch (all devices) from ``(seed, epoch)`` alone."""
    value = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)
