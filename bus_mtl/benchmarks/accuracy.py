"""``bus-mtl bench accuracy``: test accuracy of several models at the same wall-clock budget.

Same fold, same machine, one process, one model after the other: each model trains with the
recipe of the main job (``experiments/recipes/{cpu,gpu}.yaml``) for as many epochs as its
measured cost per epoch fits into ``--budget-min`` minutes (the cosine schedule is planned for
those epochs; Lightning's ``max_time`` stops a run that would overrun), is calibrated on the
validation part (temperature and decision threshold) and tested on the fold's test part with
its best checkpoint. Prints Dice, AUC, sensitivity, specificity and the epochs reached per
model and writes ``accuracy.csv`` / ``accuracy.json``.

The default line-up, every one on the recipe's data, optimizer and schedule:

* ``seg_features_effnet_lite0``: the recipe's model (the main job's): the paper's best
  variant with ImageNet EfficientNet-Lite0 weights;
* ``seg_features_effnet``: the same network from scratch (EfficientNet-B0, no weights);
* ``smp_unet``: the smp U-Net peer (EfficientNet-B0 encoder, from scratch: smp's ImageNet
  weights are a download);
* ``segresnet``: SegResNet alone, at the recipe's width;
* ``efficientnet``: EfficientNet-Lite0 alone, with the same ImageNet weights;
* ``seg_crop_effnet``: segment, then classify the lesion crop (Lite0 with the same ImageNet
  weights) cut from 256 px images, segmenting at 128 px as the recipe's model does.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bus_mtl.configs import preset

REPORTED = ("dice", "iou", "auc", "sensitivity", "specificity", "decision_threshold")


@dataclass(frozen=True)
class Entry:
    """One model of the line-up: a name, a variant preset applied after the recipe (``None``:
    the recipe's own model) and extra CLI overrides."""

    name: str
    variant_preset: str | None = None
    overrides: tuple[str, ...] = field(default=())


_LITE0 = (
    "--model.net.init_args.model_name=efficientnet-lite0",
    "--model.net.init_args.pretrained=lite0-offline",
)
LINEUP: dict[str, Entry] = {
    e.name: e
    for e in (
        Entry("seg_features_effnet_lite0"),
        Entry(
            "seg_features_effnet",
            overrides=(
                "--model.net.init_args.model_name=efficientnet-b0",
                "--model.net.init_args.pretrained=null",
            ),
        ),
        Entry("smp_unet", "smp_unet"),
        Entry("segresnet", "segresnet", ("--model.net.init_args.init_filters=8",)),
        Entry("efficientnet", "efficientnet", _LITE0),
        # Its preset's resolution: the crop is cut from 256 px (the recipe's 128 px is what
        # it segments at).
        Entry("seg_crop_effnet", "seg_crop_effnet", ("--data.image_size=256",)),
    )
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bus-mtl bench accuracy",
        description="Train and test each model on the same fold with the same wall-clock "
        "budget; print test Dice, AUC, sensitivity, specificity and epochs reached.",
    )
    p.add_argument("--models", default=",".join(LINEUP), help=f"comma list of {list(LINEUP)}")
    p.add_argument("--budget-min", type=float, default=10.0, help="minutes per model (10)")
    p.add_argument(
        "--busi-root", help="BUSI folder (default: $BUS_MTL_DATA or ../shared/data/busi)"
    )
    p.add_argument("--synthetic-n", type=int, default=0, help="use N synthetic images instead")
    p.add_argument("--recipe", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default="results/bench_accuracy", help="results folder")
    p.add_argument(
        "--max-epochs",
        type=int,
        default=None,
        help="cap on the planned epochs (smoke tests); default: what the budget fits",
    )
    return p


def _data_args(args: argparse.Namespace) -> tuple[list[str], str]:
    from bus_mtl.data.paths import find_busi_root

    if args.synthetic_n:
        return (
            [
                "--data.sources",
                str(preset("data/synthetic.yaml")),
                f"--data.sources.init_args.n={args.synthetic_n}",
                "--data.sources.init_args.image_size=64",
            ],
            f"synthetic ({args.synthetic_n} images)",
        )
    busi = Path(args.busi_root).expanduser() if args.busi_root else find_busi_root()
    if busi is None or not busi.is_dir():
        raise SystemExit(
            "bus-mtl bench accuracy: no BUSI folder found; set $BUS_MTL_DATA, --busi-root, or "
            "use --synthetic-n N"
        )
    return (
        ["--data.sources", str(preset("data/busi.yaml")), f"--data.sources.init_args.root={busi}"],
        f"BUSI at {busi}",
    )


def _base_args(args: argparse.Namespace, entry: Entry, data_args: list[str]) -> list[str]:
    return [
        "--config",
        str(preset("base.yaml")),
        *data_args,
        "--config",
        str(preset(f"recipes/{args.recipe}.yaml")),
        *(
            ["--model.net", str(preset(f"variants/{entry.variant_preset}.yaml"))]
            if entry.variant_preset
            else []
        ),
        *entry.overrides,
        f"--seed_everything={args.seed}",
        f"--data.fold={args.fold}",
        f"--data.seed={args.seed}",
        f"--trainer.default_root_dir={Path(args.out) / entry.name}",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.init_args.save_dir={Path(args.out) / entry.name}",
        "--trainer.enable_progress_bar=false",
    ]


def seconds_per_epoch(cli: Any, steps: int = 3) -> float:
    """Measured cost of one epoch (training steps + validation forwards) of ``cli``'s model,
    on a throw-away copy of the net: ``steps`` timed training steps after one untimed one."""
    import copy

    import torch

    dm, module = cli.datamodule, cli.model
    dm.setup("fit")
    net = copy.deepcopy(module.net).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)

    def forever(loader: Any) -> Any:
        # Round and round: a small training part (a smoke test) has fewer batches than steps.
        while True:
            yield from loader

    batches = forever(dm.train_dataloader())
    resolve = getattr(module.cls_loss, "set_class_counts", None)
    if resolve is not None:
        resolve(dm.class_counts("train")[: max(module.num_classes, 2)])
    module_losses = module._losses  # the real loss terms, on the copy's output

    def step() -> None:
        batch = dm.normalize_batch(next(batches))  # uint8 loader batch -> normalised floats
        losses = module_losses(net(batch["image"]), batch)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    per_batch = (time.perf_counter() - t0) / steps
    n_train = len(dm.train_dataloader())
    n_val = len(dm.val_dataloader())
    # A validation forward costs about a third of a training step.
    return per_batch * (n_train + n_val / 3)


