"""K-fold (and cross-centre) runner: one subprocess per fold runs LightningCLI ``fit`` then
``test`` (``bus-mtl fit|test ...``, in that process) on one recorded split file.

Subprocesses isolate folds (a crash or an out-of-memory fold does not take the others
down), let ``--parallel N`` folds share one GPU, and make a killed run resumable::

    OUT/split.json                  the split, computed once, used by every fold
    OUT/command.txt, seeds.json     how the folder was produced
    OUT/fold_k/<Net>/version_0/     LightningCLI logs, checkpoints and resolved config.yaml
    OUT/fold_k/run.json             RunRecorder: val history, checkpoint paths, test metrics
    OUT/fold_k/test_predictions.csv per-image probability, Dice, ... (PerImagePredictions)
    OUT/fold_k/metrics.json         the fold's test metrics (+ parameters, seed)
    OUT/fold_k/fold.log             output of the fold's process (its fit and test commands)
    OUT/fold_k/DONE                 written last; a fold with DONE is never rerun
    OUT/summary.{csv,md,json}, reliability.png
    OUT/conflicting_groups.csv      near-duplicate groups whose labels disagree: group, id,
                                    label, image file, the fold whose test part holds it
    OUT/tuned_by.json               with ``--tuned-by``: the sweep's hold-out that was checked

With ``data.tuning: exclude`` the split leaves the tuning hold-out out of every fold (it is
recorded in ``split.json`` as ``tuning``, with its fingerprint) and the summary says how many
images that is. ``tuned_by`` (``bus-mtl cv --tuned-by SWEEP``) names a sweep's hold-out; a run
whose test parts would hold any of its images is refused, naming them (:class:`TuningLeak`).

A fold without ``DONE`` resumes: its fit restarts from ``last.ckpt`` when one exists (the
config's ``ModelCheckpoint`` needs ``save_last: true``), and a fold whose fit finished only
reruns ``test``.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bus_mtl.experiments.results import (
    CONFLICTS_CSV,
    binary_rows,
    read_predictions,
    write_cv_summary,
    write_json,
)

PROTOCOLS = ("kfold", "by_centre")
RECORDER = "bus_mtl.experiments.callbacks.RunRecorder"
PREDICTIONS = "bus_mtl.training.callbacks.PerImagePredictions"
#: What a sweep writes (``bus-mtl sweep``): the ids its trials validated on.
TUNING_RECORD = "tuning.json"
#: What ``run_cv(tuned_by=...)`` writes: the sweep hold-out it checked the folds against.
TUNED_BY = "tuned_by.json"
#: Tuned images named in a refusal before "... and N more".
SHOWN = 10


class FoldFailed(RuntimeError):
    """A fold's subprocess exited with an error; the message names its log file."""


class TuningLeak(ValueError):
    """cv would report on images hyper-parameters were tuned on (the message names them), or
    cannot check it (a ``--tuned-by`` without a recorded hold-out, ``data.tuning: tune``)."""


def refuse_tune_mode(tuning: str) -> None:
    """``data.tuning: tune`` belongs to sweep trials (val = the hold-out, no test part)."""
    if tuning == "tune":
        raise TuningLeak(
            "data.tuning: 'tune' trains on every image outside the tuning hold-out and "
            "validates on it, with no test part: the setting of a sweep trial (is a trial's "
            "config.yaml among the --config files?). To report tuned settings, run cv with "
            "--data.tuning=exclude (the hold-out is then in no fold), and --tuned-by SWEEP "
            "to check it is the sweep's hold-out"
        )


# ---------------------------------------------------------------------------------------------
# The split


def _data_only_configs(configs: Sequence[str], tmp: Path) -> list[str]:
    """Copies of the config files holding only their ``data`` section."""
    out = []
    for i, path in enumerate(configs):
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a config file must be a YAML mapping")
        if "data" in data:
            target = tmp / f"data_{i}.yaml"
            target.write_text(yaml.safe_dump({"data": data["data"]}))
            out.append(str(target))
    return out


