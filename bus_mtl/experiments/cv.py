"""K-fold (and cross-centre) cross-validation of one configuration; resumable.

The flow, top to bottom in this file (:func:`run_cv`)::

    run_cv(configs, OUT, build=build_cli)
      1. the split     write_split   OUT/split.json, drawn once by the data module's
                                     make_split (bus_mtl.data.splits) from the data configs
                                     and reused by every later call (and by every variant
                                     of a compare); OUT/conflicting_groups.csv beside it
      2. the checks    check_tuning  refuse (TuningLeak) a run whose test parts would hold
                                     images a sweep tuned on; OUT/tuned_by.json
                                     (bus_mtl.experiments.tuning)
      3. the folds     fold_jobs     one FoldJob per part of the split: fold k, seed SEED + k
      4. run them      run_jobs      every fold without DONE, one after the other in this
                                     process; with --parallel N > 1, N at a time, each in a
                                     subprocess (``python -m bus_mtl.experiments.cv
                                     OUT/fold_k/job.json``) that calls the same run_fold
         one fold      run_fold      cli = build(fold's args, run=False)
                                     cli.trainer.fit(...)   (from last.ckpt when one is there)
                                     cli.trainer.test(..., ckpt_path=best)
                                     -- the path ``bus-mtl main`` takes; what it reports comes
                                     from that Trainer: its checkpoint callback, test() results
                                     and per-image CSV
      5. the summary   finish        OUT/summary.{csv,md,json}, reliability.png, read from the
                                     folds' metrics.json and test_predictions.csv

``build`` is the LightningCLI builder of the command-line layer
(:func:`bus_mtl.cli.lightning.build_cli`), passed down so this module does not import the
layer above it; folds store it as ``"module:function"`` so that a fold's subprocess
imports the same one. A fold's arguments are the configs, then ``--seed_everything=SEED+k``,
the extra command-line arguments, and ``--data.split=file --data.split_file=OUT/split.json
--data.fold=k``; ``fold.log`` holds them as the equivalent ``bus-mtl fit|test`` commands.

Layout::

    OUT/split.json                  the split, computed once, used by every fold
    OUT/command.txt, seeds.json     how the folder was produced
    OUT/fold_k/job.json             the fold's inputs (configs, split, fold, seed, arguments)
    OUT/fold_k/<Net>/version_0/     LightningCLI logs (metrics.csv), checkpoints, config.yaml
    OUT/fold_k/run.json             the fit's outcome as its Trainer reported it: best/last
                                    checkpoint, score, epochs, parameters (+ test metrics)
    OUT/fold_k/test_predictions.csv per-image probability, Dice, ... (PerImagePredictions)
    OUT/fold_k/metrics.json         the fold's test metrics (+ parameters, seed)
    OUT/fold_k/fold.log             the fold's commands; with --parallel > 1 its whole output
    OUT/fold_k/DONE                 written last; a fold with DONE is never rerun
    OUT/summary.{csv,md,json}, reliability.png
    OUT/conflicting_groups.csv      near-duplicate groups whose labels disagree: group, id,
                                    label, image file, the fold whose test part holds it
    OUT/tuned_by.json               with ``--tuned-by``: the sweep's hold-out that was checked
    OUT/protocol.json               {"final": bool, "tuning": data.tuning} of the last call

Resume: re-running on the same OUT skips folds with ``DONE``; a fold without it whose
``run.json`` names a finished fit's checkpoint only reruns ``test``, any other restarts its
fit from the newest ``last.ckpt`` in its folder (the config's ``ModelCheckpoint`` needs
``save_last: true``) and logs into the same CSV version.

With ``data.tuning: exclude`` the split leaves the tuning hold-out out of every fold (it is
recorded in ``split.json`` as ``tuning``, with its fingerprint) and the summary says how many
images that is. ``tuned_by`` (``bus-mtl cv --tuned-by SWEEP``) names a sweep's hold-out; a run
whose test parts would hold any of its images is refused, naming them
(:class:`~bus_mtl.experiments.tuning.TuningLeak`).
A run declared final (``final=True``, ``--final``) refuses ``data.tuning: off``; the summary
of a run without a hold-out names the choices that could have seen its test images
(:mod:`bus_mtl.experiments.protocol`, docs/protocol.md).
"""

