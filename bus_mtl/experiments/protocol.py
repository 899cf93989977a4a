"""The reporting protocol's record of past choices (docs/protocol.md), read by the cv summary.

A cross-validation with ``data.tuning: off`` tests every image in one fold, so any choice
made by looking at results on the same images could have seen its test images. The summary
of such a run names those choices: in general (:data:`GENERAL`: a sweep without a hold-out,
a look at a fold's validation part, which holds other folds' test images), and the specific
ones this project made on BUSI before the tuning hold-out existed (:data:`PAST_CHOICES`),
where the run's configuration uses them and its test parts hold BUSI images. Those were
made on images that the hold-out does not cover, so the summary of a run with
``data.tuning: exclude`` names them too. docs/protocol.md is the prose version of
:data:`PAST_CHOICES`; keep the two together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

#: What fold 0's validation part was: the images the CPU recipe's choices were made on.
FOLD0_VAL = (
    "BUSI fold 0's validation part (77 images of experiments/splits/busi_5fold_seed42.json, "
    "each a test image of fold 1, 2, 3 or 4)"
)
#: The centre (sample id prefix) of BUSI images (``BUSISource``'s default).
BUSI_CENTRE = "busi"
#: The choices any run without a hold-out is exposed to, whatever its data.
GENERAL = (
    "any setting picked on these images' results: by a sweep whose trials did not run with "
    "data.tuning: tune, or on a fold's validation part (which holds other folds' test images)"
)


@dataclass(frozen=True)
class PastChoice:
    """One recorded choice: what it set, which images it was made on, and how to see in a
    run's resolved config (``config.yaml``) whether the run uses it."""

    what: str
    seen: str
    used_by: Callable[[dict[str, Any]], bool]


def _get(tree: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(tree, dict):
            return None
        tree = tree.get(key)
    return tree


def _cls_weight(cfg: dict[str, Any]) -> Any:
    return _get(cfg, "model", "weighting", "init_args", "cls")


def _class_name(config: dict[str, Any]) -> str:
    """``"Class"`` of a ``{"class_path": "package.module.Class", ...}`` config."""
    return str(config.get("class_path", "")).rpartition(".")[2]


def _threshold_rule(cfg: dict[str, Any]) -> str | None:
    """The threshold rule of the last calibration callback (the one that fits; its default
    when not spelled out)."""
    callbacks = _get(cfg, "trainer", "callbacks")
    rule = None
    for cb in callbacks if isinstance(callbacks, list) else []:
        # By class name: bus_mtl.training.X and bus_mtl.training.calibration.X are one class.
        if isinstance(cb, dict) and _class_name(cb) == "TemperatureCalibration":
            rule = _get(cb, "init_args", "threshold_rule") or "youden_binormal"
    return rule


def _cpu_recipe(cfg: dict[str, Any]) -> bool:
    """The CPU recipe's net and classification weight (what its rejections were tried on)."""
    net = str(_get(cfg, "model", "net", "class_path") or "")
    return _cls_weight(cfg) == 0.25 and net.endswith("SegResNetEffNetFeatures")


#: Choices made on BUSI images before the tuning hold-out existed (docs/protocol.md).
PAST_CHOICES: tuple[PastChoice, ...] = (
    PastChoice(
        "the classification loss weight 0.25 (model.weighting cls, recipes/cpu_paper.yaml)",
        FOLD0_VAL,
        lambda cfg: _cls_weight(cfg) == 0.25,
    ),
    PastChoice(
        "flip test-time augmentation (model.tta: hflip)",
        FOLD0_VAL,
        lambda cfg: _get(cfg, "model", "tta") == "hflip",
    ),
    PastChoice(
        "leaving out the weight EMA, model.lr_scales and feature_source: bottleneck "
        "(the CPU recipe's rejections)",
        FOLD0_VAL,
        _cpu_recipe,
    ),
    PastChoice(
        "the binormal Youden threshold rule (threshold_rule: youden_binormal)",
        "BUSI 5-fold, chosen after the post hoc test figures of all three rules on all 647 "
        "images had been printed",
        lambda cfg: _threshold_rule(cfg) == "youden_binormal",
    ),
)


def fold_config(out: Path) -> dict[str, Any] | None:
    """The resolved config a fold of the cv folder ``out`` ran with (LightningCLI's
    ``config.yaml`` under ``OUT/fold_k/``), or ``None`` when no fold has one."""
    for path in sorted(Path(out).glob("fold_*/**/config.yaml")):
        try:
            cfg = yaml.safe_load(path.read_text())
        except yaml.YAMLError:
            continue
        if isinstance(cfg, dict):
            return cfg
    return None


def exposed_choices(test_ids: Sequence[str], config: dict[str, Any] | None) -> list[str]:
    """The :data:`PAST_CHOICES` that could have seen these test images, one phrase each: every
    entry the run uses (all of them, marked "if used", when its config is unknown), when a
    test image is a BUSI image; else none."""
    if not any(str(i).split("/", 1)[0] == BUSI_CENTRE for i in test_ids):
        return []
    found = []
    for choice in PAST_CHOICES:
        if config is None:
            found.append(f"{choice.what}, if this run uses it: made on {choice.seen}")
        elif choice.used_by(config):
            found.append(f"{choice.what}: made on {choice.seen}")
    return found
