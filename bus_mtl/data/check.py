"""Whole-dataset validation shared by ``bus-mtl check-data`` and ``BUSDataModule.setup()``.

One pass decodes every file (filling the decode cache on the way), so every problem is
found before training starts, each naming its file: unreadable/corrupt or missing files,
missing masks, mask size ≠ image size, unknown labels, empty folders, duplicate ids.
Near-duplicate groups whose members carry different labels (cross-class groups) are listed
by file (:func:`conflict_rows`); they are not errors: the data is kept as published unless
``BUSDataModule(drop_conflicting=True)``.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bus_mtl.data.cache import DecodeCache, SampleInfo, sample_key
from bus_mtl.data.duplicates import DEFAULT_DUP_THRESHOLD, cross_class_groups, group_samples
from bus_mtl.data.errors import DataError, Problem, errors_only
from bus_mtl.data.sample import CLASS_NAMES, NO_LABEL, Sample
from bus_mtl.data.sources.base import Source, as_source


def label_name(label: int) -> str:
    return "no label (seg only)" if label == NO_LABEL else CLASS_NAMES[label]


@dataclass
class DataReport:
    """Everything ``check-data`` prints; ``problems`` holds errors and warnings."""

    samples: list[Sample]
    infos: dict[str, SampleInfo]
    keys: dict[str, str]
    problems: list[Problem]
    groups: list[list[str]] = field(default_factory=list)
    dup_threshold: int = DEFAULT_DUP_THRESHOLD

    @property
    def errors(self) -> list[Problem]:
        return errors_only(self.problems)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def conflicting_groups(self) -> list[tuple[int, list[str]]]:
        """``(group id, images)`` of the near-duplicate groups whose labels disagree; the
        id is the index in ``groups`` (and in a split file's ``groups``).

        Only image similarity makes a conflict: a patient group (``Sample.group``) may hold
        a benign and a malignant lesion of one patient, so with patient ids the images
        listed are those of the near-duplicate (pHash) components whose labels disagree,
        under the id of the group that holds them.
        """
        label = {s.id: s.label for s in self.samples}
        if not any(s.group for s in self.samples):
            return cross_class_groups(self.groups, label)
        ids = [s.id for s in self.samples]
        hashes = {i: self.infos[i].phash for i in ids if i in self.infos}
        looks_alike = group_samples(ids, hashes, self.dup_threshold)
        group_of = {i: k for k, g in enumerate(self.groups) for i in g}
        found: dict[int, set[str]] = {}
        for _, members in cross_class_groups(looks_alike, label):
            found.setdefault(group_of[members[0]], set()).update(members)
        return [(k, sorted(found[k])) for k in sorted(found)]

    @property
    def cross_class_groups(self) -> list[list[str]]:
        return [g for _, g in self.conflicting_groups]

    @property
    def conflicting_ids(self) -> set[str]:
        """Every image of a cross-class group."""
        return {i for _, g in self.conflicting_groups for i in g}

    def counts(self) -> Counter[tuple[str, str]]:
        """Images per (centre, class name)."""
        return Counter((s.centre, label_name(s.label)) for s in self.samples)

    def raise_if_errors(self) -> None:
        if self.errors:
            raise DataError(self.errors)


def inspect_samples(
    samples: Sequence[Sample], cache: DecodeCache, workers: int | None = None
) -> tuple[dict[str, SampleInfo], dict[str, str], list[Problem]]:
    """Decode (or read from cache) every sample in parallel threads (OpenCV releases the
    GIL). Returns ``(infos, keys, problems)``; failed samples have no info."""
    workers = workers or min(8, os.cpu_count() or 1)

    def one(s: Sample) -> tuple[str, SampleInfo | None, str | None, list[Problem]]:
        try:
            key = sample_key(s)
        except OSError as err:
            return s.id, None, None, [Problem(str(err.filename or s.image), "file not found")]
        try:
            return s.id, cache.inspect(s, key), key, []
        except DataError as err:
            return s.id, None, None, err.problems

    infos: dict[str, SampleInfo] = {}
    keys: dict[str, str] = {}
    problems: list[Problem] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for sid, info, key, probs in pool.map(one, samples):
            if info is not None and key is not None:
                infos[sid], keys[sid] = info, key
            problems += probs
    return infos, keys, problems


def check_data(
    sources: Source | Sequence[Source],
    image_size: int = 256,
    cache_dir: str | Path | None = None,
    dup_threshold: int = DEFAULT_DUP_THRESHOLD,
    workers: int | None = None,
    resize: str = "squash",
) -> DataReport:
    """Scan the sources and decode every file; never raises for bad data (see ``errors``).

    Each decoded pair is cached at ``image_size`` as ``resize`` makes it (the datamodule's
    ``resize``), so training reads what this pass wrote."""
    source = as_source(sources)
    samples, problems = source.scan()
    infos, keys, decode_problems = inspect_samples(
        samples, DecodeCache(image_size, cache_dir, resize), workers
    )
    problems += decode_problems
    if not samples and not errors_only(problems):
        problems.append(Problem(repr(source), "no samples found"))
    ids = [s.id for s in samples]
    groups = group_samples(
        ids,
        {i: infos[i].phash for i in ids if i in infos},
        dup_threshold,
        {s.id: s.group for s in samples},
    )
    return DataReport(samples, infos, keys, problems, groups, dup_threshold)


#: Columns of ``conflicting_groups.csv`` (``check-data --conflicts-out``, ``bus-mtl cv``).
CONFLICT_COLUMNS = ("group", "id", "label", "label_name", "centre", "image", "test_fold")


def conflict_rows(report: DataReport, split: object | None = None) -> list[dict[str, object]]:
    """One row per image of a cross-class near-duplicate group (see ``CONFLICT_COLUMNS``).

    ``image`` is the image file; ``test_fold`` the fold(s) of ``split`` (a
    :class:`~bus_mtl.data.splits.Split`) whose test part holds the image, ``;``-joined, or
    empty when no split is given or no test part holds it.
    """
    by_id = {s.id: s for s in report.samples}
    folds = list(getattr(split, "folds", []) or [])
    test_sets = [set(f.get("test", [])) for f in folds]
    rows: list[dict[str, object]] = []
    for k, members in report.conflicting_groups:
        for i in members:
            s = by_id[i]
            rows.append(
                {
                    "group": k,
                    "id": i,
                    "label": s.label,
                    "label_name": label_name(s.label),
                    "centre": s.centre,
                    "image": str(s.image),
                    "test_fold": ";".join(str(f) for f, t in enumerate(test_sets) if i in t),
                }
            )
    return rows


def write_conflicts_csv(rows: Sequence[dict[str, object]], path: str | Path) -> Path:
    """Write :func:`conflict_rows` to ``path`` (header only when there is no conflict)."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(CONFLICT_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    return path


def format_report(report: DataReport, max_problems: int = 200) -> str:
    """Plain-text report: counts per class and centre, sizes, coverage, duplicates, problems."""
    lines: list[str] = []
    counts = report.counts()
    centres = sorted({c for c, _ in counts})
    names = sorted({n for _, n in counts}, key=lambda n: (n not in CLASS_NAMES, n))
    lines.append(f"{len(report.samples)} images")
    width = max([len(n) for n in names] + [6])
    lines.append(
        "  " + "class".ljust(width) + "".join(f"{c:>12}" for c in centres) + f"{'total':>10}"
    )
    for n in names:
        row = [counts[(c, n)] for c in centres]
        lines.append("  " + n.ljust(width) + "".join(f"{v:>12}" for v in row) + f"{sum(row):>10}")
    if report.infos:
        hs = np.array([i.height for i in report.infos.values()])
        ws = np.array([i.width for i in report.infos.values()])
        cov = np.array([i.coverage for i in report.infos.values()])
        lesion = cov[cov > 0]
        lines.append(f"image size (WxH): {ws.min()}x{hs.min()} .. {ws.max()}x{hs.max()}")
        lines.append(
            f"mask coverage: {len(lesion)}/{len(cov)} non-empty"
            + (
                f", lesion fraction min {lesion.min():.3f} median {np.median(lesion):.3f} "
                f"max {lesion.max():.3f}"
                if len(lesion)
                else ""
            )
        )
    cross = report.conflicting_groups
    n_dup = sum(len(g) for g in report.groups)
    lines.append(
        f"near-duplicate groups (pHash Hamming <= {report.dup_threshold}, with patient groups): "
        f"{len(report.groups)} groups, {n_dup} images, {len(cross)} crossing classes"
    )
    if cross:
        rows = conflict_rows(report)
        lines.append(
            f"cross-class near-duplicate groups: {len(cross)} groups, {len(rows)} images "
            "(labels disagree; kept as published unless data.drop_conflicting=true)"
        )
        id_width = max(len(str(r["id"])) for r in rows)
        name_width = max(len(str(r["label_name"])) for r in rows)
        for k, _ in cross:
            lines.append(f"  group {k}:")
            for r in (r for r in rows if r["group"] == k):
                lines.append(
                    f"    {str(r['id']).ljust(id_width)}  {str(r['label_name']).ljust(name_width)}"
                    f"  {r['image']}"
                )
    errors = report.errors
    warnings = [p for p in report.problems if p.severity != "error"]
    lines.append(f"problems: {len(errors)} error(s), {len(warnings)} warning(s)")
    for p in (errors + warnings)[:max_problems]:
        lines.append(f"  {p}")
    if len(errors) + len(warnings) > max_problems:
        lines.append(f"  ... and {len(errors) + len(warnings) - max_problems} more")
    return "\n".join(lines)