from __future__ import annotations

import gc
import importlib
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from bus_mtl.configs import component_kind, config_args
from bus_mtl.experiments.results import (
    CONFLICTS_CSV,
    binary_rows,
    read_predictions,
    write_cv_summary,
    write_json,
)
from bus_mtl.experiments.tuning import (
    PROTOCOL_RECORD,
    TUNED_BY,
    check_tuning,
    refuse_tune_mode,
    refuse_unfinal,
    tuning_lines,
    tuning_summary,
)

if TYPE_CHECKING:  # the data module pulls in Lightning: imported where one is built
    from bus_mtl.data.datamodule import BUSDataModule

PROTOCOLS = ("kfold", "by_centre")
#: A fold's record of its fit (see the layout above).
RUN_RECORD = "run.json"

#: ``build(args, run=False, ckpt_path=None)`` -> a LightningCLI with ``trainer``, ``model``
#: and ``datamodule`` built and nothing run (:func:`bus_mtl.cli.lightning.build_cli`).
Builder = Callable[..., Any]


class FoldFailed(RuntimeError):
    """A fold's subprocess exited with an error; the message names its log file."""


# ---------------------------------------------------------------------------------------------
# The whole run


def run_cv(
    configs: Sequence[str],
    out: str | Path,
    folds: int = 5,
    extra: Sequence[str] = (),
    parallel: int = 1,
    protocol: str = "kfold",
    seed: int = 42,
    split_path: str | Path | None = None,
    argv: Sequence[str] | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    tuned_by: str | Path | None = None,
    build: Builder | str | None = None,
    final: bool = False,
) -> tuple[dict[str, Any] | None, dict[int, str]]:
    """Run (or resume) the cross-validation folder ``out``: steps 1-5 of the module doc.

    The split is ``split_path`` when given (``compare`` shares one between variants), else
    ``OUT/split.json``, computed on the first call and reused by every later one.
    ``tuned_by``: a sweep's folder or hold-out record
    (:func:`~bus_mtl.experiments.tuning.load_tuned`); the run is refused
    (:class:`~bus_mtl.experiments.tuning.TuningLeak`, before any fold runs) when a test part
    holds one of its images. ``final``: the run is declared final (``--final``):
    ``data.tuning: off`` is refused (:func:`~bus_mtl.experiments.tuning.refuse_unfinal`), and
    the record says so (``OUT/protocol.json``).
    ``build``: the LightningCLI builder (see :data:`Builder`); ``cwd``/``env``: of the fold
    subprocesses (``parallel > 1``). Returns ``(summary payload or None if no fold finished,
    {fold: error})``.
    """
    if not configs:
        raise ValueError("at least one --config is needed")
    # 1. the split, 2. the checks
    dm = build_datamodule(configs, extra)
    tuning = dm.tuning
    refuse_tune_mode(tuning)
    if final:
        refuse_unfinal(tuning)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / PROTOCOL_RECORD, {"final": final, "tuning": tuning})
    made = False
    if split_path is None:
        split_path = out / "split.json"
        if not split_path.is_file():
            write_split(dm, split_path, protocol, folds)
            made = True
    try:
        checked = check_tuning(Path(split_path), tuning, tuned_by)
    except ValueError:  # TuningLeak, or a bad --tuned-by
        if made:  # a refused run leaves no split behind to be resumed by mistake
            for name in ("split.json", "split_names.json", CONFLICTS_CSV):
                (out / name).unlink(missing_ok=True)
        raise
    if checked is not None:
        write_json(out / TUNED_BY, checked)
    # 3. the folds, 4. run them
    jobs = fold_jobs(configs, out, Path(split_path), seed, extra, cwd, env, build)
    record_inputs(out, argv, jobs)
    errors = run_jobs(jobs, parallel)
    # 5. the summary
    done = [j for j in jobs if (j.folder / "DONE").is_file()]
    payload = finish(out) if done else None
    return payload, errors


# ---------------------------------------------------------------------------------------------
# 1. The split (2. the checks are in bus_mtl.experiments.tuning)


