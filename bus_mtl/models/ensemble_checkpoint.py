"""Several training checkpoints written as one ensemble checkpoint (:class:`NetEnsemble`).

The file is an ordinary bus_mtl checkpoint: ``state_dict`` holds each member's weights under
``net.members.<i>.``, ``checkpoint["bus_mtl"]`` the facts every command reads (input size,
resize, normalisation, class names, test-time augmentation, operating points) and
``["ensemble"]`` where the members came from. So ``bus-mtl evaluate/predict/calibrate/export
--ckpt ENSEMBLE.ckpt`` run it as they run any model.

Operating point: the ensemble's probability is the mean of the members' calibrated
probabilities, so its temperature is 1 and its decision threshold, for each test-time
augmentation the members were calibrated for, the mean of theirs. Each member's threshold was
fitted on its own fold's validation part, which no other member held out: the members'
validation parts hold the other members' training images, so no threshold can be refitted on
them for the ensemble without bias. (``bus-mtl calibrate`` refits it on a site's cases.)
"""

from __future__ import annotations

import glob
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bus_mtl.models.rebuild import (
    checkpoint_net_config,
    checkpoint_resize,
    checkpoint_tta,
    load_checkpoint,
    net_state_dict,
    operating_point,
)

ENSEMBLE_KEY = "ensemble"
# Facts of checkpoint["bus_mtl"] every member must share: the ensemble has one input.
SHARED_KEYS = ("image_size", "resize", "in_channels", "num_classes", "class_names", "tta")


def _modes(meta: dict[str, Any], path: Path) -> set[str]:
    return {checkpoint_tta(meta, path), *(meta.get("operating_points") or {})}


def _check_members(metas: list[dict[str, Any]], paths: list[Path]) -> None:
    problems = []
    for key in SHARED_KEYS:
        values = {json.dumps(m.get(key)) for m in metas}
        if len(values) > 1:
            listed = ", ".join(f"{p.name}: {m.get(key)!r}" for p, m in zip(paths, metas))
            problems.append(f"{key} differs ({listed})")
    for p, m in zip(paths, metas):
        if int(m.get("num_classes", 1)) != 1:
            problems.append(f"{p}: num_classes {m.get('num_classes')}, an ensemble needs 1")
        norm = m.get("normalization") or {}
        if "mean" not in norm or "std" not in norm:
            problems.append(f"{p}: records no input normalisation (checkpoint['bus_mtl'])")
        if "none" not in _modes(m, p):
            problems.append(
                f"{p}: has no operating point for its single pass (tta 'none'); retrain it "
                "with this version of bus_mtl, whose TemperatureCalibration fits every mode"
            )
    if problems:
        raise ValueError("the checkpoints cannot form one ensemble:\n  " + "\n  ".join(problems))


def _member_points(metas: list[dict[str, Any]], paths: list[Path]) -> dict[str, list[dict]]:
    """Each member's operating point, per test-time augmentation mode they all have."""
    modes = set.intersection(*(_modes(m, p) for m, p in zip(metas, paths)))
    return {
        mode: [operating_point(m, mode, p) for m, p in zip(metas, paths)] for mode in sorted(modes)
    }


def _ensemble_point(member_points: list[dict[str, Any]]) -> dict[str, Any]:
    """Temperature 1 and the mean of the members' thresholds."""
    rules = sorted({str(pt.get("threshold_rule") or "fixed") for pt in member_points})
    return {
        "temperature": 1.0,
        "decision_threshold": statistics.fmean(
            float(pt["decision_threshold"]) for pt in member_points
        ),
        "threshold_rule": f"mean of {len(member_points)} members' thresholds ({', '.join(rules)})",
    }


