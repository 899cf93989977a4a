"""Leakage-free, reproducible splits, serialised to JSON.

Units of assignment are *groups*: near-duplicate components united with patient groups
(see :mod:`bus_mtl.data.duplicates`); every other sample is a group of one. A group never
lands in two parts of a fold. Strata are ``(centre, label)``. The assignment is a small
greedy grouped-stratified algorithm (scikit-learn is not a dependency): groups are shuffled
with the seed, sorted largest first (stable), and each goes to the part whose per-stratum
counts stay closest to that part's target share.

Split files carry a ``version``. Version 1 drew each fold's validation part with plain costs,
which send every near-duplicate group (a large unit) to the training part: its validation
parts held single images only, unlike its test parts. Version 2 (:data:`SPLIT_VERSION`)
draws them with the relative costs of the tuning hold-out, so groups reach the validation
part in proportion. A version-1 file still loads, with a note saying how to regenerate it.

:func:`make_split` is the one place a split is made from the ``data.*`` options
(:class:`SplitSettings`): :class:`~bus_mtl.data.datamodule.BUSDataModule` calls it in
``setup()``, ``bus-mtl cv`` and ``compare`` call it once for ``OUT/split.json``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bus_mtl.data.errors import DataError, Problem, raise_if_errors
from bus_mtl.data.sample import Sample

SPLIT_KINDS = ("kfold", "by_centre", "file")
#: ``data.tuning``: ``off`` (every image in the folds), ``exclude`` (the tuning hold-out is in
#: no fold), ``tune`` (train on the rest, validate on the hold-out: sweep trials), ``train``
#: (the folds of ``exclude``, the hold-out added to each fold's training part: a final model
#: that learns from the images its recipe was chosen on, never validated or tested on them).
TUNING_MODES = ("off", "exclude", "tune", "train")
#: Offset of the hold-out's seed from the split seed (its own stream, not a fold's).
TUNING_SEED_OFFSET = 9000
#: Version of the splits this code draws (see the module doc); files without one are 1.
SPLIT_VERSION = 2
#: Split files whose version-1 note was printed (once per file and process).
_NOTED: set[str] = set()


@dataclass
class Split:
    """A set of folds: ``folds[k] = {"train": [ids], "val": [ids], "test": [ids]}``."""

    kind: str
    seed: int
    n_folds: int
    dup_threshold: int
    val_fraction: float
    folds: list[dict[str, list[str]]]
    groups: list[list[str]] = field(default_factory=list)
    test_centres: list[str] | None = None
    #: The tuning hold-out (``data.tuning``): ids in no fold's train/val/test part; empty
    #: when the split was made with ``data.tuning: off`` (and in older split files).
    tuning: list[str] = field(default_factory=list)
    tuning_fraction: float = 0.0
    #: How the validation parts were drawn: 2 with near-duplicate groups in proportion, 1
    #: (files written before the field) with every group in the training part.
    version: int = SPLIT_VERSION

    @property
    def tuning_fingerprint(self) -> str | None:
        """:func:`tuning_fingerprint` of the hold-out, ``None`` without one."""
        return tuning_fingerprint(self.tuning) if self.tuning else None

    def fold(self, k: int) -> dict[str, list[str]]:
        if not 0 <= k < len(self.folds):
            raise ValueError(f"fold: {k} out of range for a split with {len(self.folds)} fold(s)")
        return self.folds[k]

    def to_dict(self) -> dict:
        data = asdict(self)
        if self.tuning:
            data["tuning_fingerprint"] = self.tuning_fingerprint
        return data

    def save(self, path: str | Path) -> Path:
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Split:
        path = Path(path).expanduser()
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError([Problem(str(path), "split file not found")]) from None
        except ValueError as err:
            raise DataError([Problem(str(path), f"split file is not valid JSON: {err}")]) from None
        try:
            folds = [
                {p: list(f.get(p, [])) for p in ("train", "val", "test")} for f in data["folds"]
            ]
            split = cls(
                kind=data.get("kind", "file"),
                seed=int(data.get("seed", 0)),
                n_folds=int(data.get("n_folds", len(folds))),
                dup_threshold=int(data.get("dup_threshold", -1)),
                val_fraction=float(data.get("val_fraction", 0.0)),
                folds=folds,
                groups=[list(g) for g in data.get("groups", [])],
                test_centres=data.get("test_centres"),
                tuning=sorted(data.get("tuning") or []),
                tuning_fraction=float(data.get("tuning_fraction", 0.0)),
                version=int(data.get("version", 1)),
            )
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            raise DataError(
                [Problem(str(path), f"not a bus_mtl split file ({err!r} missing or malformed)")]
            ) from None
        _note_version(split, path)
        return split

    def check_against(
        self,
        ids: Sequence[str],
        where: str = "split",
        groups: Sequence[Sequence[str]] = (),
    ) -> list[Problem]:
        """Problems: ids unknown to the data, ids in two parts of one fold, and near-duplicate
        (or patient) ``groups`` whose images sit in different parts of a fold (a leak: the
        same lesion would be trained on and tested on)."""
        known = set(ids)
        problems = []
        for k, f in enumerate(self.folds):
            part_of = {i: part for part, members in f.items() for i in members}
            for g, members in enumerate(groups):
                parts = {i: part_of[i] for i in members if i in part_of}
                if len(set(parts.values())) > 1:
                    spread = ", ".join(f"{i!r} in {p}" for i, p in sorted(parts.items()))
                    problems.append(
                        Problem(
                            where,
                            f"fold {k}: near-duplicate group {g} is split across parts "
                            f"({spread}); keep a group in one part, or re-create the split "
                            "with --data.split kfold",
                        )
                    )
        for k, f in enumerate(self.folds):
            seen: dict[str, str] = {}
            for part, members in f.items():
                unknown = [i for i in members if i not in known]
                if unknown:
                    problems.append(
                        Problem(
                            where,
                            f"fold {k} {part}: {len(unknown)} id(s) not in the data, e.g. {unknown[:3]}",
                        )
                    )
                for i in members:
                    if i in seen:
                        problems.append(
                            Problem(where, f"fold {k}: {i!r} in both {seen[i]} and {part}")
                        )
                    seen[i] = part
        if self.tuning:
            problems += _tuning_problems(self.tuning, known, groups, where)
        return problems


def _note_version(split: Split, path: Path) -> None:
    """Say once per file (on stderr) that a version-1 split validates on no near-duplicate
    group, and how to draw the same split as version 2."""
    grouped = any(len(g) > 1 for g in split.groups)
    has_val = any(f["val"] for f in split.folds)
    if split.version >= 2 or split.kind not in ("kfold", "by_centre") or not (grouped and has_val):
        return
    key = str(path.resolve())
    if key in _NOTED:
        return
    _NOTED.add(key)
    print(
        f"bus-mtl: {path} is a version-1 split: its validation parts were drawn without "
        "near-duplicate groups (every group went to the training part), so the checkpoint, "
        "temperature and threshold chosen on them were chosen on images unlike the test "
        "part's. It loads as it is (same folds, same results); to draw it as version 2 "
        f"(groups in proportion, same test parts): {regenerate_command(split, path)}",
        file=sys.stderr,
    )


def regenerate_command(split: Split, path: str | Path) -> str:
    """The command that draws ``split`` again with this code (version :data:`SPLIT_VERSION`)
    into ``<stem>_v2.json`` beside ``path``: ``bus-mtl check-data`` for the 5-fold, seed-42,
    15 % BUSI split it writes; ``bus-mtl cv`` (``OUT/split.json``) for a leave-one-centre-out
    split; else ``bus-mtl validate`` with ``data.split_out`` (the split is written at
    set-up). The data options are the user's: the file does not record its data source."""
    path = Path(path)
    out = path.with_name(f"{path.stem}_v2.json")
    ids = [i for f in split.folds for part in f.values() for i in part]
    # check-data writes the 5-fold, seed-42, 15 % split of BUSI without its normal images.
    busi_only = all(i.startswith("busi/") and not i.startswith("busi/normal") for i in ids)
    if (
        split.kind == "kfold"
        and (split.n_folds, split.seed, split.val_fraction) == (5, 42, 0.15)
        and not split.tuning
        and busi_only
    ):
        return (
            f"bus-mtl check-data --busi <BUSI folder> --dup-threshold {split.dup_threshold} "
            f"--split-out {out}"
        )
    data = (
        f"--data.seed={split.seed} --data.val_fraction={split.val_fraction} "
        f"--data.dup_threshold={split.dup_threshold}"
        + (" --data.tuning=exclude" if split.tuning else "")
    )
    if split.kind == "by_centre" and split.n_folds > 1:
        return (
            f"bus-mtl cv --config <the run's configs> --protocol by_centre {data} --out "
            "<folder> (it writes <folder>/split.json before the first fold)"
        )
    if split.kind == "by_centre":
        which = f"--data.split=by_centre '--data.test_centres={json.dumps(split.test_centres)}'"
    else:
        which = f"--data.split=kfold --data.n_folds={split.n_folds}"
    return f"bus-mtl validate --config <the run's configs> {which} {data} --data.split_out={out}"


