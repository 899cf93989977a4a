"""Data layer: sources, I/O with clear errors, near-duplicate groups, leakage-free splits,
decode cache, augmentation presets and :class:`BUSDataModule`.

Every name is imported on first use (PEP 562), so importing one light submodule, e.g.
``bus_mtl.data.io`` in the ONNX Predictor, does not pull in torch or albumentations.
"""

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
    "ImageReadError",
    "ManifestSource",
    "MultiSource",
    "Problem",
    "Sample",
    "SampleInfo",
    "Source",
    "Split",
    "SplitSettings",
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
    "make_split",
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

_LAZY = {
    "BUSDataModule": "bus_mtl.data.datamodule",
    "BUSDataset": "bus_mtl.data.dataset",
    "BUSISource": "bus_mtl.data.sources",
    "CLASS_NAMES": "bus_mtl.data.sample",
    "DEFAULT_DUP_THRESHOLD": "bus_mtl.data.duplicates",
    "DataError": "bus_mtl.data.errors",
    "DataReport": "bus_mtl.data.check",
    "DecodeCache": "bus_mtl.data.cache",
    "ImageReadError": "bus_mtl.data.errors",
    "ManifestSource": "bus_mtl.data.sources",
    "MultiSource": "bus_mtl.data.sources",
    "NORMAL_POLICIES": "bus_mtl.data.sources",
    "NO_LABEL": "bus_mtl.data.sample",
    "PRESETS": "bus_mtl.data.transforms",
    "Problem": "bus_mtl.data.errors",
    "Sample": "bus_mtl.data.sample",
    "SampleInfo": "bus_mtl.data.cache",
    "Source": "bus_mtl.data.sources",
    "Split": "bus_mtl.data.splits",
    "SplitSettings": "bus_mtl.data.splits",
    "SyntheticSource": "bus_mtl.data.sources",
    "TUNING_MODES": "bus_mtl.data.splits",
    "UDIATSource": "bus_mtl.data.sources",
    "build_augmentation": "bus_mtl.data.transforms",
    "build_transform": "bus_mtl.data.transforms",
    "by_centre_split": "bus_mtl.data.splits",
    "check_data": "bus_mtl.data.check",
    "conflict_rows": "bus_mtl.data.check",
    "cross_class_groups": "bus_mtl.data.duplicates",
    "default_cache_dir": "bus_mtl.data.paths",
    "default_source": "bus_mtl.data.sources",
    "find_busi_root": "bus_mtl.data.paths",
    "format_report": "bus_mtl.data.check",
    "group_samples": "bus_mtl.data.duplicates",
    "kfold_split": "bus_mtl.data.splits",
    "make_phantom": "bus_mtl.data.sources",
    "make_split": "bus_mtl.data.splits",
    "parse_label": "bus_mtl.data.sample",
    "phash": "bus_mtl.data.duplicates",
    "read_image": "bus_mtl.data.io",
    "read_mask": "bus_mtl.data.io",
    "read_masks": "bus_mtl.data.io",
    "sample_key": "bus_mtl.data.cache",
    "tuning_fingerprint": "bus_mtl.data.splits",
    "tuning_holdout": "bus_mtl.data.splits",
    "write_conflicts_csv": "bus_mtl.data.check",
}


def __getattr__(name: str):
    # Nothing is imported until it is used: bus_mtl.data.io (decode, fit_to_square) must stay
    # importable without torch or albumentations, because the ONNX Predictor shares it.
    import importlib

    if name.startswith("__"):
        raise AttributeError(f"module 'bus_mtl.data' has no attribute {name!r}")

    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    try:  # a submodule used as an attribute (``bus_mtl.data.cache``)
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module 'bus_mtl.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