def write_ensemble_checkpoint(
    ckpts: Sequence[str | Path], out: str | Path, overwrite: bool = False
) -> Path:
    """Write the checkpoints ``ckpts`` (two or more, same input and classes) as one
    :class:`~bus_mtl.models.ensemble.NetEnsemble` checkpoint at ``out``; returns ``out``.

    ``ValueError`` listing every reason when they cannot form one ensemble (different input
    size, resize, classes or test-time augmentation; no single-pass operating point), or
    when ``out`` exists and ``overwrite`` is False.
    """
    from bus_mtl.models.ensemble import NetEnsemble
    from bus_mtl.models.rebuild import net_config

    paths = [Path(p) for p in ckpts]
    out = Path(out)
    if len(paths) < 2:
        raise ValueError(f"an ensemble needs at least 2 checkpoints, got {len(paths)}")
    if out.exists() and not overwrite:
        raise ValueError(f"{out} exists; pass another --out (nothing was overwritten)")
    checkpoints = [load_checkpoint(p) for p in paths]
    metas = [dict(c["bus_mtl"]) for c in checkpoints]
    for p, m in zip(paths, metas):
        m["resize"] = checkpoint_resize(m, p)
    _check_members(metas, paths)
    norms = [(float(m["normalization"]["mean"]), float(m["normalization"]["std"])) for m in metas]
    mean = statistics.fmean(n[0] for n in norms)
    std = statistics.fmean(n[1] for n in norms)
    first = metas[0]
    net = NetEnsemble(
        members=[checkpoint_net_config(m, p) for m, p in zip(metas, paths)],
        temperatures=[
            float(operating_point(m, "none", p)["temperature"]) for m, p in zip(metas, paths)
        ],
        normalizations=[list(n) for n in norms],
        mean=mean,
        std=std,
        in_channels=int(first.get("in_channels", 1)),
        num_classes=1,
    )
    state = {}
    for i, checkpoint in enumerate(checkpoints):
        state.update({f"members.{i}.{k}": v for k, v in net_state_dict(checkpoint).items()})
    net.load_state_dict(state)  # strict: the members' weights fit their rebuilt nets
    member_points = _member_points(metas, paths)
    points = {mode: _ensemble_point(pts) for mode, pts in member_points.items()}
    own = checkpoint_tta(first, paths[0])
    config = net_config(net)
    priors = [m.get("source_prior") for m in metas]
    variants = sorted({str(m.get("variant") or "?") for m in metas})
    meta: dict[str, Any] = {
        **{k: first.get(k) for k in SHARED_KEYS},
        "variant": f"ensemble of {len(paths)} {'/'.join(variants)}",
        "net_class_path": config["class_path"],
        "net_init_args": config["init_args"],
        "normalization": {"mean": mean, "std": std},
        "threshold": float(first.get("threshold", 0.5)),
        "has_seg": net.has_seg,
        "has_cls": net.has_cls,
        "operating_points": points,
        **points[own],
        ENSEMBLE_KEY: {
            "members": [str(p) for p in paths],
            "member_thresholds": {
                mode: [float(pt["decision_threshold"]) for pt in pts]
                for mode, pts in member_points.items()
            },
            "member_normalizations": [list(n) for n in norms],
        },
    }
    if all(p is not None for p in priors):
        meta["source_prior"] = statistics.fmean(float(p) for p in priors)
    checkpoint = {
        "state_dict": {
            **{f"net.{k}": v for k, v in net.state_dict().items()},
            "temperature": torch.tensor(1.0),
            "decision_threshold": torch.tensor(float(points[own]["decision_threshold"])),
        },
        "bus_mtl": meta,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    torch.save(checkpoint, partial)
    partial.replace(out)
    return out


def cv_checkpoints(cv_dir: str | Path) -> list[Path]:
    """The best checkpoint of each fold of a ``bus-mtl cv`` folder, fold 0 first.

    Each ``fold_<k>/run.json`` names it (``fit.best_model_path``); where that file has moved
    with the folder, the one ``fold_<k>/*/version_*/checkpoints/best-*.ckpt`` is taken.
    ``ValueError`` naming the fold when neither finds exactly one, or when a fold has not
    finished (no ``DONE`` marker).
    """
    cv_dir = Path(cv_dir)
    folds = sorted(cv_dir.glob("fold_*"), key=lambda p: (len(p.name), p.name))
    folds = [f for f in folds if f.is_dir() and f.name[len("fold_") :].isdigit()]
    if not folds:
        raise ValueError(f"{cv_dir}: no fold_<k> folders: pass the folder bus-mtl cv wrote")
    found, problems = [], []
    for fold in folds:
        if not (fold / "DONE").is_file():
            problems.append(f"{fold}: not finished (no DONE); resume bus-mtl cv first")
            continue
        recorded = None
        run = fold / "run.json"
        if run.is_file():
            recorded = (json.loads(run.read_text()).get("fit") or {}).get("best_model_path")
        if recorded and Path(recorded).is_file():
            found.append(Path(recorded))
            continue
        hits = sorted(glob.glob(str(fold / "*" / "version_*" / "checkpoints" / "best-*.ckpt")))
        if len(hits) != 1:
            problems.append(f"{fold}: {len(hits)} best-*.ckpt files, expected 1 ({hits[:3]})")
        else:
            found.append(Path(hits[0]))
    if problems:
        raise ValueError("cannot collect the fold models:\n  " + "\n  ".join(problems))
    return found