def _tuning_problems(
    tuning: Sequence[str], known: set[str], groups: Sequence[Sequence[str]], where: str
) -> list[Problem]:
    """Unknown hold-out ids, and groups with images both in and out of the hold-out."""
    problems = []
    held = set(tuning)
    unknown = sorted(held - known)
    if unknown:
        problems.append(
            Problem(
                where,
                f"tuning: {len(unknown)} id(s) not in the data, e.g. {unknown[:3]}; "
                "re-create the split (bus-mtl cv writes it with data.tuning: exclude)",
            )
        )
    for g, members in enumerate(groups):
        inside = sorted(i for i in members if i in held)
        outside = sorted(i for i in members if i in known and i not in held)
        if inside and outside:
            problems.append(
                Problem(
                    where,
                    f"tuning: near-duplicate group {g} is split between the tuning hold-out "
                    f"({inside}) and the other images ({outside}); keep a group whole, or "
                    "re-create the split with data.tuning: exclude",
                )
            )
    return problems


def tuning_fingerprint(ids: Sequence[str]) -> str:
    """A short hash naming a tuning hold-out: SHA-256 of its sorted, distinct ids.

    Two hold-outs have the same fingerprint exactly when they hold the same images (the
    seed and fraction that drew them are recorded beside it, not hashed).
    """
    text = "\n".join(sorted(set(ids)))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def tuning_holdout(
    samples: Sequence[Sample],
    groups: Sequence[Sequence[str]] = (),
    fraction: float = 0.15,
    seed: int = 42,
) -> list[str]:
    """The tuning hold-out: a grouped, (centre, label)-stratified ``fraction`` of all images.

    Near-duplicate (and patient) groups are kept whole: a group is wholly in or wholly out,
    and groups reach the hold-out in about the same proportion as single images.
    Depends only on the images, their groups, ``fraction`` and ``seed`` (not on the number
    of folds or the split kind), so a sweep and the cv run after it draw the same hold-out
    from the same data config. Returns sorted ids.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(
            f"tuning_fraction: must be in (0, 1), got {fraction}; e.g. 0.15 (the default)"
        )
    units = _units(samples, groups)
    if len(units) < 2:
        raise DataError(
            [Problem("tuning", f"a tuning hold-out needs 2+ independent groups, got {len(units)}")]
        )
    shares = [1 - fraction, fraction]
    part = assign_groups(units, _strata(samples), shares, seed + TUNING_SEED_OFFSET, relative=True)
    held = sorted(i for u, p in zip(units, part) if p == 1 for i in u)
    if not held or len(held) == len(samples):
        raise DataError(
            [
                Problem(
                    "tuning_fraction",
                    f"{fraction} of {len(samples)} image(s) in {len(units)} group(s) gives "
                    f"{'an empty hold-out' if not held else 'no image outside the hold-out'}; "
                    "use more images or another data.tuning_fraction",
                )
            ]
        )
    return held


def without(samples: Sequence[Sample], ids: Sequence[str]) -> list[Sample]:
    """``samples`` less the given ids (e.g. the tuning hold-out), order kept."""
    drop = set(ids)
    return [s for s in samples if s.id not in drop]


def _units(samples: Sequence[Sample], groups: Sequence[Sequence[str]]) -> list[list[str]]:
    ids = [s.id for s in samples]
    present = set(ids)
    grouped: set[str] = set()
    units = []
    for g in groups:
        g = [i for i in g if i in present]
        if g:
            units.append(sorted(g))
            grouped.update(g)
    units += [[i] for i in ids if i not in grouped]
    return units


def assign_groups(
    units: Sequence[Sequence[str]],
    strata: dict[str, tuple],
    shares: Sequence[float],
    seed: int,
    relative: bool = False,
) -> list[int]:
    """Greedy grouped-stratified assignment of ``units`` (lists of ids) to parts.

    ``strata[id]`` is the id's stratum; ``shares`` the target fraction of every stratum per
    part. Returns the part index of each unit. Deterministic for a seed.

    ``relative``: weigh each part's cost by ``1 / share``. With unequal shares the plain
    cost sends every large unit (a near-duplicate group) to the largest part, as they come
    first; relative costs let a small part (the tuning hold-out) receive groups in
    proportion. Equal shares: the same assignment either way.
    """
    keys = sorted({strata[i] for u in units for i in u}, key=str)
    col = {k: j for j, k in enumerate(keys)}
    counts = np.zeros((len(units), len(keys)))
    for n, u in enumerate(units):
        for i in u:
            counts[n, col[strata[i]]] += 1
    shares_arr = np.asarray(shares, dtype=float)
    shares_arr = shares_arr / shares_arr.sum()
    target = shares_arr[:, None] * counts.sum(axis=0)[None, :]  # parts × strata
    weight = 1.0 / np.maximum(counts.sum(axis=0), 1.0)  # rare strata matter as much
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(units))
    order = sorted(order, key=lambda n: -counts[n].sum())  # stable: ties keep the shuffle
    filled = np.zeros_like(target)
    part_of = [0] * len(units)
    for n in order:
        before = ((filled - target) ** 2 * weight).sum(axis=1)
        after = ((filled + counts[n] - target) ** 2 * weight).sum(axis=1)
        size_gap = (filled.sum(axis=1) + counts[n].sum()) / np.maximum(shares_arr, 1e-9)
        cost = (after - before) / (shares_arr if relative else 1.0)
        best = min(range(len(shares_arr)), key=lambda p: (round(cost[p], 12), size_gap[p], p))
        filled[best] += counts[n]
        part_of[n] = best
    return part_of


def _strata(samples: Sequence[Sample]) -> dict[str, tuple]:
    return {s.id: (s.centre, s.label) for s in samples}


def _train_val(
    ids_units: list[list[str]], strata: dict[str, tuple], val_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    if val_fraction <= 0 or not ids_units:
        return sorted(i for u in ids_units for i in u), []
    # Relative costs (as for the tuning hold-out): with plain ones every near-duplicate group
    # lands in the larger training part and the validation part holds single images only,
    # unlike the test part it stands in for when choosing the checkpoint and threshold.
    part = assign_groups(ids_units, strata, [1 - val_fraction, val_fraction], seed, relative=True)
    train = sorted(i for u, p in zip(ids_units, part) if p == 0 for i in u)
    val = sorted(i for u, p in zip(ids_units, part) if p == 1 for i in u)
    return train, val


def kfold_split(
    samples: Sequence[Sample],
    groups: Sequence[Sequence[str]] = (),
    n_folds: int = 5,
    seed: int = 42,
    val_fraction: float = 0.15,
    dup_threshold: int = -1,
) -> Split:
    """Stratified (centre, label) grouped k-fold; validation is a grouped stratified
    ``val_fraction`` of each fold's remaining data."""
    if n_folds < 2:
        raise ValueError(f"n_folds: need at least 2, got {n_folds}")
    units = _units(samples, groups)
    if len(units) < n_folds:
        raise DataError(
            [Problem("n_folds", f"{n_folds} folds but only {len(units)} independent group(s)")]
        )
    strata = _strata(samples)
    part = assign_groups(units, strata, [1.0] * n_folds, seed)
    folds = []
    for k in range(n_folds):
        test = sorted(i for u, p in zip(units, part) if p == k for i in u)
        rest = [u for u, p in zip(units, part) if p != k]
        train, val = _train_val(rest, strata, val_fraction, seed + 1000 + k)
        folds.append({"train": train, "val": val, "test": test})
    return Split(
        "kfold", seed, n_folds, dup_threshold, val_fraction, folds, [list(g) for g in groups]
    )


