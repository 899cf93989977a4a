"""A CSV manifest for a user's own data.

Columns: ``image``, ``mask`` (optional; several files joined by ``;``), ``label``
(``benign``/``malignant``/``normal`` or 0/1/2), optional ``centre`` and ``group`` (patient).
Paths are relative to the CSV file.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bus_mtl.data.errors import Problem
from bus_mtl.data.sample import Sample, parse_label
from bus_mtl.data.sources.base import Source

REQUIRED_COLUMNS = ("image", "label")


def _cell(value: object) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    return str(value).strip()


class ManifestSource(Source):
    """Samples listed in a CSV file.

    Args:
        csv: the manifest file.
        centre: centre of rows without a ``centre`` value (default ``"manifest"``).
        require_mask: report rows without a mask as errors (segmentation needs them).
    """

    def __init__(
        self, csv: str | Path, centre: str | None = None, require_mask: bool = True
    ) -> None:
        self.csv = Path(csv).expanduser()
        self.centre = centre
        self.require_mask = require_mask

    def _read(self) -> tuple[pd.DataFrame | None, list[Problem]]:
        if not self.csv.is_file():
            return None, [Problem(str(self.csv), "manifest CSV not found")]
        try:
            df = pd.read_csv(self.csv, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            return None, [Problem(str(self.csv), f"unreadable CSV: {err}")]
        df.columns = [str(c).strip().lower() for c in df.columns]
        missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
        if missing:
            return None, [
                Problem(str(self.csv), f"missing column(s) {missing}; has {list(df.columns)}")
            ]
        if df.empty:
            return None, [Problem(str(self.csv), "empty manifest: no rows")]
        return df, []

    @property
    def has_normal_class(self) -> bool:  # type: ignore[override]
        df, _ = self._read()
        return df is not None and any(parse_label(v) == 2 for v in df["label"])

    def scan(self) -> tuple[list[Sample], list[Problem]]:
        df, problems = self._read()
        if df is None:
            return [], problems
        base = self.csv.parent
        samples: list[Sample] = []
        for row_no, row in enumerate(df.to_dict("records"), start=2):  # header is line 1
            where = f"{self.csv}:{row_no}"
            image_rel = _cell(row.get("image"))
            if not image_rel:
                problems.append(Problem(where, "empty 'image' cell"))
                continue
            image = base / image_rel
            label = parse_label(_cell(row.get("label")))
            row_ok = True
            if label is None:
                problems.append(
                    Problem(
                        where,
                        f"unknown label {row.get('label')!r} for {image_rel} "
                        "(use benign/malignant/normal or 0/1/2)",
                    )
                )
                row_ok = False
            if not image.is_file():
                problems.append(Problem(str(image), f"image file not found (manifest {where})"))
                row_ok = False
            masks = tuple(base / m.strip() for m in _cell(row.get("mask")).split(";") if m.strip())
            for m in masks:
                if not m.is_file():
                    problems.append(Problem(str(m), f"mask file not found (manifest {where})"))
                    row_ok = False
            if not masks and self.require_mask and label != 2:
                problems.append(Problem(where, f"missing mask for {image_rel}"))
                row_ok = False
            if not row_ok:
                continue
            centre = _cell(row.get("centre")) or self.centre or "manifest"
            group = _cell(row.get("group")) or None
            sid = f"{centre}/{Path(image_rel).with_suffix('').as_posix()}"
            samples.append(Sample(sid, image, masks, int(label), centre, group))  # type: ignore[arg-type]
        return samples, problems