def build_datamodule(configs: Sequence[str], extra: Sequence[str] = ()) -> Any:
    """The ``BUSDataModule`` the configs (and ``--data.*`` extra args) describe, parsed the
    way LightningCLI parses it, without building the model or the trainer."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    from bus_mtl.data.datamodule import BUSDataModule

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_class_arguments(BUSDataModule, "data", fail_untyped=False)
    with tempfile.TemporaryDirectory() as tmp:
        args: list[str] = []
        for cfg in _data_only_configs(configs, Path(tmp)):
            args += ["--config", cfg]
        args += [a for a in extra if a.startswith("--data.") or a.startswith("--data=")]
        parsed = parser.parse_args(args)
        init = parser.instantiate_classes(parsed)
    return init.data


def make_split(
    configs: Sequence[str],
    path: Path,
    protocol: str = "kfold",
    folds: int = 5,
    extra: Sequence[str] = (),
) -> dict[str, Any]:
    """Compute the split once from the data the configs describe and write it to ``path``.

    ``kfold``: stratified grouped ``folds``-fold split. ``by_centre``: one fold per centre,
    trained on the other centres and tested on it (both directions for two centres).
    Returns the split as a dict with ``fold_names``.
    """
    from bus_mtl.data.check import check_data, conflict_rows, write_conflicts_csv
    from bus_mtl.data.splits import Split, by_centre_split, kfold_split, tuning_holdout, without

    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol: {protocol!r} is not one of {PROTOCOLS}")
    dm = build_datamodule(configs, extra)
    refuse_tune_mode(dm.tuning)
    report = check_data(
        dm.source, dm.image_size, dm.cache_dir, dm.dup_threshold, dm.num_workers or None
    )
    report.raise_if_errors()
    samples, groups = report.samples, report.groups
    held: list[str] = []
    if dm.tuning == "exclude":  # the hold-out is in no fold: split the other images
        held = tuning_holdout(samples, groups, dm.tuning_fraction, dm.seed)
        samples = without(samples, held)
    if protocol == "kfold":
        split = kfold_split(samples, groups, folds, dm.seed, dm.val_fraction, dm.dup_threshold)
        names = [f"fold {k}" for k in range(folds)]
    else:
        centres = sorted({s.centre for s in samples})
        if len(centres) < 2:
            raise ValueError(
                f"protocol by_centre needs data from at least two centres, got {centres}; "
                "add a second source (e.g. UDIATSource) to data.sources"
            )
        parts = [
            by_centre_split(samples, [c], groups, dm.seed, dm.val_fraction, dm.dup_threshold)
            for c in centres
        ]
        split = Split(
            "by_centre",
            dm.seed,
            len(parts),
            dm.dup_threshold,
            dm.val_fraction,
            [p.folds[0] for p in parts],
            [list(g) for g in groups],
            centres,
        )
        names = [f"{'+'.join(x for x in centres if x != c)}→{c}" for c in centres]
    if held:
        split.tuning, split.tuning_fraction = held, dm.tuning_fraction
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
# The tuning hold-out


def load_tuned(path: str | Path) -> dict[str, Any]:
    """The hold-out a sweep tuned on: ``{"ids", "fingerprint", "source", ...}``.

    ``path`` is a local sweep's folder or its ``tuning.json`` (``bus-mtl sweep``), or a
    trial run's ``split.json`` (saved beside its ``config.yaml``; W&B agent runs) or a folder
    of such runs (the union of their hold-outs).
    """
    from bus_mtl.data.splits import tuning_fingerprint

    path = Path(path).expanduser()
    if path.is_dir():
        files = [path / TUNING_RECORD] if (path / TUNING_RECORD).is_file() else []
        files = files or sorted(path.rglob("split.json"))
    elif path.is_file():
        files = [path]
    else:
        raise TuningLeak(
            f"--tuned-by: {path} not found; give a sweep folder or its {TUNING_RECORD}"
        )
    ids: set[str] = set()
    info: dict[str, Any] = {}
    for f in files:
        try:
            data = json.loads(f.read_text())
        except ValueError as err:
            raise TuningLeak(f"--tuned-by: {f} is not valid JSON: {err}") from None
        found = (data.get("ids") or data.get("tuning") or []) if isinstance(data, dict) else []
        if not found:
            continue  # e.g. a run's split.json made with data.tuning: off
        ids.update(found)
        for key in ("seed", "tuning_fraction"):
            if key in data and key not in info:
                info[key] = data[key]
    if not ids:
        raise TuningLeak(
            f"--tuned-by: no tuning hold-out recorded in {path} (no {TUNING_RECORD} with "
            "'ids', no split.json with 'tuning'); sweeps record it when their trials run "
            "with data.tuning: tune"
        )
    return {
        **info,
        "source": str(path),
        "ids": sorted(ids),
        "fingerprint": tuning_fingerprint(sorted(ids)),
    }


def tuning_overlap(split_path: str | Path, tuned: Sequence[str]) -> dict[str, list[int]]:
    """``{id: [folds]}`` of the tuned ids that a fold of the split would test on."""
    data = json.loads(Path(split_path).read_text())
    tuned_set, held = set(tuned), set(data.get("tuning") or [])
    out: dict[str, list[int]] = {}
    for k, fold in enumerate(data["folds"]):
        for i in fold.get("test", []):
            if i in tuned_set and i not in held:
                out.setdefault(i, []).append(k)
    return dict(sorted(out.items()))


def check_tuning(
    split_path: Path, tuning: str, tuned_by: str | Path | None
) -> dict[str, Any] | None:
    """Refuse (:class:`TuningLeak`) a cv whose folds would report on tuned images.

    ``tuning`` is the run's ``data.tuning``: ``exclude`` needs a split with a hold-out.
    With ``tuned_by`` (see :func:`load_tuned`), every tuned image a test part holds is named.
    Returns the record to keep as ``tuned_by.json`` (``None`` without ``tuned_by``).
    """
    refuse_tune_mode(tuning)
    data = json.loads(Path(split_path).read_text())
    if tuning == "exclude" and not data.get("tuning"):
        raise TuningLeak(
            f"data.tuning: exclude, but {split_path} has no tuning hold-out (it was made with "
            "data.tuning: off, so its folds test on every image); use a new --out folder, "
            "where the split is made with the hold-out left out"
        )
    if tuned_by is None:
        return None
    tuned = load_tuned(tuned_by)
    overlap = tuning_overlap(split_path, tuned["ids"])
    if overlap:
        named = ", ".join(
            f"{i!r} (fold {'+'.join(map(str, k))})" for i, k in list(overlap.items())[:SHOWN]
        )
        more = f" and {len(overlap) - SHOWN} more" if len(overlap) > SHOWN else ""
        same = ", ".join(f"data.{k}: {tuned[k]}" for k in ("seed", "tuning_fraction") if k in tuned)
        raise TuningLeak(
            f"--tuned-by {tuned['source']}: the hyper-parameters were tuned on "
            f"{len(tuned['ids'])} image(s) (fingerprint {tuned['fingerprint']}), and "
            f"{len(overlap)} of them would be reported on in this cv's test folds "
            f"(data.tuning: {tuning}): {named}{more}. Run cv with --data.tuning=exclude and "
            f"the sweep's data config{f' ({same})' if same else ''}, in a new --out folder"
        )
    return {
        "tuned_by": tuned["source"],
        "fingerprint": tuned["fingerprint"],
        "images": len(tuned["ids"]),
        "reported": 0,
    }


def _split_of(out: Path) -> Path | None:
    """The split file a cv folder's folds ran on (its own, or the one its jobs name)."""
    if (out / "split.json").is_file():
        return out / "split.json"
    for job in sorted(out.glob("fold_*/job.json")):
        try:
            path = json.loads(job.read_text()).get("split_path")
        except ValueError:
            continue
        if path and Path(path).is_file():
            return Path(path)
    return None