def build_datamodule(configs: Sequence[str], extra: Sequence[str] = ()) -> BUSDataModule:
    """The ``BUSDataModule`` the configs (and ``--data.*`` extra args) describe, parsed as
    LightningCLI parses its ``data`` section, without building the model or the trainer.

    Later configs override earlier ones; a source preset (``--data.sources FILE``, or a
    path in a config's ``data.sources``, relative to that config) is read as a file. A net
    preset among the configs is skipped; a source preset is loaded as ``--data.sources``.
    """
    from jsonargparse import ActionConfigFile, ArgumentParser

    from bus_mtl.data.datamodule import BUSDataModule

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    # sub_configs: a class-typed value (data.sources) may be a preset file, as in LightningCLI.
    parser.add_class_arguments(BUSDataModule, "data", fail_untyped=False, sub_configs=True)
    args: list[str] = []
    sections: set[str] = set()
    for path in configs:
        if not Path(path).is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        kind = component_kind(path)
        if kind == "sources":
            args += ["--data.sources", str(path)]
        elif kind is None:
            args += ["--config", str(path)]
            sections |= _sections(Path(path))
    # The trainer, model, ... sections of the configs: parsed as opaque values, not used.
    for key in sorted(sections - {"data", "config"}):
        parser.add_argument(f"--{key}", type=Any, default=None)
    args += _data_args(extra)
    return parser.instantiate_classes(parser.parse_args(args)).data


def _sections(path: Path) -> set[str]:
    """The top-level keys of the config file ``path``."""
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must be a YAML mapping")
    return set(data)


def _data_args(extra: Sequence[str]) -> list[str]:
    """The ``--data.*`` arguments of ``extra`` (``--data.x=v`` and ``--data.x v``)."""
    out: list[str] = []
    items = list(extra)
    i = 0
    while i < len(items):
        arg = items[i]
        i += 1
        if not (arg.startswith("--data.") or arg.startswith("--data=")):
            continue
        out.append(arg)
        if "=" not in arg and i < len(items) and not items[i].startswith("--"):
            out.append(items[i])
            i += 1
    return out


def write_split(
    dm: BUSDataModule, path: Path, protocol: str = "kfold", folds: int = 5
) -> dict[str, Any]:
    """Draw the split of the data module ``dm``'s data once and write it to ``path``, with
    ``<stem>_names.json`` (the folds' names) and the cross-class groups (:data:`CONFLICTS_CSV`)
    beside it.

    ``kfold``: stratified grouped ``folds``-fold split. ``by_centre``: one fold per centre,
    trained on the other centres and tested on it (both directions for two centres). The
    rest (seed, validation share, near-duplicate groups, tuning hold-out) is ``dm``'s:
    :func:`bus_mtl.data.splits.make_split` draws it as ``dm.setup()`` would. Returns
    ``{"n_folds", "fold_names"}``.
    """
    from bus_mtl.data.check import conflict_rows, write_conflicts_csv
    from bus_mtl.data.splits import make_split

    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol: {protocol!r} is not one of {PROTOCOLS}")
    refuse_tune_mode(dm.tuning)
    report = dm.check()  # also fills the decode cache the folds then read
    settings = replace(dm.split_settings, kind=protocol, n_folds=folds, test_centres=None)
    split = make_split(report.samples, report.groups, settings)
    if protocol == "kfold":
        names = [f"fold {k}" for k in range(folds)]
    else:
        centres = list(split.test_centres or [])
        names = [f"{'+'.join(x for x in centres if x != c)}→{c}" for c in centres]
    split.save(path)
    write_conflicts_csv(conflict_rows(report, split), Path(path).with_name(CONFLICTS_CSV))
    names_path = Path(path).with_name(Path(path).stem + "_names.json")
    names_path.write_text(json.dumps(names))
    return {"n_folds": len(split.folds), "fold_names": names}


def fold_names_for(split_path: Path) -> list[str]:
    names = Path(split_path).with_name(Path(split_path).stem + "_names.json")
    if names.is_file():
        return json.loads(names.read_text())
    n = len(json.loads(Path(split_path).read_text())["folds"])
    return [f"fold {k}" for k in range(n)]


# ---------------------------------------------------------------------------------------------
# 3. The folds