def by_centre_split(
    samples: Sequence[Sample],
    test_centres: Sequence[str],
    groups: Sequence[Sequence[str]] = (),
    seed: int = 42,
    val_fraction: float = 0.15,
    dup_threshold: int = -1,
) -> Split:
    """Train (and validate) on every centre but ``test_centres``; test on those. A group that
    reaches a test centre goes wholly to test, so no copy of a test image is trained on."""
    centres = {s.centre for s in samples}
    unknown = sorted(set(test_centres) - centres)
    if not test_centres or unknown:
        raise DataError(
            [
                Problem(
                    "test_centres",
                    f"{list(test_centres)} must name centres of the data {sorted(centres)}",
                )
            ]
        )
    centre_of = {s.id: s.centre for s in samples}
    units = _units(samples, groups)
    test_units = [u for u in units if any(centre_of[i] in test_centres for i in u)]
    rest = [u for u in units if not any(centre_of[i] in test_centres for i in u)]
    if not rest:
        raise DataError([Problem("test_centres", "no training data left outside the test centres")])
    train, val = _train_val(rest, _strata(samples), val_fraction, seed)
    test = sorted(i for u in test_units for i in u)
    fold = {"train": train, "val": val, "test": test}
    return Split(
        "by_centre",
        seed,
        1,
        dup_threshold,
        val_fraction,
        [fold],
        [list(g) for g in groups],
        list(test_centres),
    )


