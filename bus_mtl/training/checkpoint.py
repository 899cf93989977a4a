"""Checkpoint metadata (``checkpoint["bus_mtl"]``) and rebuilding a net from it alone."""

from __future__ import annotations

import importlib
import inspect
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bus_mtl.data.sample import CLASS_NAMES

# Init arguments that load weights from elsewhere: the checkpoint's state_dict replaces them,
# and the file or download they name may not exist where the checkpoint is used.
_WEIGHT_SOURCES = ("pretrained", "encoder_weights", "weights")
_JSON_SCALARS = (bool, int, float, str, type(None))


def _jsonable(value: Any) -> bool:
    if isinstance(value, _JSON_SCALARS):
        return True
    if isinstance(value, (list, tuple)):
        return all(_jsonable(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _jsonable(v) for k, v in value.items())
    return False


def class_path_of(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def net_config(net: nn.Module, cli_hparams: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` that rebuild ``net``'s architecture.

    Taken from the LightningCLI config when the module came from it; otherwise read from the
    net: its ``init_args`` dict when it has one, else each ``__init__`` parameter stored
    under the same attribute name, else that parameter's default.
    """
    given = (cli_hparams or {}).get("net")
    if isinstance(given, dict) and "class_path" in given:
        return {"class_path": given["class_path"], "init_args": dict(given.get("init_args", {}))}
    recorded = getattr(net, "init_args", None)
    init_args: dict[str, Any] = dict(recorded) if isinstance(recorded, dict) else {}
    if not init_args:
        for name, param in inspect.signature(type(net).__init__).parameters.items():
            if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            value = getattr(net, name, param.default)
            if not _jsonable(value):
                value = param.default
            if value is inspect.Parameter.empty:
                raise ValueError(
                    f"cannot record {type(net).__name__}'s init argument {name!r} for the "
                    f"checkpoint: store it as attribute self.{name} or in self.init_args"
                )
            init_args[name] = value
        _warn_unless_rebuilds(net, init_args)
    return {"class_path": class_path_of(net), "init_args": init_args}


def _without_weight_sources(cls: type, init_args: dict[str, Any]) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters
    return {k: (None if k in _WEIGHT_SOURCES and k in params else v) for k, v in init_args.items()}


def _warn_unless_rebuilds(net: nn.Module, init_args: dict[str, Any]) -> None:
    """Warn when ``type(net)(**init_args)`` would not have ``net``'s weight shapes."""
    cls = type(net)
    try:
        with torch.device("meta"):
            rebuilt = cls(**_without_weight_sources(cls, init_args))
    except Exception:  # noqa: BLE001 - any failure means the recorded args are unusable
        rebuilt = None
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} if rebuilt else {}
    if want != got:
        warnings.warn(
            f"{cls.__name__}'s init arguments cannot be read back from the net (guessed "
            f"{init_args}); checkpoints of this run will not rebuild with load_net. Set "
            f"net.init_args = {{...the arguments it was built with...}} before wrapping it, "
            "or build the run with the LightningCLI (bus-mtl fit).",
            stacklevel=3,
        )


def build_metadata(module: Any, datamodule: Any | None) -> dict[str, Any]:
    """The ``checkpoint["bus_mtl"]`` dict of ARCHITECTURE.md for a ``MultiTaskModule``."""
    from bus_mtl.models.registry import variant_name

    config = module.net_config
    net = module.net
    normalization = getattr(datamodule, "normalization", None)
    image_size = getattr(datamodule, "image_size", None)
    if isinstance(image_size, (list, tuple)):
        image_size = [int(s) for s in image_size]
    class_names = getattr(datamodule, "class_names", None)
    num_classes = int(getattr(net, "num_classes", 1))
    if class_names is None:
        class_names = list(CLASS_NAMES[:2] if num_classes == 1 else CLASS_NAMES)
    return {
        "variant": variant_name(config["class_path"]),
        "net_class_path": config["class_path"],
        "net_init_args": dict(config["init_args"]),
        "in_channels": int(getattr(net, "in_channels", config["init_args"].get("in_channels", 1))),
        "num_classes": num_classes,
        "image_size": image_size,
        "normalization": dict(normalization) if normalization is not None else None,
        "class_names": list(class_names),
        "temperature": float(module.temperature),
        "threshold": float(module.threshold),
        "decision_threshold": float(module.decision_threshold),
        "threshold_rule": str(module.threshold_rule),
        "train_class_counts": module.class_counts,
        "has_seg": bool(module.has_seg),
        "has_cls": bool(module.has_cls),
    }


def _import_class(class_path: str) -> type:
    module_name, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import the net class {class_path!r}: {err}") from err


def load_checkpoint(ckpt_path: str | Path) -> dict[str, Any]:
    """Read a checkpoint on CPU; ``ValueError`` naming the file when it is not a bus_mtl one."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        # weights_only: a checkpoint from elsewhere must not run code; ours only hold
        # tensors and plain values.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means an unreadable file
        raise ValueError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(checkpoint, dict) or "bus_mtl" not in checkpoint:
        raise ValueError(f"{path} has no 'bus_mtl' metadata: it was not written by MultiTaskModule")
    return checkpoint


def net_state_dict(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The net's weights out of a Lightning checkpoint (``net.`` prefix, compile wrapper off)."""
    state = {}
    for key, value in checkpoint["state_dict"].items():
        if key.startswith("net."):
            state[key[len("net.") :].replace("_orig_mod.", "")] = value
    return state


def load_net(ckpt_path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the trained net from a checkpoint's metadata alone, in eval mode.

    Returns ``(net, meta)`` where ``meta`` is ``checkpoint["bus_mtl"]`` (see ARCHITECTURE.md):
    variant, class path, init args, channels, classes, image size, normalisation, class
    names, fitted temperature, mask threshold and the image-level decision threshold.
    """
    checkpoint = load_checkpoint(ckpt_path)
    meta = dict(checkpoint["bus_mtl"])
    cls = _import_class(meta["net_class_path"])
    init_args = _without_weight_sources(cls, dict(meta["net_init_args"]))
    net = cls(**init_args)
    missing, unexpected = net.load_state_dict(net_state_dict(checkpoint), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{ckpt_path}: weights do not fit {meta['net_class_path']}({init_args}); "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return net.eval(), meta