@dataclass
class FoldJob:
    """One fold: what it trains and tests on, where it writes, and the CLI builder to use."""

    configs: list[str]
    split_path: Path
    fold: int
    folder: Path
    seed: int
    fold_name: str = ""
    extra: list[str] = field(default_factory=list)
    build: str = ""  # "module:function" of the Builder
    python: str = sys.executable
    cwd: Path | None = None
    env: dict[str, str] | None = None

    def cli_args(self) -> list[str]:
        """The fold's LightningCLI arguments (no sub-command; later ones win)."""
        args = []
        for cfg in self.configs:
            args += config_args(cfg)  # --config, or --model.net/--data.sources for a preset
        return [
            *args,
            f"--seed_everything={self.seed}",
            *self.extra,
            f"--trainer.default_root_dir={self.folder.resolve()}",
            "--data.split=file",
            f"--data.split_file={Path(self.split_path).resolve()}",
            f"--data.fold={self.fold}",
        ]

    def base_args(self, command: str) -> list[str]:
        """``bus-mtl COMMAND`` arguments of this fold (without the program name)."""
        return [command, *self.cli_args()]

    def to_json(self) -> str:
        data = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str) -> FoldJob:
        data = json.loads(text)
        for key in ("split_path", "folder", "cwd"):
            if data.get(key) is not None:
                data[key] = Path(data[key])
        return cls(**data)


def builder_path(build: Builder | str | None) -> str:
    """``"module:function"`` of a builder (``""`` for none), importable by a subprocess."""
    if build is None or isinstance(build, str):
        return build or ""
    return f"{build.__module__}:{build.__qualname__}"


def fold_jobs(
    configs: Sequence[str],
    out: Path,
    split_path: Path,
    seed: int = 42,
    extra: Sequence[str] = (),
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    build: Builder | str | None = None,
) -> list[FoldJob]:
    """One job per fold of ``split_path``; fold k is seeded ``seed + k`` (same for every
    variant, so a comparison differs only in the model)."""
    names = fold_names_for(split_path)
    return [
        FoldJob(
            configs=list(configs),
            split_path=Path(split_path),
            fold=k,
            folder=Path(out) / f"fold_{k}",
            seed=seed + k,
            fold_name=name,
            extra=list(extra),
            build=builder_path(build),
            cwd=cwd,
            env=env,
        )
        for k, name in enumerate(names)
    ]


