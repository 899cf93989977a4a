"""Batch prediction on image files: masks, overlays and one CSV (``bus-mtl predict``)."""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from bus_mtl.data.errors import ImageReadError
from bus_mtl.data.io import read_image
from bus_mtl.inference.overlay import make_overlay, write_rgb
from bus_mtl.inference.predictor import BasePredictor, PredictionResult

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# uncertainty: PredictionResult.uncertainty, the flip views' disagreement (empty where the
# views are not observable: a model without a classifier, an export with the flip inside).
CSV_COLUMNS = (
    "file",
    "probability",
    "predicted_class",
    "lesion_area",
    "lesion_found",
    "uncertainty",
)
# BUSI keeps "<stem>_mask.png" / "<stem>_mask_1.png" next to each image.
_MASK_STEM = re.compile(r"_mask(_\d+)?$")


@dataclass
class PredictSummary:
    """What ``predict_files`` did: files written and files that failed (path, reason)."""

    output_dir: Path
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def csv_path(self) -> Path:
        return self.output_dir / "predictions.csv"

    def __str__(self) -> str:
        lines = [
            f"{len(self.written)} image(s) predicted, {len(self.failed)} failed; "
            f"results in {self.output_dir}"
        ]
        lines += [f"  failed: {p}: {why}" for p, why in self.failed]
        return "\n".join(lines)


def collect_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given, folders expanded to their image files (sorted, not recursive).

    Files named like BUSI ground-truth masks (``*_mask.png``, ``*_mask_1.png``) are skipped
    inside folders so a BUSI class folder can be given as is.

    Raises:
        ValueError: a folder holds no image file.
    """
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p
                for p in path.iterdir()
                if p.is_file()
                and p.suffix.lower() in IMAGE_EXTENSIONS
                and not _MASK_STEM.search(p.stem)
            )
            if not found:
                raise ValueError(
                    f"{path}: folder holds no image file ({', '.join(IMAGE_EXTENSIONS)})"
                )
            files.extend(found)
        else:
            files.append(path)  # a missing file is reported per file, not here
    return files


def _unique_stems(files: Sequence[Path]) -> list[str]:
    seen: dict[str, int] = {}
    stems = []
    for f in files:
        n = seen.get(f.stem, 0)
        seen[f.stem] = n + 1
        stems.append(f.stem if n == 0 else f"{f.stem}_{n}")
    return stems


def _csv_row(file: Path, r: PredictionResult) -> dict[str, object]:
    # single-task models leave the other task's columns empty
    return {
        "file": str(file),
        "probability": "" if r.probability is None else f"{r.probability:.6f}",
        "predicted_class": r.class_name or "",
        "lesion_area": "" if r.lesion_area is None else r.lesion_area,
        "lesion_found": "" if r.lesion_found is None else r.lesion_found,
        "uncertainty": "" if r.uncertainty is None else f"{r.uncertainty:.6f}",
    }


def predict_files(
    predictor: BasePredictor,
    inputs: Sequence[str | Path],
    output_dir: str | Path,
    mirror_average: bool | None = None,
    progress: bool = True,
    cam: bool = False,
) -> PredictSummary:
    """Predict every image and write ``masks/<stem>.png`` (0/255, original size),
    ``overlays/<stem>.png`` and ``predictions.csv`` under ``output_dir``; with ``cam`` also
    ``cams/<stem>.png``, the Grad-CAM of the malignancy logit over the image with the
    predicted contour (:func:`bus_mtl.inference.cam.predictor_cam`; a checkpoint's
    ``TorchPredictor`` with a classifier only, else ``ValueError`` before any file).

    ``predictions.csv`` has :data:`CSV_COLUMNS`; ``uncertainty`` is the flip views'
    disagreement (:func:`~bus_mtl.inference.predictor.flip_uncertainty`), for which a model
    without its own flip TTA also runs the mirror. ``mirror_average``: as
    :meth:`~bus_mtl.inference.predictor.BasePredictor.predict` (default: the predictor's).

    An unreadable image is recorded in the summary and skipped; the others are written.
    Two inputs with the same stem get ``<stem>_1``, ``<stem>_2`` ... outputs.
    """
    output_dir = Path(output_dir)
    if cam:
        _check_cam(predictor)
    files = collect_inputs(inputs)
    masks_dir, overlays_dir = output_dir / "masks", output_dir / "overlays"
    overlays_dir.mkdir(parents=True, exist_ok=True)
    if predictor.info.has_seg:
        masks_dir.mkdir(parents=True, exist_ok=True)
    summary = PredictSummary(output_dir)
    rows = []
    for file, stem in _progress(list(zip(files, _unique_stems(files))), progress):
        try:
            gray = read_image(file)
        except ImageReadError as err:
            summary.failed.append((file, str(err).removeprefix(f"{file}: ")))
            continue
        result = predictor.predict_gray(
            gray,
            predictor.mirror_average if mirror_average is None else mirror_average,
            uncertainty=True,
        )
        if result.mask is not None:
            ok = cv2.imwrite(str(masks_dir / f"{stem}.png"), (result.mask * 255).astype(np.uint8))
            if not ok:
                raise OSError(f"{masks_dir / stem}.png: could not write mask")
        write_rgb(
            overlays_dir / f"{stem}.png",
            make_overlay(gray, result.mask, result.probability, result.class_name),
        )
        if cam:
            _write_cam(output_dir / "cams" / f"{stem}.png", predictor, gray, result.mask)
        rows.append(_csv_row(file, result))
        summary.written.append(file)
    with summary.csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return summary


def _check_cam(predictor: BasePredictor) -> None:
    if not hasattr(predictor, "net"):
        raise ValueError(
            "--cam needs a checkpoint (--ckpt): the class-activation map follows the "
            "gradients of the PyTorch network, which an ONNX model does not have"
        )
    if not predictor.info.has_cls:
        raise ValueError(
            f"--cam: the model ({predictor.info.variant or 'this variant'}) has no "
            "classification head, so there is no malignancy logit to map"
        )


def _write_cam(
    path: Path, predictor: BasePredictor, gray: np.ndarray, mask: np.ndarray | None
) -> None:
    """The CAM overlay of one image, with the predicted lesion contour in white."""
    from bus_mtl.inference.cam import cam_overlay, predictor_cam

    def contour(rgb: np.ndarray) -> None:
        if mask is not None and mask.any():
            found, _ = cv2.findContours(
                mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
            )
            cv2.drawContours(rgb, found, -1, (255, 255, 255), max(1, round(max(gray.shape) / 256)))

    path.parent.mkdir(parents=True, exist_ok=True)
    write_rgb(path, cam_overlay(gray, predictor_cam(predictor, gray), contours=contour))


def _progress(items: list, enabled: bool):
    if not enabled:
        return items
    from rich.progress import track

    return track(items, description="predicting", transient=True)
