"""The tuning hold-out on the runners' side: the records, the checks, the summary's words.

The hold-out itself is drawn where every split is made
(:func:`bus_mtl.data.splits.make_split`, ``data.tuning``). Here: what a sweep records (:data:`TUNING_RECORD`, written by
:mod:`bus_mtl.experiments.sweep`), the checks that keep ``bus-mtl cv``/``compare`` from
reporting on tuned images (:class:`TuningLeak`: ``data.tuning: tune`` in a cv, ``--final``
with ``data.tuning: off``, ``--tuned-by`` naming a sweep whose images a test part holds),
what a cv folder records of them (:data:`TUNED_BY`, :data:`PROTOCOL_RECORD`), and the
paragraph its summary writes (:func:`tuning_summary`, :func:`tuning_lines`;
docs/protocol.md).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: What a sweep writes (``bus-mtl sweep``): the ids its trials validated on.
TUNING_RECORD = "tuning.json"
#: What ``run_cv(tuned_by=...)`` writes: the sweep hold-out it checked the folds against.
TUNED_BY = "tuned_by.json"
#: What ``run_cv``/``run_compare`` write: whether the run was declared final (``--final``).
PROTOCOL_RECORD = "protocol.json"
#: Tuned images named in a refusal before "... and N more".
SHOWN = 10


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


def refuse_unfinal(tuning: str) -> None:
    """A run declared final (``--final``) must keep a tuning hold-out out of its test parts."""
    if tuning == "off":
        raise TuningLeak(
            "--final: data.tuning is 'off', so every image is tested in some fold and any "
            "choice made on these images (a sweep, a look at a fold's validation part) could "
            "have seen the test images; add --data.tuning exclude (the tuning hold-out is then "
            "in no fold; docs/protocol.md)"
        )


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
    if tuning in ("exclude", "train") and not data.get("tuning"):
        raise TuningLeak(
            f"data.tuning: {tuning}, but {split_path} has no tuning hold-out (it was made with "
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
    protocol = Path(out) / PROTOCOL_RECORD
    recorded = json.loads(protocol.read_text()) if protocol.is_file() else {}
    info["final"] = bool(recorded.get("final"))
    info["mode"] = recorded.get("tuning")
    from bus_mtl.experiments.protocol import GENERAL, exposed_choices, fold_config

    tested = [i for fold in split.folds for i in fold.get("test", [])]
    past = exposed_choices(tested, fold_config(Path(out)))
    info["exposed_choices"] = past if split.tuning else [GENERAL, *past]
    return info


def tuning_lines(info: dict[str, Any]) -> list[str]:
    """The summary's Markdown about the hold-out: a paragraph, then one bullet per choice
    that could have seen the test images (``info["exposed_choices"]``), then a blank line."""
    choices = [f"* {c}" for c in info.get("exposed_choices") or []]
    if info["excluded"]:
        held = (
            f"{info['images']} images (fingerprint {info['fingerprint']}, "
            f"data.tuning_fraction {info['tuning_fraction']}, data.seed {info['seed']})"
        )
        if info.get("mode") == "train":
            text = (
                f"Tuning hold-out trained on (data.tuning: train): {held} are in every fold's "
                "training part and in no validation or test part."
            )
        else:
            text = (
                f"Tuning hold-out excluded: {held} are in no fold's train, validation or test "
                "part; they are kept for tuning (`bus-mtl sweep`)."
            )
        if info.get("final"):
            text += " Declared final (`--final`)."
        if choices:
            text += (
                " Choices made on images outside that hold-out, which this run still uses "
                "and whose images it tests (docs/protocol.md):"
            )
    else:
        text = (
            "No tuning hold-out (data.tuning: off): every image is tested in one fold, so "
            "this is not a final run (`--final` refuses it; the fix is --data.tuning exclude) "
            "and these choices could have seen its test images (docs/protocol.md):"
        )
    tuned = info.get("tuned_by")
    if tuned:
        text += (
            f" Hyper-parameters tuned by {tuned['tuned_by']} on {tuned['images']} images "
            f"(fingerprint {tuned['fingerprint']}): none of them is among the test images."
        )
    return [text, *([""] + choices if choices else []), ""]
