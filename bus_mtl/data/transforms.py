"""Albumentations presets and custom pipelines from config.

Presets: ``none``; ``light`` (flip, small affine, brightness/contrast), the default;
``strong`` (adds larger affine, elastic deformation, gamma, blur/noise, coarse dropout);
``ultrasound`` (what differs between hospitals and scanners: field of view and lesion scale,
small rotations, gain over depth, gamma and contrast, speckle, blur, and sonographers'
caliper marks and text painted at random, so none of them can stand in for the lesion).
A custom pipeline is a list of dicts, one per transform: ``{"name": "HorizontalFlip",
"p": 0.5}`` (any albumentations class name and its arguments) or LightningCLI-style
``{"class_path": "albumentations.Affine", "init_args": {...}}``. Geometric transforms use
nearest interpolation for masks (albumentations' default, set explicitly where it can be).
Normalisation uses one scalar mean/std (1-channel input).

Training and evaluation loaders apply :func:`build_pipeline` (augmentation only, uint8 in
and out) in their workers and normalise on the device
(:meth:`~bus_mtl.data.BUSDataModule.on_after_batch_transfer`); :func:`build_transform`
(augmentation + normalisation in one pipeline) is the same arithmetic on one image, as
inference preprocessing does it.
"""

from __future__ import annotations

from typing import Any

import albumentations as A

from bus_mtl.data.us_augment import CaliperMarks, DepthGain

PRESETS = ("none", "light", "strong", "ultrasound")


def _preset(name: str) -> list[A.BasicTransform]:
    if name == "none":
        return []
    light = [
        A.HorizontalFlip(p=0.5),
        A.Affine(
            scale=(0.9, 1.1),
            translate_percent=(-0.05, 0.05),
            rotate=(-10, 10),
            fill=0,
            fill_mask=0,
            mask_interpolation=0,
            p=0.5,
        ),
        A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
    ]
    if name == "light":
        return light
    if name == "ultrasound":
        return _ultrasound()
    return [
        A.HorizontalFlip(p=0.5),
        A.Affine(
            scale=(0.8, 1.2),
            translate_percent=(-0.1, 0.1),
            rotate=(-20, 20),
            shear=(-8, 8),
            fill=0,
            fill_mask=0,
            mask_interpolation=0,
            p=0.7,
        ),
        A.ElasticTransform(alpha=30, sigma=6, mask_interpolation=0, p=0.2),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.7),
        A.RandomGamma(gamma_limit=(80, 120), p=0.3),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.GaussNoise(std_range=(0.02, 0.06))], p=0.3),
        A.CoarseDropout(
            num_holes_range=(1, 4),
            hole_height_range=(0.05, 0.12),
            hole_width_range=(0.05, 0.12),
            fill=0,
            p=0.2,
        ),
    ]


def _ultrasound() -> list[A.BasicTransform]:
    return [
        A.HorizontalFlip(p=0.5),
        A.Affine(
            scale=(0.75, 1.3),
            translate_percent=(-0.1, 0.1),
            rotate=(-15, 15),
            fill=0,
            fill_mask=0,
            mask_interpolation=0,
            p=0.8,
        ),
        DepthGain(gain_range=(0.7, 1.3), p=0.5),
        A.RandomGamma(gamma_limit=(70, 140), p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.25, p=0.6),
        A.OneOf(
            [
                A.MultiplicativeNoise(multiplier=(0.8, 1.2), elementwise=True),
                A.GaussianBlur(blur_limit=(3, 5)),
                A.GaussNoise(std_range=(0.02, 0.06)),
            ],
            p=0.4,
        ),
        CaliperMarks(p=0.3),
    ]


def _from_dict(spec: dict[str, Any], index: int) -> A.BasicTransform:
    spec = dict(spec)
    if "class_path" in spec:
        name = str(spec.pop("class_path")).rsplit(".", 1)[-1]
        kwargs = dict(spec.pop("init_args", {}) or {})
    elif "name" in spec:
        name = str(spec.pop("name"))
        kwargs = spec
    else:
        raise ValueError(
            f"augmentation[{index}]: needs a 'name' (or 'class_path') key, got {sorted(spec)}"
        )
    cls = getattr(A, name, None)
    if not isinstance(cls, type) or not issubclass(cls, A.BasicTransform):
        raise ValueError(f"augmentation[{index}]: unknown albumentations transform {name!r}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"augmentation[{index}] ({name}): bad arguments {kwargs}: {err}") from err


def build_augmentation(spec: str | list[dict[str, Any]] | None) -> list[A.BasicTransform]:
    """The augmentation transforms for a preset name or a list of transform dicts."""
    if spec is None:
        return []
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise ValueError(f"augmentation: unknown preset {spec!r}; valid: {', '.join(PRESETS)}")
        return _preset(spec)
    if not isinstance(spec, (list, tuple)):
        raise ValueError(
            f"augmentation: expected a preset name or a list of dicts, got {type(spec).__name__}"
        )
    return [_from_dict(s, i) for i, s in enumerate(spec)]


def build_pipeline(
    augmentation: str | list[dict[str, Any]] | None, seed: int | None = None
) -> A.Compose:
    """The augmentation alone, as the loaders apply it: uint8 image and mask in, uint8 out
    (normalisation happens on the device, once per batch)."""
    return A.Compose(build_augmentation(augmentation), seed=seed)


def build_transform(
    augmentation: str | list[dict[str, Any]] | None,
    mean: float,
    std: float,
    seed: int | None = None,
) -> A.Compose:
    """Augmentation (if any) followed by scalar normalisation ``(x/255 - mean) / std``."""
    if std <= 0:
        raise ValueError(f"std: must be positive, got {std}")
    steps = [
        *build_augmentation(augmentation),
        A.Normalize(mean=mean, std=std, max_pixel_value=255.0),
    ]
    return A.Compose(steps, seed=seed)
