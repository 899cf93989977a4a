"""Data layer: sources, I/O with clear errors, near-duplicate groups, leakage-free splits,
decode cache, augmentation presets and :class:`BUSDataModule`."""

from bus_mtl.data.cache import DecodeCache, SampleInfo, sample_key
from bus_mtl.data.check import (
    DataReport,
    check_data,
    conflict_rows,
    format_report,
    write_conflicts_csv,
)
from bus_mtl.data.duplicates import (
    DEFAULT_DUP_THRESHOLD,
    cross_class_groups,
    group_samples,
    phash,
)
from bus_mtl.data.errors import DataError, Problem
from bus_mtl.data.io import read_image, read_mask, read_masks
from bus_mtl.data.paths import default_cache_dir, find_busi_root
from bus_mtl.data.sample import CLASS_NAMES, NO_LABEL, Sample, parse_label
from bus_mtl.data.sources import (
    NORMAL_POLICIES,
    BUSISource,
    ManifestSource,
    MultiSource,
    Source,
    SyntheticSource,
    UDIATSource,
    default_source,
    make_phantom,
)
from bus_mtl.data.splits import (
    TUNING_MODES,
    Split,
    by_centre_split,
    kfold_split,
    tuning_fingerprint,
    tuning_holdout,
)
from bus_mtl.data.transforms import PRESETS, build_augmentation, build_transform

__all__ = [
    "CLASS_NAMES",
    "DEFAULT_DUP_THRESHOLD",
    "NORMAL_POLICIES",
    "NO_LABEL",
    "PRESETS",
    "TUNING_MODES",
    "BUSDataModule",
    "BUSDataset",
    "BUSISource",
    "DataError",
    "DataReport",
    "DecodeCache",
    "ManifestSource",
    "MultiSource",
    "Problem",
    "Sample",
    "SampleInfo",
    "Source",
    "Split",
    "SyntheticSource",
    "UDIATSource",
    "build_augmentation",
    "build_transform",
    "by_centre_split",
    "check_data",
    "conflict_rows",
    "cross_class_groups",
    "default_cache_dir",
    "default_source",
    "find_busi_root",
    "format_report",
    "group_samples",
    "kfold_split",
    "make_phantom",
    "parse_label",
    "phash",
    "read_image",
    "read_mask",
    "read_masks",
    "sample_key",
    "tuning_fingerprint",
    "tuning_holdout",
    "write_conflicts_csv",
]

_LAZY = {"BUSDataModule": "bus_mtl.data.datamodule", "BUSDataset": "bus_mtl.data.dataset"}


def __getattr__(name: str):
    # torch/Lightning are imported only when the DataModule is used, so `check-data` starts fast.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bus_mtl.data' has no attribute {name!r}")
