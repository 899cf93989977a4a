"""``bus-mtl main`` (``make train``): train a model on the data found, test it, and check it
on another hospital's images.

Finds BUSI (``$BUS_MTL_DATA``, else ``../shared/data/busi`` from the current directory or
the project root), else uses the synthetic phantom set, and says which. On a CPU it runs the
recipe sized for a 2-core machine (``recipes/cpu.yaml``: segment, then classify the lesion
crop, in a 14-minute budget; ``--paper-variant`` trains the paper's best variant instead)
and prints the command of the full GPU recipe; ``--image-size``, ``--max-epochs``,
``--accelerator`` etc. scale it up. It trains fold 0 with the LightningCLI configuration
``experiments/base.yaml`` (+ the data preset), tests the best checkpoint on the fold's test
part, scores it on the external set when one is found, and ends by printing where the
checkpoint, the metrics CSV, the W&B run and the external evaluation are.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from bus_mtl.configs import config_args, preset

# What the printed summary of a recipe shows, and where each value sits in the YAML.
RECIPE_KEYS = {
    "image_size": ("data", "image_size"),
    "max_epochs": ("trainer", "max_epochs"),
    "batch_size": ("data", "batch_size"),
    "precision": ("trainer", "precision"),
    "num_workers": ("data", "num_workers"),
}


def read_recipe(name: str) -> dict[str, Any]:
    """The summary values of ``experiments/recipes/<name>.yaml`` (``cpu`` or ``gpu``) over
    ``base.yaml`` (a recipe states only what it changes), with ``budget_min`` = the minutes
    of the recipe's ``TimeBudget`` callback (``None`` without one)."""
    base = yaml.safe_load(preset("base.yaml").read_text())
    config = yaml.safe_load(preset(f"recipes/{name}.yaml").read_text())
    out: dict[str, Any] = {}
    for key, (group, field) in RECIPE_KEYS.items():
        out[key] = (config.get(group) or {}).get(field, (base.get(group) or {}).get(field))
    trainer = config.get("trainer") or {}
    callbacks = [*(trainer.get("callbacks") or []), *(trainer.get("callbacks+") or [])]
    out["budget_min"] = next(
        (
            float((cb.get("init_args") or {}).get("minutes"))
            for cb in callbacks
            if str(cb.get("class_path", "")).rpartition(".")[2] == "TimeBudget"
        ),
        None,
    )
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bus-mtl main",
        description="Train the main job's model (CPU: segment, then classify the lesion crop; "
        "--paper-variant: the paper's best variant) on fold 0 of the data found, test it, "
        "check it on the external set when found, and print where the results are.",
    )
    p.add_argument(
        "--data",
        choices=("auto", "busi", "synthetic"),
        default="auto",
        help="auto: BUSI when found, else synthetic (default)",
    )
    p.add_argument(
        "--busi-root", help="BUSI folder (default: $BUS_MTL_DATA or ../shared/data/busi)"
    )
    p.add_argument("--synthetic-n", type=int, default=200, help="images of the synthetic set")
    p.add_argument(
        "--variant-config",
        default=None,
        help="a net preset (experiments/variants/<name>.yaml, loaded as --model.net) or a "
        "config file applied after the recipe (default: the recipe's net)",
    )
    p.add_argument(
        "--paper-variant",
        action="store_true",
        help="on a CPU, train the paper's best variant (recipes/cpu_paper.yaml: SegResNet "
        "features -> EfficientNet, 128 px) instead of the main job's recipe (recipes/cpu.yaml: "
        "segment, then classify the lesion crop, 256 px letterboxed); the GPU recipe is the "
        "paper's already",
    )
    p.add_argument("--accelerator", default="auto", help="cpu, gpu or auto (default)")
    p.add_argument("--devices", default="1")
    p.add_argument("--precision", help="default: the recipe's (32 on CPU, bf16-mixed on GPU)")
    p.add_argument(
        "--image-size",
        type=int,
        help="default: the recipe's (256; 128 with --paper-variant on a CPU)",
    )
    p.add_argument(
        "--max-epochs",
        type=int,
        help="default: the recipe's (CPU: what its 14-min TimeBudget affords, at most 60; GPU: 100)",
    )
    p.add_argument("--batch-size", type=int, help="default: the recipe's (8 CPU, 16 GPU)")
    p.add_argument("--num-workers", type=int, help="default: the recipe's (0 CPU, 4 GPU)")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--root", default="runs/main", help="run directory (default: runs/main)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--limit-batches",
        type=float,
        help="fraction (or count) of batches per epoch, for smoke tests",
    )
    p.add_argument(
        "--external",
        default=None,
        metavar="PATH|none",
        help="external test set scored with the best checkpoint after testing (bus-mtl "
        "evaluate): a folder holding manifest.csv, or the CSV; default: BrEaST-Lesions_USG at "
        "$BUS_MTL_EXTERNAL or ../shared/data/breast_lesions_usg when found (not after training "
        "on the synthetic set); none: skip",
    )
    return p