def leave_one_centre_out(
    samples: Sequence[Sample],
    groups: Sequence[Sequence[str]] = (),
    seed: int = 42,
    val_fraction: float = 0.15,
    dup_threshold: int = -1,
) -> Split:
    """One :func:`by_centre_split` fold per centre (sorted): fold k tests on centre k and
    trains on the others (``bus-mtl cv --protocol by_centre``); ``test_centres`` lists the
    centres in fold order."""
    centres = sorted({s.centre for s in samples})
    if len(centres) < 2:
        raise ValueError(
            f"protocol by_centre needs data from at least two centres, got {centres}; "
            "add a second source (e.g. UDIATSource) to data.sources"
        )
    parts = [
        by_centre_split(samples, [c], groups, seed, val_fraction, dup_threshold) for c in centres
    ]
    return Split(
        "by_centre",
        seed,
        len(parts),
        dup_threshold,
        val_fraction,
        [p.folds[0] for p in parts],
        [list(g) for g in groups],
        centres,
    )


# ---------------------------------------------------------------------------------------------
# The one place a split is made


@dataclass(frozen=True)
class SplitSettings:
    """The ``data.*`` options that decide a split (all of them arguments of
    :class:`~bus_mtl.data.datamodule.BUSDataModule`, which holds them as ``split_settings``).

    ``kind``: ``kfold``, ``by_centre`` or ``file`` (:data:`SPLIT_KINDS`). ``test_centres``:
    the centres a ``by_centre`` split tests on; ``None`` gives one fold per centre
    (``bus-mtl cv --protocol by_centre``). ``tuning`` and ``tuning_fraction``: the tuning
    hold-out (:data:`TUNING_MODES`, :func:`tuning_holdout`, drawn with ``seed``).
    An invalid value raises ``ValueError`` naming the option and what it may be.
    """

    kind: str = "kfold"
    n_folds: int = 5
    seed: int = 42
    val_fraction: float = 0.15
    dup_threshold: int = -1
    test_centres: list[str] | None = None
    split_file: str | None = None
    tuning: str = "off"
    tuning_fraction: float = 0.15

    def __post_init__(self) -> None:
        if self.tuning not in TUNING_MODES:
            raise ValueError(
                f"tuning: {self.tuning!r} is not one of {TUNING_MODES}; set data.tuning: tune "
                "in a sweep trial (validate on the tuning hold-out), exclude in the cv run that "
                "reports the tuned settings, train to also train on the hold-out once the "
                "settings are chosen, off to keep every image in the folds"
            )
        fraction = self.tuning_fraction
        if isinstance(fraction, bool) or not 0.0 < fraction < 1.0:
            raise ValueError(
                f"tuning_fraction: must be in (0, 1), got {fraction!r}; "
                "e.g. data.tuning_fraction: 0.15 (the default)"
            )
        if self.kind not in SPLIT_KINDS:
            raise ValueError(f"split: {self.kind!r} is not one of {SPLIT_KINDS}")
        if self.kind == "kfold" and self.n_folds < 2:
            raise ValueError(f"n_folds: need at least 2, got {self.n_folds}")
        if self.kind == "file" and not self.split_file:
            raise ValueError("split_file: required when split='file'")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction: must be in [0, 1), got {self.val_fraction}")
        if self.dup_threshold > 64:
            raise ValueError(
                f"dup_threshold: a 64-bit hash distance is at most 64, got {self.dup_threshold}"
            )


