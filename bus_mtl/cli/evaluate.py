"""``bus-mtl evaluate``: a trained model on a labelled set where every image is a test image
(external validation, e.g. your hospital's images after training on BUSI).

``--ckpt CKPT`` (PyTorch) or ``--model MODEL.onnx`` (onnxruntime); the images from
``--manifest CSV`` (columns image, mask, label, optional centre and group), a source preset
(``--data.sources experiments/data/breast_lesions_usg.yaml``) or a config file's data section
(``--config FILE``), ``--data.*`` options applying to it. Writes OUT/metrics.json,
per_image.csv, roc.png, reliability.png and referral.png (:mod:`bus_mtl.experiments.evaluate`)
and prints one table.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bus_mtl.cli.errors import print_error
from bus_mtl.inference.metadata import TTA_MODES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bus-mtl evaluate",
        allow_abbrev=False,
        description="Score a trained model on every image of a labelled set: Dice/IoU/HD95 at "
        "each image's original size, AUC with a 95 % bootstrap interval (patients resampled "
        "when the manifest has a group column), sensitivity/specificity at the model's stored "
        "decision threshold, ECE, Brier, and the referral curve by flip uncertainty. Writes "
        "OUT/metrics.json, per_image.csv, roc.png, reliability.png, referral.png.",
        epilog="Data: --manifest CSV, or a source preset: --data.sources FILE, e.g. "
        "experiments/data/breast_lesions_usg.yaml (or a config file's data section: --config "
        "FILE); --data.* options apply to it "
        "(--data.sources.init_args.csv=PATH). Exit codes: 0 done, 2 bad input (the message "
        "names the file).",
    )
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--ckpt", help="training checkpoint (PyTorch)")
    model.add_argument("--model", help="exported ONNX model (onnxruntime)")
    p.add_argument(
        "--manifest",
        action="append",
        default=[],
        metavar="CSV",
        help="manifest CSV: image, mask (several joined by ';', ORed), label "
        "(benign/malignant), optional centre, group (patient); paths relative to the CSV",
    )
    p.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="a config file: its data section's sources (a source preset goes with --data.sources)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="malignancy decision threshold in (0, 1) instead of the model's stored one",
    )
    p.add_argument("--name", default=None, help="what the set is called in the table")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument(
        "--referral",
        default="0.1,0.2,0.3",
        help="comma list of the shares of most uncertain cases referred (default 0.1,0.2,0.3)",
    )
    p.add_argument(
        "--tta",
        choices=TTA_MODES,
        default=None,
        help="test-time augmentation in the network, as model.tta (default: the model's "
        "own): 'none' scores the single pass of a checkpoint trained with model.tta: hflip, "
        "at the operating point fitted for it. An ONNX model runs the one it was exported "
        "with (bus-mtl export --tta)",
    )
    p.add_argument("--device", default="cpu", help="torch device for --ckpt (cpu, cuda, ...)")
    p.add_argument(
        "--image-size", type=int, default=None, help="input side for a checkpoint without it"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _fractions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(
            f"--referral: {text!r} is not a comma list of numbers, e.g. 0.1,0.2,0.3"
        ) from None
    if not values:
        raise ValueError("--referral: give at least one share, e.g. 0.1,0.2,0.3")
    return values


def load_predictor(
    ckpt: str | None = None,
    model: str | None = None,
    device: str = "cpu",
    image_size: int | None = None,
    tta: str | None = None,
) -> Any:
    """The predictor of a checkpoint (``TorchPredictor``: its test-time augmentation, or
    ``tta``, with that mode's temperature and operating point) or of an ONNX export
    (``Predictor``: the augmentation it was exported with; ``ValueError`` when ``tta``
    asks for another)."""
    if model:
        from bus_mtl.inference.predictor import Predictor

        return Predictor(model, tta=tta)
    from bus_mtl.inference.torch_predictor import TorchPredictor

    return TorchPredictor.from_checkpoint(ckpt, device=device, image_size=image_size, tta=tta)


def load_samples(
    manifests: Sequence[str | Path] = (), configs: Sequence[str] = (), extra: Sequence[str] = ()
) -> tuple[list[Any], dict[str, Any]]:
    """The samples of the manifests and of the source presets / config files (``--data.*``
    options in ``extra`` applying to those, as ``bus-mtl cv`` reads them), and where they
    came from: ``{"source": the options as given, "files": every manifest CSV / dataset
    folder, absolute}``. Raises ``DataError`` listing every problem of the set."""
    from bus_mtl.data.sources import ManifestSource, MultiSource

    sources: list[Any] = [ManifestSource(m) for m in manifests]
    described = [str(m) for m in manifests]
    if configs or extra:
        from bus_mtl.experiments.cv import build_datamodule

        sources.append(build_datamodule(list(configs), list(extra)).source)
        described += [*configs, *extra]
    if not sources:
        raise ValueError(
            "no data given: pass --manifest CSV or --data.sources PRESET (e.g. "
            "experiments/data/breast_lesions_usg.yaml)"
        )
    source = sources[0] if len(sources) == 1 else MultiSource(sources)
    return source.samples(), {"source": " ".join(described), "files": _source_files(source)}


def _source_files(source: Any) -> list[str]:
    """The manifest CSVs and dataset folders a source reads, absolute."""
    found = []
    for s in getattr(source, "sources", [source]):
        where = getattr(s, "csv", None) or getattr(s, "root", None)
        if where is not None:
            found.append(str(Path(where).absolute()))
    return found


def _default_name(manifests: Sequence[str], configs: Sequence[str], extra: Sequence[str]) -> str:
    for item in [*manifests, *configs, *(a.partition("=")[2] or a for a in extra)]:
        path = Path(item)
        if path.suffix in (".csv", ".yaml", ".yml"):
            return path.parent.name if path.name == "manifest.csv" else path.stem
    return "evaluated"


def main(argv: list[str]) -> int:
    args, extra = build_parser().parse_known_args(argv)
    unknown = [a for a in extra if a.startswith("-") and not a.startswith("--data.")]
    if unknown:
        print(
            f"bus-mtl evaluate: unknown option(s) {unknown}; see bus-mtl evaluate --help",
            file=sys.stderr,
        )
        return 2
    from bus_mtl.configs import check_config_file
    from bus_mtl.experiments.evaluate import evaluate

    for path in args.config:
        check_config_file(path)
    start = time.perf_counter()
    try:
        fractions = _fractions(args.referral)
        samples, described = load_samples(args.manifest, args.config, extra)
        predictor = load_predictor(args.ckpt, args.model, args.device, args.image_size, args.tta)
        result = evaluate(
            predictor,
            samples,
            args.out,
            threshold=args.threshold,
            n_boot=args.n_boot,
            seed=args.seed,
            referral_fractions=fractions,
            name=args.name or _default_name(args.manifest, args.config, extra),
            model=args.ckpt or args.model,
            data=described,
            command=shlex.join(["bus-mtl", "evaluate", *argv]),
            progress=not args.no_progress,
        )
    except (FileNotFoundError, ValueError) as err:  # DataError is a ValueError
        return print_error("evaluate", err)
    print(report(result, time.perf_counter() - start))
    from bus_mtl.report import write_report

    try:
        print(f"  report: {write_report(result.out_dir, n_boot=args.n_boot, seed=args.seed)}")
    except (OSError, ValueError) as err:  # the metrics above stand without it
        print(f"bus-mtl evaluate: report not written ({err})", file=sys.stderr)
    return 0


def report(
    result: Any,
    seconds: float | None = None,
    test: dict[str, Any] | None = None,
    test_name: str = "test part",
) -> str:
    """The printed summary: the table (with the training run's ``test`` row, named
    ``test_name``, first when given), the referral rows, the threshold used and where the
    files are."""
    from bus_mtl.experiments.evaluate import format_table

    m = result.metrics
    rows = [(test_name, test)] if test is not None else []
    rows.append((f"{m['name'] or 'evaluated'} (external)" if test else m["name"], m))
    lines = [format_table(rows)]
    boot = m["bootstrap"]
    lines.append(
        f"  {m['n']} images ({m['n_malignant']} malignant); AUC/Dice intervals: 95 % "
        f"percentile bootstrap over {boot['n_units']} {boot['unit']}s, "
        f"{boot['n_resamples']} resamples; Dice/HD95 at each image's original size "
        f"(HD95 {m['hd95']:.1f} px)"
    )
    if m["threshold_source"] == "override":
        lines.append(f"  decision threshold {m['threshold']:.4f} given on the command line")
    elif m["model"]["num_classes"] == 1:
        lines.append(
            f"  decision threshold {m['threshold']:.4f}: the model's stored operating point "
            f"(rule {m['threshold_rule']}; nothing is refitted on these images)"
        )
    if m["referral"]:
        refer = ", ".join(
            f"{100 * r['referred_fraction']:.0f} %: AUC {r['auc']:.3f} sens "
            f"{r['sensitivity']:.2f} spec {r['specificity']:.2f}"
            for r in m["referral"]
            if r["referred_fraction"] > 0
        )
        lines.append(f"  referring the most flip-uncertain cases -> {refer}")
    elif m["uncertainty"]["note"]:
        lines.append(f"  no referral curve: {m['uncertainty']['note']}")
    took = f" in {seconds:.0f} s" if seconds is not None else ""
    lines.append(f"  results{took}: {result.out_dir} ({', '.join(sorted(result.paths))})")
    return "\n".join(lines)


def test_row(test_metrics: dict[str, float], predictions_csv: Path | None) -> dict[str, Any]:
    """A training run's test metrics (``test/*`` values) as a table row, with the AUC
    interval bootstrapped (over images) from its per-image CSV when there is one."""
    row: dict[str, Any] = {
        key: test_metrics.get(f"test/{key}")
        for key in ("dice", "auc", "sensitivity", "specificity", "ece", "brier")
    }
    row["threshold"] = test_metrics.get("test/decision_threshold")
    if predictions_csv is not None and predictions_csv.is_file():
        import numpy as np
        import pandas as pd

        from bus_mtl.experiments.evaluate import bootstrap_intervals

        pred = pd.read_csv(predictions_csv)
        row["n"] = len(pred)
        if {"label", "prob"} <= set(pred.columns) and row["threshold"] is not None:
            probs = pred["prob"].to_numpy(dtype=float)
            calls = np.nan_to_num(probs, nan=0.0) > float(row["threshold"])
            cis, _ = bootstrap_intervals(pred["label"].to_numpy(), probs, calls)
            row["auc_ci"] = cis.get("auc")
    return row


def external_check(
    ckpt: str | Path,
    root: str | Path,
    out_dir: str | Path,
    test_metrics: dict[str, float] | None = None,
    predictions_csv: Path | None = None,
    test_name: str = "BUSI test part",
) -> str:
    """``bus-mtl main``'s last step: evaluate ``ckpt`` on the external set at ``root`` (a
    folder holding ``manifest.csv``, or the CSV itself) into ``out_dir``; the report puts the
    run's own test metrics (``test_metrics``, its per-image ``predictions_csv``) beside it.
    Raises as :func:`bus_mtl.experiments.evaluate.evaluate`."""
    from bus_mtl.experiments.evaluate import evaluate

    root = Path(root)
    manifest = root if root.suffix == ".csv" else root / "manifest.csv"
    start = time.perf_counter()
    samples, described = load_samples([manifest])
    result = evaluate(
        load_predictor(ckpt=str(ckpt)),
        samples,
        out_dir,
        name=manifest.parent.name,
        model=str(ckpt),
        data=described,
        command=shlex.join(
            [
                "bus-mtl",
                "evaluate",
                "--ckpt",
                str(ckpt),
                "--manifest",
                str(manifest),
                "--out",
                str(out_dir),
            ]
        ),
        progress=sys.stderr.isatty(),
    )
    test = test_row(test_metrics, predictions_csv) if test_metrics else None
    return report(result, time.perf_counter() - start, test=test, test_name=test_name)