def _accelerator(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def _data_args(args: argparse.Namespace, image_size: int) -> tuple[list[str], str]:
    """CLI arguments selecting the data, and a sentence saying which data it is."""
    from bus_mtl.data.paths import find_busi_root

    busi = Path(args.busi_root).expanduser() if args.busi_root else find_busi_root()
    if args.data == "busi" and (busi is None or not busi.is_dir()):
        raise SystemExit(
            "bus-mtl main: --data busi but no BUSI folder found; set $BUS_MTL_DATA or "
            "--busi-root (expects Dataset_BUSI_with_GT/ inside)"
        )
    if args.data != "synthetic" and busi is not None and busi.is_dir():
        return (
            [
                "--data.sources",
                str(preset("data/busi.yaml")),
                f"--data.sources.init_args.root={busi}",
            ],
            f"using BUSI at {busi} (benign + malignant, normal excluded, as in the paper)",
        )
    reason = (
        "--data synthetic"
        if args.data == "synthetic"
        else "no BUSI found ($BUS_MTL_DATA or ../shared/data/busi)"
    )
    return (
        [
            "--data.sources",
            str(preset("data/synthetic.yaml")),
            f"--data.sources.init_args.n={args.synthetic_n}",
            f"--data.sources.init_args.image_size={max(image_size, 64)}",
        ],
        f"{reason}: using the synthetic phantom set ({args.synthetic_n} images)",
    )


def build_args(args: argparse.Namespace) -> tuple[list[str], dict[str, Any], list[str]]:
    """LightningCLI arguments (no sub-command), the recipe used, and lines to print.

    Composition, later wins: ``base.yaml``, the data preset, ``recipes/{cpu,gpu}.yaml``,
    ``--variant-config``, then the explicit overrides given on the command line.
    """
    accelerator = _accelerator(args.accelerator)
    recipe_name = "gpu" if accelerator == "gpu" else ("cpu_paper" if args.paper_variant else "cpu")
    recipe = read_recipe(recipe_name)
    overrides = []
    for key, (group, field) in RECIPE_KEYS.items():
        value = getattr(args, key)
        if value is not None:
            recipe[key] = value
            overrides.append(f"--{group}.{field}={value}")
    data_args, data_note = _data_args(args, int(recipe["image_size"]))
    cli_args = [
        "--config",
        str(preset("base.yaml")),
        *data_args,
        "--config",
        str(preset(f"recipes/{recipe_name}.yaml")),
        *(config_args(args.variant_config) if args.variant_config else []),
        f"--seed_everything={args.seed}",
        f"--trainer.accelerator={accelerator}",
        f"--trainer.devices={args.devices}",
        f"--trainer.default_root_dir={args.root}",
        *overrides,
        f"--data.fold={args.fold}",
        f"--data.seed={args.seed}",
    ]
    if args.limit_batches is not None:
        limit = args.limit_batches if args.limit_batches < 1 else int(args.limit_batches)
        cli_args += [
            f"--trainer.limit_train_batches={limit}",
            f"--trainer.limit_val_batches={limit}",
            f"--trainer.limit_test_batches={limit}",
        ]
    notes = [data_note]
    if accelerator == "cpu":
        notes.append(
            f"CPU recipe (experiments/recipes/{recipe_name}.yaml: "
            + (
                "the paper's best variant"
                if args.paper_variant
                else "segment, then classify the lesion crop; --paper-variant for the "
                "paper's best variant"
            )
            + f"): {recipe['image_size']} px, "
            + (
                f"as many epochs as fit into {recipe['budget_min']:g} min of training "
                f"(at most {recipe['max_epochs']})"
                if recipe.get("budget_min")
                else f"{recipe['max_epochs']} epochs"
            )
            + f", batch {recipe['batch_size']} (the paper's recipe "
            "is 256 px, ~100 epochs on a GPU). Full recipe:\n"
            "  bus-mtl fit --config experiments/base.yaml --data.sources experiments/data/busi.yaml "
            "--config experiments/recipes/gpu.yaml --trainer.accelerator gpu\n"
            "  (or: bus-mtl main --accelerator gpu)"
        )
    return cli_args, recipe, notes


def _report(cli: Any, paths: dict[str, Any], test_metrics: dict[str, float]) -> list[str]:
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    trainer = cli.trainer
    lines = ["", "== bus-mtl main: done =="]
    score = f"  (val/score {paths['score']:.4f})" if paths["score"] is not None else ""
    lines.append(f"best checkpoint : {paths['best'] or '-'}{score}")
    lines.append(f"last checkpoint : {paths['last'] or '-'}")
    for logger in trainer.loggers:
        if isinstance(logger, CSVLogger):
            lines.append(f"metrics CSV     : {Path(logger.log_dir) / 'metrics.csv'}")
            per_image = Path(logger.log_dir) / "test_predictions.csv"
            if per_image.is_file():
                lines.append(f"per-image CSV   : {per_image}")
        if isinstance(logger, WandbLogger):
            run_dir = getattr(logger.experiment, "dir", None)
            run_dir = str(Path(run_dir).parent) if run_dir else str(logger.save_dir)
            if os.environ.get("WANDB_MODE") == "offline":
                lines.append(f"W&B run (offline): {run_dir}")
                lines.append(f"  upload it later : wandb sync {run_dir}")
            else:
                url = getattr(logger.experiment, "url", None)
                lines.append(f"W&B run         : {url or run_dir}")
    lines.append("test metrics (best checkpoint, fold's test part):")
    if any(k.endswith("_input") for k in test_metrics):
        size = getattr(cli.datamodule, "image_size", None)
        lines.append(
            "  dice/iou/hd95 at each image's original size (hd95 in original pixels); "
            f"*_input: at the {size}x{size} network input"
        )
    for key in sorted(test_metrics):
        lines.append(f"  {key:<22} {test_metrics[key]:.4f}")
    rule = getattr(cli.model, "threshold_rule", None)
    if rule and "test/decision_threshold" in test_metrics:
        lines.append(
            f"decision rule   : malignant when P > {test_metrics['test/decision_threshold']:.4f} "
            f"(threshold rule {rule}, fitted on the validation part; the checkpoint stores it)"
        )
    lines += _repeat_lines(cli)
    return lines


def _repeat_lines(cli: Any, args: list[str] | None = None) -> list[str]:
    """For a run a ``TimeBudget`` planned: what the budget gave, and ``repeat this run:
    <command>``, the ``bus-mtl fit`` command that trains the same weights on this machine
    with a fixed epoch count and the recorded schedule replayed instead of the clock
    (:func:`bus_mtl.training.budget.reproduce_command`). ``args``: the run's LightningCLI
    arguments; by default its resolved ``config.yaml`` (beside the logs) stands for them.
    No lines without a budget, or without a ``config.yaml`` when ``args`` is not given."""
    from bus_mtl.training.budget import BUDGET_RECORD, TimeBudget, reproduce_command

    trainer = cli.trainer
    budget = next(
        (cb for cb in trainer.callbacks if isinstance(cb, TimeBudget) and cb.active), None
    )
    if budget is None or budget.epochs_run < 1:
        return []
    record = budget.record()
    log_dir = Path(trainer.log_dir) if trainer.log_dir else None
    lines = [
        f"time budget     : {record['epochs_run']} epoch(s) in {record['elapsed_s'] / 60:.1f} "
        f"of {record['minutes']:g} min"
        + (f"; plan and epoch times in {log_dir / BUDGET_RECORD}" if log_dir else "")
    ]
    if args is None:
        config = log_dir / "config.yaml" if log_dir else None
        if config is None or not config.is_file():
            return lines
        args = ["--config", str(config)]
    lines.append(f"repeat this run: {reproduce_command(args, record)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    cli_args, recipe, notes = build_args(args)
    from bus_mtl.data.paths import find_external_root

    # The external set: an explicit path is checked now, not after the training.
    synthetic = any(a.endswith("data/synthetic.yaml") for a in cli_args)
    if args.external is not None and args.external.lower() == "none":
        external = None
    elif args.external is not None:
        external = Path(args.external).expanduser()
        if not external.exists():
            print(
                f"bus-mtl main: --external {external}: not found; give the folder holding "
                "manifest.csv (or the CSV), or --external none",
                file=sys.stderr,
            )
            return 2
    else:
        external = None if synthetic else find_external_root()
    for note in notes:
        print(f"bus-mtl main: {note}", flush=True)

    from bus_mtl.cli.lightning import build_cli
    from bus_mtl.data.errors import DataError

    try:
        cli = build_cli(cli_args, run=False)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        ckpt = cli.trainer.checkpoint_callback
        paths = {
            "best": ckpt.best_model_path if ckpt is not None else "",
            "last": ckpt.last_model_path if ckpt is not None else "",
            "score": float(ckpt.best_model_score)
            if ckpt and ckpt.best_model_score is not None
            else None,
        }
        results = cli.trainer.test(
            cli.model, datamodule=cli.datamodule, ckpt_path=paths["best"] or None
        )
    except FloatingPointError as err:
        print(f"bus-mtl main: training stopped: {err}", file=sys.stderr)
        return 1
    except DataError as err:
        print(f"bus-mtl main: data error: {err}", file=sys.stderr)
        return 2
    test_metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    print("\n".join(_report(cli, paths, test_metrics)), flush=True)
    model = paths["best"] or paths["last"]
    if external is None or not model:
        if args.external is None and not synthetic:
            print(
                "external check    : skipped (no BrEaST-Lesions_USG at $BUS_MTL_EXTERNAL or "
                "../shared/data/breast_lesions_usg; --external PATH points elsewhere)"
            )
        return _write_report(cli)
    from bus_mtl.cli.evaluate import external_check

    # Beside the run's own files, where PerImagePredictions writes test_predictions.csv.
    log_dir = Path(cli.trainer.log_dir or cli.trainer.default_root_dir)
    name = external.parent.name if external.suffix == ".csv" else external.name
    out = log_dir / f"external_{name}"
    print(f"\n== external check: {model} on {external} ==", flush=True)
    try:
        text = external_check(
            model,
            external,
            out,
            test_metrics,
            log_dir / "test_predictions.csv",
            test_name="BUSI test part" if not synthetic else "synthetic test part",
        )
    except (DataError, FileNotFoundError, ValueError) as err:
        print(f"bus-mtl main: external check on {external} failed: {err}", file=sys.stderr)
        return 1
    print(text, flush=True)
    return _write_report(cli)


def _write_report(cli: Any) -> int:
    """The run's HTML report (after the external check, so it shows that too); 0."""
    from bus_mtl.report import write_report

    run_dir = Path(cli.trainer.log_dir or cli.trainer.default_root_dir)
    try:
        print(f"report          : {write_report(run_dir)}", flush=True)
    except (OSError, ValueError) as err:  # the run's results stand without it
        print(f"report          : not written ({err})", file=sys.stderr)
    return 0
