"""The gallery: chosen cases drawn with the model that made the predictions.

Sections (:func:`choose_cases`): the worst segmentations (lowest Dice), the false negatives
and false positives of the malignancy call (most confident first), and typical cases
(correct calls nearest the median Dice, benign and malignant alternating). Each case is
drawn twice (:func:`draw_case`): the image with the ground-truth (green) and predicted (red)
lesion contours, and the Grad-CAM of the malignancy logit over it
(:func:`bus_mtl.inference.cam.predictor_cam`). The predicted mask is the model's as
deployed (:class:`~bus_mtl.inference.TorchPredictor`, its resize mode, TTA and threshold).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

#: Section key -> heading.
SECTIONS = {
    "worst_dice": "Worst segmentations (lowest Dice)",
    "false_negative": "False negatives (malignant, called benign; lowest P first)",
    "false_positive": "False positives (benign, called malignant; highest P first)",
    "typical": "Typical cases (correct call, Dice near the median)",
}
#: Longest side of a drawn panel, in pixels (keeps the HTML small).
PANEL_SIDE = 400
GT_COLOUR = (40, 220, 60)
PRED_COLOUR = (240, 40, 40)


@dataclass
class Tile:
    """One drawn case: two JPEG panels (contours, CAM) and its caption values."""

    id: str
    panels: list[bytes]
    caption: dict[str, Any]
    notes: list[str] = field(default_factory=list)


@dataclass
class Gallery:
    """The drawn sections (key -> tiles) and why any part is missing."""

    sections: dict[str, list[Tile]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def choose_cases(frame: pd.DataFrame, per_section: int = 6) -> dict[str, list[str]]:
    """Image ids per section (:data:`SECTIONS`), at most ``per_section`` each; a case
    appears in one section only (the first that takes it)."""
    labels = frame["label"].to_numpy()
    probs = frame["probability"].to_numpy(dtype=float)
    calls = frame["call"].to_numpy(dtype=bool)
    dice = frame["dice"].to_numpy(dtype=float)
    ids = frame["id"].astype(str).to_numpy()
    scored = np.isin(labels, (0, 1)) & np.isfinite(probs)
    taken: set[str] = set()

    def take(order: np.ndarray) -> list[str]:
        out = []
        for i in order:
            if ids[i] not in taken and len(out) < per_section:
                out.append(ids[i])
                taken.add(ids[i])
        return out

    chosen: dict[str, list[str]] = {}
    has_dice = np.isfinite(dice)
    if has_dice.any():
        idx = np.flatnonzero(has_dice)
        chosen["worst_dice"] = take(idx[np.argsort(dice[idx], kind="stable")])
    if scored.any():
        fn = np.flatnonzero(scored & (labels == 1) & ~calls)
        chosen["false_negative"] = take(fn[np.argsort(probs[fn], kind="stable")])
        fp = np.flatnonzero(scored & (labels == 0) & calls)
        chosen["false_positive"] = take(fp[np.argsort(-probs[fp], kind="stable")])
    correct = scored & (calls == (labels == 1))
    pool = np.flatnonzero(correct if correct.any() else np.ones(len(frame), bool))
    if has_dice[pool].any():
        median = float(np.nanmedian(dice[pool]))
        distance = np.where(has_dice[pool], np.abs(dice[pool] - median), np.inf)
    else:
        distance = np.zeros(pool.size)
    ranked = pool[np.argsort(distance, kind="stable")]
    # Alternate the classes so the typical cases show both.
    by_class = [ranked[labels[ranked] == c] for c in (1, 0)] + [
        ranked[~np.isin(labels[ranked], (0, 1))]
    ]
    mixed = [i for group in _interleave(by_class) for i in group]
    chosen["typical"] = take(np.asarray(mixed, dtype=int))
    return chosen


def _interleave(groups: list[np.ndarray]) -> list[list[int]]:
    longest = max((len(g) for g in groups), default=0)
    return [[int(g[k]) for g in groups if k < len(g)] for k in range(longest)]


def build_gallery(
    frame: pd.DataFrame,
    checkpoints: Mapping[int, Path],
    samples: Callable[[], dict[str, Any]] | None,
    per_section: int = 6,
    device: str = "cpu",
    predictors: dict[Path, Any] | None = None,
) -> Gallery:
    """Draw :func:`choose_cases`' cases with the model of each case's fold (``checkpoints``:
    fold -> model file, -1 outside cv).

    Without a reachable model or image file the gallery is empty and its ``notes`` say
    why; a case whose image cannot be read is left out with a note. ``predictors``: a
    cache shared between calls (model file -> predictor).
    """
    gallery = Gallery()
    if per_section < 1:
        gallery.notes.append("Gallery not drawn (--per-section 0).")
        return gallery
    reachable = {k: Path(p) for k, p in checkpoints.items() if Path(p).is_file()}
    if not reachable:
        named = ", ".join(str(p) for p in checkpoints.values()) or "none recorded"
        gallery.notes.append(
            f"Gallery skipped: no model file reachable ({named}); the gallery redraws each "
            "case with the checkpoint that predicted it."
        )
        return gallery
    lookup, why = _lookup(samples)
    if why:
        gallery.notes.append(why)
    chosen = choose_cases(frame, per_section)
    rows = frame.set_index(frame["id"].astype(str))
    cache = predictors if predictors is not None else {}
    missing: list[str] = []
    for key, ids in chosen.items():
        tiles = []
        for case in ids:
            row = rows.loc[case]
            if isinstance(row, pd.DataFrame):
                row = row.iloc[0]
            fold = int(row["fold"])
            ckpt = reachable.get(fold, reachable.get(-1))
            if ckpt is None:
                missing.append(f"{case} (no model for fold {fold})")
                continue
            sample = lookup.get(case)
            image = str(sample.image) if sample is not None else str(row.get("image") or "")
            if not image or not Path(image).is_file():
                missing.append(f"{case} ({image or 'no image path recorded'})")
                continue
            masks = tuple(sample.masks) if sample is not None else None
            predictor = cache.get(ckpt)
            if predictor is None:
                predictor = cache[ckpt] = load_predictor(ckpt, device)
            tiles.append(draw_case(predictor, case, Path(image), masks, row))
        gallery.sections[key] = tiles
    if missing:
        shown = "; ".join(missing[:5]) + (
            f"; and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        gallery.notes.append(f"Left out, image or model not reachable: {shown}.")
    if not any(gallery.sections.values()) and not gallery.notes:
        gallery.notes.append("Gallery empty: no case to show.")
    return gallery


def _lookup(samples: Callable[[], dict[str, Any]] | None) -> tuple[dict[str, Any], str]:
    """``{id: Sample}`` and, when the samples cannot be rebuilt, why (then the images come
    from the per-image CSV's paths, without ground truth)."""
    if samples is None:
        return {}, "Ground-truth masks unknown: the folder does not record its data source."
    try:
        return samples(), ""
    except Exception as err:  # any source error: the gallery says it and goes on
        return {}, (
            f"Ground-truth masks not found ({type(err).__name__}: {err}); run the report from "
            "the folder the command ran in (data paths are often relative to it)."
        )


def load_predictor(model: Path, device: str = "cpu") -> Any:
    """A checkpoint's :class:`~bus_mtl.inference.TorchPredictor`, or an ONNX
    :class:`~bus_mtl.inference.Predictor` (contours only: no CAM)."""
    if Path(model).suffix == ".onnx":
        from bus_mtl.inference.predictor import Predictor

        return Predictor(model)
    from bus_mtl.inference.torch_predictor import TorchPredictor

    return TorchPredictor.from_checkpoint(model, device=device)


def draw_case(
    predictor: Any, case: str, image: Path, masks: tuple[Path, ...] | None, row: Mapping[str, Any]
) -> Tile:
    """Two panels of one image: contours (ground truth green, prediction red) and the
    Grad-CAM of the malignancy logit (with the same contours); the caption carries the
    recorded values of ``row`` (label, P, call, Dice, uncertainty)."""
    from bus_mtl.data.io import read_image, read_masks

    gray = read_image(image)
    notes = []
    truth = None
    if masks is not None:
        try:
            truth = read_masks(masks, gray.shape) if masks else np.zeros(gray.shape, np.uint8)
        except Exception as err:  # a broken mask file: drawn without ground truth
            notes.append(f"ground truth unreadable: {err}")
    else:
        notes.append("ground truth unknown")
    result = predictor.predict_gray(gray)
    predicted = result.mask

    def contours(rgb: np.ndarray) -> None:
        width = max(1, round(max(gray.shape) / 200))
        for mask, colour in ((truth, GT_COLOUR), (predicted, PRED_COLOUR)):
            if mask is not None and mask.any():
                found, _ = cv2.findContours(
                    (mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
                )
                cv2.drawContours(rgb, found, -1, colour, width)

    base = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    contours(base)
    panels = [_jpeg(base)]
    if predictor.info.has_cls and hasattr(predictor, "net"):
        from bus_mtl.inference.cam import cam_overlay, predictor_cam

        cam = predictor_cam(predictor, gray)
        panels.append(_jpeg(cam_overlay(gray, cam, contours=contours)))
        if not cam.any():
            notes.append("CAM empty: no region raises the malignancy logit")
    elif predictor.info.has_cls:
        notes.append("no CAM: an ONNX model has no gradients (report a checkpoint)")
    caption = {
        "label": _label_name(row.get("label")),
        "P(malignant)": row.get("probability"),
        "call": "malignant" if bool(row.get("call")) else "benign",
        "Dice": row.get("dice"),
        "uncertainty": row.get("uncertainty"),
        "fold": row.get("fold") if int(row.get("fold", -1)) >= 0 else None,
    }
    if not predictor.info.has_cls:
        caption.pop("call")
    return Tile(case, panels, caption, notes)


def _label_name(label: Any) -> str:
    from bus_mtl.data.sample import CLASS_NAMES

    try:
        k = int(label)
    except (TypeError, ValueError):
        return "?"
    return CLASS_NAMES[k] if 0 <= k < len(CLASS_NAMES) else "unlabelled"


def _jpeg(rgb: np.ndarray, side: int = PANEL_SIDE, quality: int = 85) -> bytes:
    """An RGB panel as JPEG bytes, its longest side at most ``side``."""
    h, w = rgb.shape[:2]
    scale = side / max(h, w)
    if scale < 1:
        rgb = cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise OSError("could not encode a gallery panel as JPEG")
    return buf.tobytes()