def run_one(args: argparse.Namespace, entry: Entry, data_args: list[str]) -> dict[str, Any]:
    """Plan, train, calibrate and test one model within the budget."""
    from bus_mtl.cli.lightning import build_cli

    budget_s = 60.0 * args.budget_min
    base = _base_args(args, entry, data_args)
    probe = build_cli([*base, "--trainer.max_epochs=1"], run=False)
    epoch_s = seconds_per_epoch(probe)
    # 8 % kept for calibration, checkpoints and the slower first epoch.
    epochs = max(1, math.floor(0.92 * budget_s / epoch_s))
    if args.max_epochs is not None:
        epochs = min(epochs, args.max_epochs)
    hh, rem = divmod(int(budget_s), 3600)
    limit = f"00:{hh:02d}:{rem // 60:02d}:{rem % 60:02d}"
    cli = build_cli(
        [*base, f"--trainer.max_epochs={epochs}", f"--trainer.max_time={limit}"], run=False
    )
    t0 = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    train_s = time.perf_counter() - t0
    ckpt = cli.trainer.checkpoint_callback
    best = ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    row: dict[str, Any] = {
        "model": entry.name,
        "epochs_planned": epochs,
        "epochs_reached": int(cli.trainer.current_epoch),
        "train_min": round(train_s / 60, 2),
        "params_M": round(sum(p.numel() for p in cli.model.net.parameters()) / 1e6, 2),
    }
    for key in REPORTED:
        row[key] = metrics.get(f"test/{key}", float("nan"))
    row["checkpoint"] = best or ""
    return row


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    cols = [
        "model",
        "epochs_reached",
        "train_min",
        "dice",
        "iou",
        "auc",
        "sensitivity",
        "specificity",
        "decision_threshold",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in LINEUP]
    if unknown or not names:
        raise SystemExit(f"--models: {unknown or args.models!r} not in {list(LINEUP)}")
    if not args.budget_min > 0:
        raise SystemExit(f"--budget-min must be > 0, got {args.budget_min}")
    data_args, data_note = _data_args(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.processor() or platform.machine()}, {_cores()} cores"
    print(
        f"bench accuracy: {data_note}, fold {args.fold}, seed {args.seed}, {args.recipe} "
        f"recipe, {args.budget_min:g} min per model, {machine}",
        flush=True,
    )
    rows = []
    for name in names:
        print(f"== {name}", flush=True)
        rows.append(run_one(args, LINEUP[name], data_args))
        _write(out, args, rows, data_note, machine)
    print(table(rows))
    print(f"results: {out / 'accuracy.csv'}, {out / 'accuracy.json'}")
    return 0


def _cores() -> int:
    import torch

    return torch.get_num_threads()


def _write(
    out: Path, args: argparse.Namespace, rows: list[dict[str, Any]], data: str, machine: str
) -> None:
    import csv

    with (out / "accuracy.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    payload = {
        "data": data,
        "fold": args.fold,
        "seed": args.seed,
        "recipe": args.recipe,
        "budget_min": args.budget_min,
        "machine": machine,
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }
    (out / "accuracy.json").write_text(json.dumps(payload, indent=2))
