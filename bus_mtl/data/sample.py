"""The record every source yields, and the label vocabulary."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CLASS_NAMES: tuple[str, str, str] = ("benign", "malignant", "normal")  # label ints 0, 1, 2
NO_LABEL = -1  # kept for segmentation only; classification losses and metrics ignore it

_LABEL_ALIASES = {
    "benign": 0,
    "0": 0,
    "malignant": 1,
    "1": 1,
    "normal": 2,
    "2": 2,
}


@dataclass(frozen=True)
class Sample:
    """One image with its lesion mask files and labels.

    ``id`` is unique across sources: ``"<centre>/<stem>"``, e.g. ``"busi/benign (12)"``.
    The lesion mask is the pixel-wise OR of ``masks``; ``()`` means no mask file (an empty
    mask). ``label`` is 0 benign, 1 malignant, 2 normal, -1 no class label.
    """

    id: str
    image: Path
    masks: tuple[Path, ...]
    label: int
    centre: str
    group: str | None = None


def parse_label(value: object) -> int | None:
    """Map ``benign``/``malignant``/``normal`` (any case, stray spaces) or 0/1/2 to an int.

    Returns ``None`` for anything else, so callers can report the file and value.
    """
    if value is None:
        return None
    text = str(value).strip().lower()
    if text.endswith(".0"):  # pandas reads an int column with a gap as float
        text = text[:-2]
    return _LABEL_ALIASES.get(text)