def tuning_summary(out: Path) -> dict[str, Any] | None:
    """What the summary says about the tuning hold-out (``None``: no split file found)."""
    split_path = _split_of(Path(out))
    if split_path is None:
        return None
    from bus_mtl.data.splits import Split

    split = Split.load(split_path)
    info: dict[str, Any] = {
        "excluded": bool(split.tuning),
        "images": len(split.tuning),
        "fingerprint": split.tuning_fingerprint,
        "tuning_fraction": split.tuning_fraction if split.tuning else None,
        "seed": split.seed,
    }
    record = Path(out) / TUNED_BY
    if record.is_file():
        info["tuned_by"] = json.loads(record.read_text())
    return info


def _tuning_lines(info: dict[str, Any]) -> list[str]:
    if info["excluded"]:
        text = (
            f"Tuning hold-out excluded: {info['images']} images (fingerprint "
            f"{info['fingerprint']}, data.tuning_fraction {info['tuning_fraction']}, data.seed "
            f"{info['seed']}) are in no fold's train, validation or test part; they are kept "
            "for tuning (`bus-mtl sweep`)."
        )
    else:
        text = (
            "No tuning hold-out (data.tuning: off): every image is tested in one fold, so "
            "settings tuned on these images (e.g. by a sweep) must not be reported from this "
            "table; see the README's Experiments section."
        )
    tuned = info.get("tuned_by")
    if tuned:
        text += (
            f" Hyper-parameters tuned by {tuned['tuned_by']} on {tuned['images']} images "
            f"(fingerprint {tuned['fingerprint']}): none of them is among the test images."
        )
    return [text, ""]