def make_split(
    samples: Sequence[Sample], groups: Sequence[Sequence[str]], settings: SplitSettings
) -> Split:
    """The split ``settings`` describe over ``samples`` and their near-duplicate (and
    patient) ``groups``, with its tuning hold-out.

    ``kfold``: :func:`kfold_split`; ``by_centre``: :func:`by_centre_split` on
    ``test_centres``, or :func:`leave_one_centre_out` without them; ``file``: the split file
    (a version-1 one says so on stderr), checked against the data (``DataError`` listing
    every unknown id and every group split across parts).

    ``tuning: exclude`` (and ``train``, whose folds are the same; the data module adds the
    hold-out to the training part): the hold-out is drawn first and the folds split the
    other images; a split file keeps the hold-out it records, and one without gets the drawn
    one.
    ``tuning: tune``: one fold, train = every image outside the hold-out, val = the
    hold-out, no test part (a sweep trial). Either way the split records the hold-out as
    ``tuning`` (saved with its fingerprint). Deterministic for the same inputs.
    """
    if settings.kind == "file":
        split = Split.load(settings.split_file)  # type: ignore[arg-type]
        where = str(settings.split_file)
        raise_if_errors(split.check_against([s.id for s in samples], where=where, groups=groups))
        if settings.tuning != "off" and not split.tuning:
            split.tuning = _holdout(samples, groups, settings)
            split.tuning_fraction = settings.tuning_fraction
        if settings.tuning == "tune":
            return _tuning_split(samples, groups, split.tuning, split.tuning_fraction, settings)
        return split
    held = _holdout(samples, groups, settings) if settings.tuning != "off" else []
    if settings.tuning == "tune":
        return _tuning_split(samples, groups, held, settings.tuning_fraction, settings)
    rest = without(samples, held)
    common = (settings.seed, settings.val_fraction, settings.dup_threshold)
    if settings.kind == "kfold":
        split = kfold_split(rest, groups, settings.n_folds, *common)
    elif settings.test_centres is not None:
        split = by_centre_split(rest, settings.test_centres, groups, *common)
    else:
        split = leave_one_centre_out(rest, groups, *common)
    if held:
        split.tuning, split.tuning_fraction = held, settings.tuning_fraction
    return split


def _holdout(
    samples: Sequence[Sample], groups: Sequence[Sequence[str]], settings: SplitSettings
) -> list[str]:
    return tuning_holdout(samples, groups, settings.tuning_fraction, settings.seed)


def _tuning_split(
    samples: Sequence[Sample],
    groups: Sequence[Sequence[str]],
    held: Sequence[str],
    fraction: float,
    settings: SplitSettings,
) -> Split:
    """``data.tuning: tune``: one part pair, train = all but the hold-out, val = it."""
    rest = sorted(s.id for s in without(samples, held))
    fold = {"train": rest, "val": sorted(held), "test": []}
    return Split(
        "tuning",
        settings.seed,
        1,
        settings.dup_threshold,
        0.0,
        [fold],
        [list(g) for g in groups],
        None,
        sorted(held),
        fraction,
    )