def record_inputs(out: Path, argv: Sequence[str] | None, jobs: Sequence[FoldJob]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if argv is not None:
        (out / "command.txt").write_text(shlex.join(["bus-mtl", *argv]) + "\n")
    seeds = {f"fold_{j.fold}": j.seed for j in jobs}
    write_json(out / "seeds.json", seeds)
    # write_split writes the cross-class groups beside the split; a folder sharing the split
    # (a compare variant) gets its own copy, so its summary can count them.
    conflicts = {Path(j.split_path).with_name(CONFLICTS_CSV) for j in jobs}
    for src in conflicts:
        if src.is_file() and src.resolve() != (out / CONFLICTS_CSV).resolve():
            shutil.copyfile(src, out / CONFLICTS_CSV)


# ---------------------------------------------------------------------------------------------
# 4. Running the folds


def run_jobs(jobs: Sequence[FoldJob], parallel: int = 1) -> dict[int, str]:
    """Run the folds without ``DONE``: in this process one after the other, or ``parallel``
    at a time in subprocesses. Returns ``{job index: error}`` for the folds that failed."""
    if parallel < 1:
        raise ValueError(f"parallel must be >= 1, got {parallel}")
    errors: dict[int, str] = {}

    def one(i: int) -> None:
        job = jobs[i]
        if (job.folder / "DONE").is_file():
            print(f"[cv] {job.folder}: done earlier, skipped", flush=True)
            return
        print(f"[cv] {job.folder}: running", flush=True)
        try:
            res = run_fold(job) if parallel == 1 else run_fold_in_subprocess(job)
            print(f"[cv] {job.folder}: finished in {res['seconds']} s", flush=True)
        except Exception as err:  # one fold's failure (OOM, NaN loss, ...) spares the others
            errors[i] = f"{type(err).__name__}: {err}"
            print(f"[cv] {job.folder}: FAILED: {errors[i]}", file=sys.stderr, flush=True)

    if parallel == 1:
        for i in range(len(jobs)):
            one(i)
    else:
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            list(pool.map(one, range(len(jobs))))
    return errors


def run_fold(job: FoldJob) -> dict[str, Any]:
    """Fit (or resume) and test one fold in this process; writes and returns ``metrics.json``.

    The ``bus-mtl main`` path: ``build(args, run=False)``, ``trainer.fit``, ``trainer.test``
    on the best checkpoint. Errors propagate (logged to ``fold.log`` first).
    """
    job.folder.mkdir(parents=True, exist_ok=True)
    (job.folder / "job.json").write_text(job.to_json())
    try:
        return _fit_and_test(job)
    except BaseException as err:
        with open(job.folder / "fold.log", "a") as log:
            log.write("".join(traceback.format_exception(err)))
        if isinstance(err, SystemExit):  # LightningCLI's argument errors
            raise FoldFailed(f"fold {job.fold}: LightningCLI exited ({err.code})") from err
        raise
    finally:
        _release()


def _fit_and_test(job: FoldJob) -> dict[str, Any]:
    folder = job.folder
    if not job.build:
        raise FoldFailed("no LightningCLI builder given (run_cv(..., build=build_cli))")
    module, name = job.build.split(":")
    build: Builder = getattr(importlib.import_module(module), name)
    start = time.perf_counter()

    # Fit, unless an earlier run finished it (its run.json names an existing checkpoint).
    record_path = folder / RUN_RECORD
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    fit = record.get("fit") or {}
    ckpt = fit.get("best_model_path") or fit.get("last_model_path")
    cli = None
    if not (ckpt and Path(ckpt).is_file()):
        last = _newest(folder.rglob("last*.ckpt"))  # a killed fit resumes from here
        _log_command(job, "fit", last)
        cli = build(job.cli_args(), run=False, ckpt_path=last)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=last)
        fit = _fit_outcome(cli)
        ckpt = fit["best_model_path"] or fit["last_model_path"]
        if not (ckpt and Path(ckpt).is_file()):
            raise FoldFailed(
                f"fold {job.fold}: fit finished without a checkpoint to test; the config "
                "needs a ModelCheckpoint callback"
            )
        write_json(record_path, {"fit": fit})
    fit_seconds = time.perf_counter() - start

    # Test the best checkpoint, on the fit's Trainer when it ran here.
    _log_command(job, "test", ckpt)
    if cli is None:
        cli = build(job.cli_args(), run=False, ckpt_path=ckpt)
    writer = _per_image_writer(cli.trainer, folder)
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt)
    values = _scalars(results[0] if results else {})
    metrics = {k: v for k, v in values.items() if k.startswith("test/")}
    if not metrics:
        raise FoldFailed(f"fold {job.fold}: test logged no metric")
    predictions = folder / "test_predictions.csv"
    if writer.written is None or not Path(writer.written).is_file():
        raise FoldFailed(f"fold {job.fold}: the per-image CSV was not written")
    if Path(writer.written).resolve() != predictions.resolve():
        shutil.copyfile(writer.written, predictions)
    write_json(record_path, {"fit": fit, "test": metrics})

    payload = {
        "fold": job.fold,
        "fold_name": job.fold_name or f"fold {job.fold}",
        "seed": job.seed,
        "metrics": metrics,
        "params": fit.get("params"),
        "checkpoint": ckpt,
        "best_model_score": fit.get("best_model_score"),
        "monitor": fit.get("monitor"),
        "epochs": fit.get("epochs"),
        "seconds": round(time.perf_counter() - start, 1),
        "fit_seconds": round(fit_seconds, 1),
    }
    write_json(folder / "metrics.json", payload)
    (folder / "DONE").write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
    return payload


def _newest(paths: Any) -> str | None:
    found = sorted((p for p in paths if p.is_file()), key=lambda p: p.stat().st_mtime)
    return str(found[-1]) if found else None


def _log_command(job: FoldJob, command: str, ckpt: str | None) -> None:
    """The equivalent ``bus-mtl fit|test`` command, appended to ``fold.log``."""
    args = ["bus-mtl", *job.base_args(command), *([f"--ckpt_path={ckpt}"] if ckpt else [])]
    with open(job.folder / "fold.log", "a") as log:
        log.write(f"\n$ {shlex.join(args)}\n")
    print(f"[cv] {job.folder}: {command}", flush=True)