# ---------------------------------------------------------------------------------------------
# One fold


@dataclass
class FoldJob:
    """Everything a fold's subprocesses need."""

    configs: list[str]
    split_path: Path
    fold: int
    folder: Path
    seed: int
    fold_name: str = ""
    extra: list[str] = field(default_factory=list)
    python: str = sys.executable
    cwd: Path | None = None
    env: dict[str, str] | None = None

    def base_args(self, command: str) -> list[str]:
        """``bus-mtl COMMAND`` arguments of this fold (without the program name)."""
        args = [command]
        for cfg in self.configs:
            args += ["--config", cfg]
        args += [
            f"--seed_everything={self.seed}",
            *self.extra,
            "--data.split=file",
            f"--data.split_file={Path(self.split_path).resolve()}",
            f"--data.fold={self.fold}",
        ]
        return args

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


def _cli(args: list[str]) -> None:
    """One LightningCLI run inside the fold's process; output goes to the fold's log."""
    from bus_mtl.cli.main import main as bus_mtl

    print(f"\n$ {shlex.join(['bus-mtl', *args])}", flush=True)
    code = bus_mtl(args)
    if code != 0:
        raise FoldFailed(f"bus-mtl {args[0]} exited with code {code}")


def _find_last_ckpt(job: FoldJob, record: dict[str, Any]) -> Path | None:
    candidates = []
    if record.get("ckpt_dir"):
        candidates.append(Path(record["ckpt_dir"]) / "last.ckpt")
    candidates += sorted(job.folder.rglob("last*.ckpt"), key=lambda p: p.stat().st_mtime)[::-1]
    return next((p for p in candidates if p.is_file()), None)


