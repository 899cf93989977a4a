"""The preprocessing facts an exported model carries, so inference never needs the config.

Stored as one JSON string under the key ``bus_mtl`` (ONNX ``metadata_props``, TorchScript
``_extra_files["bus_mtl.json"]``, and the sidecar ``<model>.json``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from bus_mtl.data.io import check_resize

METADATA_KEY = "bus_mtl"
INPUT_NAME = "image"
MASK_OUTPUT = "mask"
LOGITS_OUTPUT = "logits"
# Test-time augmentation modes, as bus_mtl.models.tta.TTA_MODES (repeated: this module must
# not import torch; a test checks that both agree).
TTA_MODES = ("none", "hflip")


def _default_class_names(num_classes: int) -> tuple[str, ...]:
    return ("benign", "malignant", "normal") if num_classes == 3 else ("benign", "malignant")


@dataclass(frozen=True)
class ModelInfo:
    """What preprocessing and postprocessing need to know about a trained network.

    Attributes:
        image_size: side of the square network input (training resized every image to it).
        resize: how an image became that square (``bus_mtl.data.io.fit_to_square``):
            ``"squash"`` (stretched; exports from before the field existed) or
            ``"letterbox"`` (aspect ratio kept, shorter side padded with 0).
        in_channels: 1 (grey) or 3 (grey replicated, as in training).
        num_classes: K class logits: 1 (malignancy logit) or 3 (benign/malignant/normal).
        mean, std: scalar normalisation in [0, 1] pixel units: ``(x / 255 - mean) / std``.
        temperature: calibration temperature T; probabilities are ``sigmoid(logit / T)``
            (K = 1) or ``softmax(logits / T)`` (K = 3).
        threshold: mask probability threshold.
        decision_threshold: malignancy decision threshold on the calibrated probability
            (K = 1), fitted on the validation part at training time; ``None`` (exports
            from before it existed): ``threshold``.
        threshold_rule: how ``decision_threshold`` was chosen (``youden_binormal``,
            ``youden``, ``sensitivity>=0.9``, ``fixed``, ``argmax`` for K = 3).
        class_names: names of the class indices (K = 1: index 0 = benign, 1 = malignant).
        variant: ``bus_mtl.models`` variant name.
        has_seg, has_cls: which outputs the network has.
        tta: the test-time augmentation inside the model (``"hflip"``: its graph averages
            the image and its left-right mirror, as the checkpoint was validated and
            calibrated); ``"none"`` for exports from before it existed.
        bus_mtl_version: the library version that wrote the export.
        source_prior: the malignancy prevalence the probabilities refer to (the training
            part's, re-weighted by the class loss: 0.5 under the class-balanced default);
            prior-shift correction at a new site starts from it. ``None``: not recorded.
    """

    image_size: int
    in_channels: int = 1
    num_classes: int = 1
    mean: float = 0.0
    std: float = 1.0
    temperature: float = 1.0
    threshold: float = 0.5
    decision_threshold: float | None = None
    threshold_rule: str = ""
    class_names: tuple[str, ...] = field(default=())
    variant: str = ""
    has_seg: bool = True
    has_cls: bool = True
    tta: str = "none"
    bus_mtl_version: str = ""
    resize: str = "squash"
    source_prior: float | None = None

    def __post_init__(self) -> None:
        if int(self.image_size) <= 0:
            raise ValueError(f"image_size must be positive, got {self.image_size!r}")
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {self.in_channels!r}")
        if self.num_classes not in (1, 3):
            raise ValueError(f"num_classes must be 1 or 3, got {self.num_classes!r}")
        if not self.std > 0:
            raise ValueError(f"normalization std must be > 0, got {self.std!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold!r}")
        if self.decision_threshold is not None and not 0.0 < self.decision_threshold < 1.0:
            raise ValueError(
                f"decision_threshold must be in (0, 1), got {self.decision_threshold!r}"
            )
        if self.source_prior is not None and not 0.0 < self.source_prior < 1.0:
            raise ValueError(f"source_prior must be in (0, 1), got {self.source_prior!r}")
        if not (self.has_seg or self.has_cls):
            raise ValueError("a model needs a segmentation or a classification output")
        if self.tta not in TTA_MODES:
            raise ValueError(
                f"tta must be one of {TTA_MODES}, got {self.tta!r}: the metadata was written by "
                "a newer bus_mtl (upgrade it) or edited by hand"
            )
        check_resize(self.resize)
        names = tuple(self.class_names) or _default_class_names(self.num_classes)
        if len(names) < max(2, self.num_classes):
            raise ValueError(
                f"class_names {names!r} has fewer names than the {self.num_classes} class(es) "
                "need (K = 1 needs benign and malignant)"
            )
        object.__setattr__(self, "class_names", names)
        object.__setattr__(self, "image_size", int(self.image_size))

    @property
    def class_threshold(self) -> float:
        """The malignancy decision threshold: the fitted one, else the mask threshold."""
        return self.threshold if self.decision_threshold is None else self.decision_threshold

    @property
    def output_names(self) -> list[str]:
        """Names of the exported model's outputs, in order."""
        return [n for n, ok in ((MASK_OUTPUT, self.has_seg), (LOGITS_OUTPUT, self.has_cls)) if ok]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["class_names"] = list(self.class_names)
        out["normalization"] = {"mean": out.pop("mean"), "std": out.pop("std")}
        out["outputs"] = self.output_names
        out["input"] = INPUT_NAME
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        """Build from :meth:`to_dict` output or from checkpoint ``["bus_mtl"]`` metadata."""
        data = dict(data)
        norm = data.pop("normalization", None) or {}
        data.setdefault("mean", norm.get("mean", 0.0))
        data.setdefault("std", norm.get("std", 1.0))
        if "image_size" not in data or data["image_size"] is None:
            raise ValueError("model metadata has no 'image_size'")
        if isinstance(data["image_size"], (list, tuple)):
            sizes = set(data["image_size"])
            if len(sizes) != 1:
                raise ValueError(f"only square inputs are supported, got {data['image_size']}")
            data["image_size"] = sizes.pop()
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known and v is not None}
        kwargs["class_names"] = tuple(kwargs.get("class_names") or ())
        for key in (
            "mean",
            "std",
            "temperature",
            "threshold",
            "decision_threshold",
            "source_prior",
        ):
            if key in kwargs:
                kwargs[key] = float(kwargs[key])
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str, source: str = "metadata") -> ModelInfo:
        try:
            return cls.from_dict(json.loads(text))
        except (json.JSONDecodeError, TypeError, ValueError) as err:
            raise ValueError(f"{source}: invalid bus_mtl model metadata: {err}") from err


def sidecar_path(model_path: str | Path) -> Path:
    """``model.onnx`` -> ``model.json``: the human-readable copy of the metadata."""
    return Path(model_path).with_suffix(".json")
