"""``bus-mtl`` entry point: one dispatcher, one module per sub-command.

Sub-commands are imported lazily so that ``bus-mtl check-data`` does not pay for importing
Lightning, and so that each sub-command lives in its own small module.
"""

from __future__ import annotations

import importlib
import sys

from bus_mtl.cli.errors import DEBUG_ENV, debug, is_user_error, print_error

# name -> ("module:function", one-line help). Each function takes argv (list[str]) and
# returns an int exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "main": (
        "bus_mtl.cli.main_job:main",
        "train the recipe's model on the data found, test it, check it externally",
    ),
    "fit": ("bus_mtl.cli.lightning:main", "LightningCLI fit (--config FILE or preset:NAME)"),
    "validate": ("bus_mtl.cli.lightning:main", "LightningCLI validate"),
    "test": ("bus_mtl.cli.lightning:main", "LightningCLI test"),
    "predict": (
        "bus_mtl.cli.predict:main",
        "predict masks/probabilities for image files (--ckpt/--model, --input, --output); "
        "with --config it is LightningCLI predict",
    ),
    "check-data": ("bus_mtl.cli.check_data:main", "validate a dataset and print its summary"),
    "evaluate": (
        "bus_mtl.cli.evaluate:main",
        "score a model on a labelled set where every image is a test image (--ckpt/--model, "
        "--manifest or --data.sources, --out): metrics.json, per-image CSV, ROC",
    ),
    "report": (
        "bus_mtl.cli.report:main",
        "one self-contained HTML report of a main/cv/compare/evaluate output folder (DIR "
        "[-o report.html])",
    ),
    "cv": ("bus_mtl.cli.cv:main", "k-fold cross-validation of one configuration"),
    "compare": ("bus_mtl.cli.compare:main", "variant x fold comparison table with statistics"),
    "sweep": ("bus_mtl.cli.sweep:main", "run a W&B sweep file locally (optuna)"),
    "export": ("bus_mtl.cli.export:main", "export a checkpoint to ONNX or TorchScript"),
    "ensemble": (
        "bus_mtl.cli.ensemble:main",
        "join trained models (a cv run's folds) into one: mean calibrated probability",
    ),
    "calibrate": (
        "bus_mtl.cli.calibrate:main",
        "refit a model's operating point on a new site's cases (labelled, or --unlabelled)",
    ),
    "bench": (
        "bus_mtl.cli.bench:main",
        "benchmarks and measurements behind docs/results.md (bus-mtl bench --help lists them)",
    ),
    "presets": (
        "bus_mtl.cli.presets:main",
        "list the packaged YAML presets (--config preset:NAME names one)",
    ),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: bus-mtl COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += [
        "",
        "Run 'bus-mtl COMMAND --help' for the options of one command. An error in the input "
        f"prints one line; {DEBUG_ENV}=1 shows its traceback.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    if argv[0] in {"-V", "--version"}:
        from bus_mtl import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"bus-mtl: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        return _run(name, rest)
    except Exception as err:
        # Bad input (its message names the fix) in one line; a bug keeps its traceback.
        if debug() or not is_user_error(err):
            raise
        return print_error(name, err)


def _run(name: str, rest: list[str]) -> int:
    from bus_mtl.configs import resolve_args

    # Presets by name from any folder: --config preset:recipes/cpu.yaml, and an
    # experiments/... path that is not there falls back to the packaged preset.
    rest = resolve_args(rest)
    target, _ = COMMANDS[name]
    module_name, func_name = target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    # LightningCLI sub-commands need to see their own name.
    if module_name == "bus_mtl.cli.lightning":
        rest = [name, *rest]
    code = func(rest)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