def fit_and_test(job: FoldJob) -> dict[str, Any]:
    """Fit (or resume) and test one fold in this process; returns its ``metrics.json``.

    Runs inside the fold's own subprocess (:func:`run_fold`), so both LightningCLI runs share
    one interpreter start-up while folds stay isolated from each other.
    """
    folder = job.folder
    folder.mkdir(parents=True, exist_ok=True)
    record_path = folder / "run.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    start = time.perf_counter()

    fit = record.get("fit", {})
    ckpt = fit.get("best_model_path") or fit.get("last_model_path")
    if not (ckpt and Path(ckpt).is_file()):
        args = job.base_args("fit") + [
            f"--trainer.default_root_dir={folder}",
            f"--trainer.callbacks+={RECORDER}",
            f"--trainer.callbacks.path={record_path}",
        ]
        last = _find_last_ckpt(job, record)
        if last is not None:
            args.append(f"--ckpt_path={last}")
        _cli(args)
        record = json.loads(record_path.read_text()) if record_path.is_file() else {}
        fit = record.get("fit", {})
        ckpt = fit.get("best_model_path") or fit.get("last_model_path")
        if not (ckpt and Path(ckpt).is_file()):
            raise FoldFailed(
                f"fold {job.fold}: fit finished without a checkpoint to test; the config "
                "needs a ModelCheckpoint callback"
            )
    fit_seconds = time.perf_counter() - start

    predictions = folder / "test_predictions.csv"
    _cli(
        job.base_args("test")
        + [
            f"--trainer.default_root_dir={folder / 'test'}",
            "--trainer.logger=false",
            f"--trainer.callbacks+={PREDICTIONS}",
            f"--trainer.callbacks.path={predictions}",
            f"--trainer.callbacks+={RECORDER}",
            f"--trainer.callbacks.path={record_path}",
            f"--ckpt_path={ckpt}",
        ]
    )
    record = json.loads(record_path.read_text())
    if not record.get("test"):
        raise FoldFailed(f"fold {job.fold}: test logged no metric")
    if not predictions.is_file():
        raise FoldFailed(f"fold {job.fold}: {predictions} was not written")
    payload = {
        "fold": job.fold,
        "fold_name": job.fold_name or f"fold {job.fold}",
        "seed": job.seed,
        "metrics": record["test"],
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


def run_fold(job: FoldJob) -> dict[str, Any]:
    """Run one fold in its own subprocess (log: ``fold_k/fold.log``) unless it is DONE."""
    folder = job.folder
    if not (folder / "DONE").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        spec = folder / "job.json"
        spec.write_text(job.to_json())
        log = folder / "fold.log"
        with open(log, "a") as fh:
            proc = subprocess.run(
                [job.python, "-m", "bus_mtl.experiments.cv", str(spec)],
                cwd=job.cwd,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=job.env,
            )
        if proc.returncode != 0 or not (folder / "DONE").is_file():
            raise FoldFailed(f"fold {job.fold} failed (exit code {proc.returncode}); see {log}")
    return json.loads((folder / "metrics.json").read_text())


def run_jobs(jobs: Sequence[FoldJob], parallel: int = 1) -> dict[int, str]:
    """Run fold jobs, ``parallel`` at a time; returns ``{job index: error}`` for failures."""
    if parallel < 1:
        raise ValueError(f"parallel must be >= 1, got {parallel}")
    errors: dict[int, str] = {}

    def one(i: int) -> None:
        job = jobs[i]
        label = f"{job.folder}"
        if (job.folder / "DONE").is_file():
            print(f"[cv] {label}: done earlier, skipped", flush=True)
            return
        print(f"[cv] {label}: running", flush=True)
        try:
            res = run_fold(job)
            print(f"[cv] {label}: finished in {res['seconds']} s", flush=True)
        except (FoldFailed, OSError, ValueError) as err:
            errors[i] = str(err)
            print(f"[cv] {label}: FAILED: {err}", file=sys.stderr, flush=True)

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        list(pool.map(one, range(len(jobs))))
    return errors


# ---------------------------------------------------------------------------------------------
# The whole cv folder


def fold_jobs(
    configs: Sequence[str],
    out: Path,
    split_path: Path,
    seed: int = 42,
    extra: Sequence[str] = (),
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
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
    # make_split writes the cross-class groups beside the split; a folder sharing the split
    # (a compare variant) gets its own copy, so its summary can count them.
    conflicts = {Path(j.split_path).with_name(CONFLICTS_CSV) for j in jobs}
    for src in conflicts:
        if src.is_file() and src.resolve() != (out / CONFLICTS_CSV).resolve():
            shutil.copyfile(src, out / CONFLICTS_CSV)


def finish(out: Path) -> dict[str, Any]:
    """Summary tables + the reliability diagram of the pooled out-of-fold probabilities."""
    from bus_mtl.experiments.results import TABLE_METRICS
    from bus_mtl.training.visualization import reliability_diagram

    payload = write_cv_summary(out, TABLE_METRICS)
    tuning = tuning_summary(out)
    if tuning is not None:
        md = out / "summary.md"
        md.write_text(md.read_text().rstrip("\n") + "\n\n" + "\n".join(_tuning_lines(tuning)))
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
) -> tuple[dict[str, Any] | None, dict[int, str]]:
    """Run (or resume) the cross-validation folder ``out``.

    The split is ``split_path`` when given (``compare`` shares one between variants), else
    ``OUT/split.json``, computed on the first call and reused by every later one.
    ``tuned_by``: a sweep's folder or hold-out record (:func:`load_tuned`); the run is
    refused (:class:`TuningLeak`, before any fold runs) when a test part holds one of its
    images. Returns ``(summary payload or None if no fold finished, {fold: error})``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not configs:
        raise ValueError("at least one --config is needed")
    tuning = build_datamodule(configs, extra).tuning
    refuse_tune_mode(tuning)
    made = False
    if split_path is None:
        split_path = out / "split.json"
        if not split_path.is_file():
            make_split(configs, split_path, protocol, folds, extra)
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
    jobs = fold_jobs(configs, out, Path(split_path), seed, extra, cwd, env)
    record_inputs(out, argv, jobs)
    errors = run_jobs(jobs, parallel)
    done = [j for j in jobs if (j.folder / "DONE").is_file()]
    payload = finish(out) if done else None
    return payload, errors


def _child_main(argv: list[str]) -> int:
    """``python -m bus_mtl.experiments.cv JOB.json``: the body of one fold's subprocess."""
    job = FoldJob.from_json(Path(argv[0]).read_text())
    sys.argv = sys.argv[:1]  # LightningCLI gets its args explicitly, not from argv
    try:
        fit_and_test(job)
    except FoldFailed as err:
        print(f"bus-mtl cv: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