def _scalars(values: dict[str, Any]) -> dict[str, float]:
    """Finite scalar values (tensors included) of a metrics dict."""
    out = {}
    for key, value in values.items():
        try:
            v = float(value.item() if hasattr(value, "item") else value)
        except (TypeError, ValueError, RuntimeError):
            continue
        if not (math.isnan(v) or math.isinf(v)):
            out[key] = v
    return out


def _fit_outcome(cli: Any) -> dict[str, Any]:
    """What the fit's Trainer says: checkpoints, best score, epochs, the net's parameters."""
    trainer, ckpt = cli.trainer, cli.trainer.checkpoint_callback
    fit: dict[str, Any] = {"epochs": trainer.current_epoch, "steps": trainer.global_step}
    score = getattr(ckpt, "best_model_score", None)
    fit["best_model_path"] = getattr(ckpt, "best_model_path", "") or ""
    fit["best_model_score"] = _scalars({"s": score}).get("s") if score is not None else None
    fit["monitor"] = getattr(ckpt, "monitor", None)
    fit["last_model_path"] = getattr(ckpt, "last_model_path", "") or ""
    net = getattr(cli.model, "net", None) or cli.model
    fit["params"] = int(sum(p.numel() for p in net.parameters()))
    return fit


def _per_image_writer(trainer: Any, folder: Path) -> Any:
    """The Trainer's ``PerImagePredictions`` (one writing into the fold when the config has
    none): its CSV becomes ``fold_k/test_predictions.csv``."""
    from bus_mtl.training.callbacks import PerImagePredictions

    for callback in trainer.callbacks:
        if isinstance(callback, PerImagePredictions):
            return callback
    callback = PerImagePredictions(str(folder / "test_predictions.csv"))
    trainer.callbacks.append(callback)
    return callback


def _release() -> None:
    """Between in-process folds: close the W&B run and free memory."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_fold_in_subprocess(job: FoldJob) -> dict[str, Any]:
    """:func:`run_fold` in a subprocess of its own (``--parallel`` > 1), whose output goes
    to ``fold_k/fold.log``; its result is read back from the ``metrics.json`` it wrote."""
    folder = job.folder
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "job.json"
    spec.write_text(job.to_json())
    log = folder / "fold.log"
    env = {**(job.env if job.env is not None else os.environ), "PYTHONUNBUFFERED": "1"}
    with open(log, "a") as fh:
        proc = subprocess.run(
            [job.python, "-m", "bus_mtl.experiments.cv", str(spec)],
            cwd=job.cwd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
        )
    if proc.returncode != 0 or not (folder / "DONE").is_file():
        raise FoldFailed(f"fold {job.fold} failed (exit code {proc.returncode}); see {log}")
    return json.loads((folder / "metrics.json").read_text())


def _child_main(argv: list[str]) -> int:
    """``python -m bus_mtl.experiments.cv JOB.json``: the body of one fold's subprocess."""
    job = FoldJob.from_json(Path(argv[0]).read_text())
    try:
        run_fold(job)
    except Exception as err:  # the traceback is in fold.log already
        print(f"bus-mtl cv: fold {job.fold} failed: {err}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------------------
# 5. The summary


def finish(out: Path) -> dict[str, Any]:
    """Summary tables + the reliability diagram of the pooled out-of-fold probabilities."""
    from bus_mtl.experiments.results import TABLE_METRICS
    from bus_mtl.training.visualization import reliability_diagram

    payload = write_cv_summary(out, TABLE_METRICS)
    tuning = tuning_summary(out)
    if tuning is not None:
        md = out / "summary.md"
        md.write_text(md.read_text().rstrip("\n") + "\n\n" + "\n".join(tuning_lines(tuning)))
        payload["tuning"] = tuning
        write_json(out / "summary.json", payload)
    cls = binary_rows(read_predictions(out))
    if len(cls) and cls["label"].nunique() == 2:
        reliability_diagram(
            cls["prob"].to_numpy(dtype=float),
            cls["label"].to_numpy(),
            out / "reliability.png",
            title=out.name,
        )
    return payload


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
