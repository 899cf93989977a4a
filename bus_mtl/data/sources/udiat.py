"""UDIAT Dataset B (Yap et al. 2018): ``original/000001.png``..., ``GT/000001.png``...
and a sheet ``DatasetB.xlsx`` (or its CSV export) with ``Image``, ``Type``, ``Diagnosis``."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from bus_mtl.data.errors import Problem
from bus_mtl.data.sample import Sample, parse_label
from bus_mtl.data.sources.base import Source


class UDIATSource(Source):
    """UDIAT Dataset B: 163 images (109 benign, 54 malignant) with binary GT masks.

    Args:
        root: folder holding ``original/``, ``GT/`` and the label sheet. Environment
            variables are expanded (``${BUS_MTL_UDIAT}`` in ``experiments/data/busi_udiat.yaml``);
            an unset one stays in the path, so the "not found" problem names it.
        sheet: the label sheet (``.xlsx`` or ``.csv``); default: the single ``*.xlsx`` or
            ``*.csv`` in ``root`` (``DatasetB.xlsx`` preferred).
        centre: centre tag and id prefix.
    """

    def __init__(
        self, root: str | Path, sheet: str | Path | None = None, centre: str = "udiat"
    ) -> None:
        if not centre:
            raise ValueError("centre: must be a non-empty string")
        self.root = Path(os.path.expandvars(str(root))).expanduser()
        self.sheet = Path(sheet).expanduser() if sheet is not None else None
        self.centre = centre

    def _find_sheet(self) -> Path | None:
        if self.sheet is not None:
            return (
                self.sheet
                if self.sheet.is_absolute() or self.sheet.exists()
                else self.root / self.sheet
            )
        for name in ("DatasetB.xlsx", "DatasetB.csv"):
            if (self.root / name).is_file():
                return self.root / name
        found = sorted(self.root.glob("*.xlsx")) + sorted(self.root.glob("*.csv"))
        return found[0] if found else None

    def _labels(self, sheet: Path) -> tuple[dict[int, int], list[Problem]]:
        try:
            if sheet.suffix.lower() in {".xlsx", ".xls"}:
                df = pd.read_excel(sheet)
            else:
                df = pd.read_csv(sheet)
        except Exception as err:  # noqa: BLE001 - any reader failure is a bad sheet
            return {}, [Problem(str(sheet), f"unreadable label sheet: {err}")]
        df.columns = [str(c).strip().lower() for c in df.columns]
        if "image" not in df.columns or "type" not in df.columns:
            return {}, [
                Problem(str(sheet), f"needs columns 'Image' and 'Type'; has {list(df.columns)}")
            ]
        labels: dict[int, int] = {}
        problems = []
        for row_no, (img, typ) in enumerate(zip(df["image"], df["type"]), start=2):
            if pd.isna(img) and pd.isna(typ):
                continue  # blank rows under the table
            try:
                number = int(float(str(img).strip()))
            except ValueError:
                problems.append(
                    Problem(f"{sheet}:{row_no}", f"'Image' {img!r} is not a file number")
                )
                continue
            label = parse_label(typ)
            if label not in (0, 1):
                problems.append(
                    Problem(f"{sheet}:{row_no}", f"unknown Type {typ!r} for image {number}")
                )
                continue
            labels[number] = label
        return labels, problems

    def scan(self) -> tuple[list[Sample], list[Problem]]:
        original, gt = self.root / "original", self.root / "GT"
        problems: list[Problem] = []
        for d in (original, gt):
            if not d.is_dir():
                problems.append(Problem(str(d), "folder not found"))
        sheet = self._find_sheet()
        if sheet is None or not sheet.is_file():
            problems.append(
                Problem(str(sheet or self.root), "label sheet (DatasetB.xlsx/.csv) not found")
            )
        if problems:
            return [], problems
        labels, problems = self._labels(sheet)  # type: ignore[arg-type]
        images = sorted(p for p in original.iterdir() if p.suffix.lower() == ".png")
        if not images:
            problems.append(Problem(str(original), "empty folder: no images"))
        masks = {p.stem: p for p in gt.iterdir() if p.suffix.lower() == ".png"}
        samples = []
        for img in images:
            try:
                number = int(img.stem)
            except ValueError:
                problems.append(Problem(str(img), "file name is not an image number", "warning"))
                continue
            mask = masks.get(img.stem)
            if mask is None:
                problems.append(Problem(str(img), f"missing mask {gt / img.name}"))
                continue
            if number not in labels:
                problems.append(Problem(str(img), f"no row for image {number} in {sheet.name}"))  # type: ignore[union-attr]
                continue
            samples.append(
                Sample(f"{self.centre}/{img.stem}", img, (mask,), labels[number], self.centre)
            )
        # A stray file in GT/ (the published archive has one) is not an error.
        for stem in sorted(set(masks) - {p.stem for p in images}):
            problems.append(
                Problem(str(masks[stem]), "GT file without an image (ignored)", "warning")
            )
        return samples, problems
