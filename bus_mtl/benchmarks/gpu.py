"""``bus-mtl bench gpu``: training throughput of the library's loop vs a bare PyTorch loop.

For each variant and batch size it times, side by side, in one process:

* ``data``: the ``BUSDataModule`` train loader alone (decode cache → augment → collate →
  pinned host memory), images/s — the ceiling the input pipeline allows;
* ``bare/<mode>``: a plain loop over GPU-resident random tensors with the same net, the same
  losses and task weighting as ``MultiTaskModule``, AdamW, bf16 autocast, channels_last;
  ``mode`` = ``eager``, ``compile`` (``torch.compile``) or ``reduce-overhead``
  (``torch.compile`` with CUDA graphs);
* ``lightning``: ``Trainer(precision="bf16-mixed")`` + ``MultiTaskModule`` +
  ``BUSDataModule`` (workers, pinned memory, persistent workers, decode cache), i.e. what
  ``bus-mtl fit`` runs, with logging/checkpointing off so only the loop itself is timed.

``ratio`` = lightning images/s ÷ bare eager images/s (goal ≥ 0.9). Numbers print as a table
and go to ``$OUT/gpu_benchmark.{csv,json}`` when ``--out``/``$OUT`` is set. On a CPU
(``--device cpu --steps 2 --size 64``) it is a dry run that checks the script end to end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

MODES = ("eager", "compile", "reduce-overhead")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bus-mtl bench gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run")
    p.add_argument("--variants", default="all", help="comma list of variants, or all")
    p.add_argument("--batch-sizes", default="16,64,128")
    p.add_argument("--size", type=int, default=256, help="square input side (px)")
    p.add_argument("--steps", type=int, default=50, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    p.add_argument("--modes", default=",".join(MODES), help=f"bare-loop modes from {MODES}")
    p.add_argument("--no-lightning", action="store_true", help="skip the Lightning loop")
    p.add_argument("--lightning-compile", action="store_true", help="MultiTaskModule(compile=True)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--out", default=os.environ.get("OUT"), help="folder for csv/json ($OUT)")
    p.add_argument(
        "--recipe",
        choices=("cpu", "gpu"),
        help="take the net (class and init args), image size, batch size and loader workers "
        "from experiments/recipes/<recipe>.yaml: the loop of the main job itself "
        "(overrides --variants, --size, --batch-sizes, --workers)",
    )
    return p


def recipe_setup(name: str) -> dict[str, Any]:
    """Net class path + init args, size, batch and workers of a training recipe, over
    ``base.yaml`` (what ``bus-mtl main`` composes, minus the data)."""
    import yaml

    from bus_mtl.configs import preset

    base = yaml.safe_load(preset("base.yaml").read_text())
    recipe = yaml.safe_load(preset(f"recipes/{name}.yaml").read_text())
    net = base["model"]["net"]
    if isinstance(net, str):  # a net preset named by its path, relative to base.yaml
        net = yaml.safe_load((preset("base.yaml").parent / net).read_text())
    net = dict(net)
    rnet = recipe.get("model", {}).get("net", {})
    if isinstance(rnet, str):  # a net preset named by its path, relative to the recipe
        rnet = yaml.safe_load((preset(f"recipes/{name}.yaml").parent / rnet).read_text())
    if rnet.get("class_path", net["class_path"]) != net["class_path"]:
        net = {"class_path": rnet["class_path"], "init_args": {}}
    init_args = {**(net.get("init_args") or {}), **(rnet.get("init_args") or {})}
    data = {**base.get("data", {}), **recipe.get("data", {})}
    return {
        "class_path": rnet.get("class_path", net["class_path"]),
        "init_args": init_args,
        "size": int(data["image_size"]),
        "batch": int(data["batch_size"]),
        "workers": int(data["num_workers"]),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


# Set by --recipe: the net's init args (in_channels/num_classes are the data's, 1 and 1).
NET_ARGS: dict[str, Any] = {}


def _module(variant: str, compile: bool = False) -> Any:
    from bus_mtl.models import create
    from bus_mtl.training.module import MultiTaskModule

    net = create(variant, in_channels=1, num_classes=1, **NET_ARGS)
    return MultiTaskModule(net, compile=compile)


def bare_loop(
    variant: str, batch: int, size: int, steps: int, warmup: int, device: torch.device, mode: str
) -> float:
    """Images/s of a plain training loop over GPU-resident tensors."""
    module = _module(variant)
    net = module.net.to(device)
    fmt = torch.channels_last  # as MultiTaskModule(channels_last=True) on every device
    net = net.to(memory_format=fmt)
    seg_loss, cls_loss, weighting = module.seg_loss, module.cls_loss, module.weighting.to(device)
    if hasattr(cls_loss, "set_class_counts"):
        # "auto" class weights need counts; the random labels below are balanced.
        cls_loss.set_class_counts([1, 1][: max(module.num_classes, 2)])
        cls_loss.to(device)
    params = list(net.parameters()) + list(weighting.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, fused=device.type == "cuda")
    g = torch.Generator(device="cpu").manual_seed(0)
    image = torch.randn(batch, 1, size, size, generator=g).to(device, memory_format=fmt)
    mask = (torch.rand(batch, 1, size, size, generator=g) > 0.7).float().to(device)
    label = torch.randint(0, 2, (batch,), generator=g).to(device)

    def step() -> torch.Tensor:
        with _autocast(device):
            out = net(image)
        losses = {}
        if seg_loss is not None and out.mask is not None:
            losses["seg"] = seg_loss(out.mask.float(), mask)
        if cls_loss is not None and out.logits is not None:
            losses["cls"] = cls_loss(out.logits.float(), label)
        total, _ = weighting(losses)
        total.backward()
        return total

    fwd_bwd = step
    if mode != "eager":
        fwd_bwd = torch.compile(step, mode="reduce-overhead" if mode == "reduce-overhead" else None)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        fwd_bwd()
        opt.step()

    for _ in range(warmup):
        train_step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        train_step()
    _sync(device)
    return steps * batch / (time.perf_counter() - start)


def _datamodule(batch: int, size: int, workers: int, root: Path) -> Any:
    from bus_mtl.data import BUSDataModule, SyntheticSource

    n = max(4 * batch, 64)
    dm = BUSDataModule(
        SyntheticSource(n=n, image_size=size, seed=0, root=str(root / f"synthetic_{size}_{n}")),
        split="kfold",
        n_folds=2,
        fold=0,
        val_fraction=0.0,
        dup_threshold=-1,
        image_size=size,
        batch_size=batch,
        num_workers=workers,
        augmentation="light",
        cache_dir=str(root / "cache"),
    )
    dm.setup("fit")
    return dm


def data_loader_rate(dm: Any, steps: int, warmup: int) -> float:
    """Images/s the train loader delivers (to pinned host memory), cycling epochs."""
    seen, start, i = 0, None, 0
    while True:
        for b in dm.train_dataloader():
            if i == warmup:
                start, seen = time.perf_counter(), 0
            seen += b["image"].shape[0]
            i += 1
            if i >= warmup + steps:
                return seen / (time.perf_counter() - start)  # type: ignore[operator]


def lightning_loop(
    variant: str, dm: Any, steps: int, warmup: int, device: torch.device, compile: bool = False
) -> float:
    """Images/s of ``Trainer.fit`` on ``MultiTaskModule`` + ``BUSDataModule``."""
    import lightning.pytorch as pl

    class Timer(pl.Callback):
        def __init__(self) -> None:
            self.start = 0.0
            self.end = 0.0
            self.images = 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
            if trainer.global_step == warmup:
                _sync(device)
                self.start = time.perf_counter()
                self.images = 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
            if trainer.global_step > warmup:
                self.images += batch["image"].shape[0]
            if trainer.global_step == warmup + steps:
                _sync(device)
                self.end = time.perf_counter()

    timer = Timer()
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision="bf16-mixed" if device.type == "cuda" else "32-true",
        max_steps=warmup + steps,
        max_epochs=-1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(_module(variant, compile), datamodule=dm)
    return timer.images / max(timer.end - timer.start, 1e-9)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from bus_mtl.models import list_variants

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bus-mtl bench gpu: no CUDA device; use --device cpu for a dry run", file=sys.stderr)
        return 2
    variants = list_variants() if args.variants == "all" else args.variants.split(",")
    batches = [int(b) for b in args.batch_sizes.split(",")]
    if args.recipe:
        from bus_mtl.models.registry import variant_name

        setup = recipe_setup(args.recipe)
        variants = [variant_name(setup["class_path"]) or setup["class_path"]]
        NET_ARGS.clear()
        NET_ARGS.update(setup["init_args"])
        args.size, args.workers, batches = setup["size"], setup["workers"], [setup["batch"]]
        print(
            f"recipe {args.recipe}: {variants[0]} {setup['init_args']}, {args.size} px, "
            f"batch {batches[0]}, {args.workers} loader workers",
            flush=True,
        )
    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad:
        print(f"bus-mtl bench gpu: unknown modes {bad}; valid: {MODES}", file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        print(f"device: {torch.cuda.get_device_name(device)}")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out) / "bench_data" if args.out else Path(tmp)
        for batch in batches:
            dm = None
            if not args.no_lightning:
                dm = _datamodule(batch, args.size, args.workers, root)
                rate = data_loader_rate(dm, args.steps, args.warmup)
                rows.append({"variant": "-", "batch": batch, "loop": "data", "img_s": rate})
                print(f"batch {batch:4d} data loader          {rate:9.1f} img/s", flush=True)
            for variant in variants:
                bare: dict[str, float] = {}
                for mode in modes:
                    try:
                        bare[mode] = bare_loop(
                            variant, batch, args.size, args.steps, args.warmup, device, mode
                        )
                    except Exception as err:  # e.g. compile unsupported: report, go on
                        print(f"  {variant} {mode}: failed: {err}", file=sys.stderr)
                        bare[mode] = float("nan")
                    rows.append(
                        {
                            "variant": variant,
                            "batch": batch,
                            "loop": f"bare/{mode}",
                            "img_s": bare[mode],
                        }
                    )
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                line = "  ".join(f"{m} {v:8.1f}" for m, v in bare.items())
                if dm is not None:
                    rate = lightning_loop(
                        variant, dm, args.steps, args.warmup, device, args.lightning_compile
                    )
                    ref = bare.get("eager", float("nan"))
                    rows.append(
                        {
                            "variant": variant,
                            "batch": batch,
                            "loop": "lightning",
                            "img_s": rate,
                            "ratio_vs_bare_eager": rate / ref if ref == ref and ref else None,
                        }
                    )
                    line += f"  lightning {rate:8.1f}  ratio {rate / ref:5.2f}"
                print(f"batch {batch:4d} {variant:<20s} {line}", flush=True)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        import pandas as pd

        pd.DataFrame(rows).to_csv(out / "gpu_benchmark.csv", index=False)
        (out / "gpu_benchmark.json").write_text(
            json.dumps({"device": str(device), "size": args.size, "rows": rows}, indent=2)
        )
    return 0
