"""BUSI as published: ``Dataset_BUSI_with_GT/{benign,malignant,normal}/<stem>.png`` with
``<stem>_mask.png``, ``<stem>_mask_1.png``, ... (the lesion mask is their OR)."""

from __future__ import annotations

import re
from pathlib import Path

from bus_mtl.data.errors import Problem
from bus_mtl.data.sample import NO_LABEL, Sample
from bus_mtl.data.sources.base import Source

NORMAL_POLICIES = ("exclude", "class", "seg_only")
_MASK_RE = re.compile(r"^(?P<stem>.+?)_mask(?:_(?P<n>\d+))?$")
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def find_busi_folder(root: Path) -> Path:
    """Accept the dataset folder itself, or a folder holding ``Dataset_BUSI_with_GT``."""
    inner = root / "Dataset_BUSI_with_GT"
    return inner if inner.is_dir() else root


class BUSISource(Source):
    """The BUSI dataset (Al-Dhabyani et al. 2020).

    Args:
        root: the BUSI folder (holding ``Dataset_BUSI_with_GT``) or that folder itself.
        normal: policy for the 133 normal images: ``"exclude"`` (default, as in the paper),
            ``"class"`` (third class, label 2) or ``"seg_only"`` (kept for segmentation with
            their empty masks; label -1, ignored by the classification loss and metrics).
        centre: centre tag and id prefix of every sample.
    """

    def __init__(self, root: str | Path, normal: str = "exclude", centre: str = "busi") -> None:
        if normal not in NORMAL_POLICIES:
            raise ValueError(f"normal: {normal!r} is not one of {NORMAL_POLICIES}")
        if not centre:
            raise ValueError("centre: must be a non-empty string")
        self.root = Path(root).expanduser()
        self.normal = normal
        self.centre = centre

    @property
    def has_normal_class(self) -> bool:  # type: ignore[override]
        return self.normal == "class"

    def scan(self) -> tuple[list[Sample], list[Problem]]:
        if not self.root.is_dir():
            return [], [Problem(str(self.root), "BUSI folder not found")]
        folder = find_busi_folder(self.root)
        classes = {"benign": 0, "malignant": 1}
        if self.normal != "exclude":
            classes["normal"] = 2 if self.normal == "class" else NO_LABEL
        samples: list[Sample] = []
        problems: list[Problem] = []
        for name, label in classes.items():
            sub = folder / name
            if not sub.is_dir():
                problems.append(Problem(str(sub), f"class folder '{name}' not found"))
                continue
            s, p = self._scan_class(sub, label, needs_mask=name != "normal")
            samples += s
            problems += p
        return samples, problems

    def _scan_class(
        self, sub: Path, label: int, needs_mask: bool
    ) -> tuple[list[Sample], list[Problem]]:
        images: dict[str, Path] = {}
        masks: dict[str, list[tuple[int, Path]]] = {}
        for f in sorted(sub.iterdir()):
            if not f.is_file() or f.suffix.lower() not in _IMAGE_SUFFIXES:
                continue
            m = _MASK_RE.match(f.stem)
            if m:
                masks.setdefault(m["stem"], []).append((int(m["n"] or 0), f))
            else:
                images[f.stem] = f
        problems: list[Problem] = []
        if not images:
            problems.append(Problem(str(sub), "empty folder: no images"))
        for stem in sorted(set(masks) - set(images)):
            problems.append(Problem(str(masks[stem][0][1]), "mask without an image", "warning"))
        samples = []
        for stem, path in sorted(images.items(), key=lambda kv: _natural_key(kv[0])):
            files = tuple(p for _, p in sorted(masks.get(stem, [])))
            if not files and needs_mask:
                problems.append(Problem(str(path), f"missing mask (expected {stem}_mask.png)"))
                continue
            samples.append(Sample(f"{self.centre}/{stem}", path, files, label, self.centre))
        return samples, problems


def _natural_key(text: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]
