"""A net's recorded architecture, and rebuilding the net from it or from a checkpoint.

The one record is ``net.init_args``: :class:`~bus_mtl.models.base.MTLNet` writes it for every
variant (the bound arguments of the constructor that built it, defaults included).
:func:`net_config` turns it into ``{"class_path", "init_args"}``; training stores that in
``checkpoint["bus_mtl"]`` (``net_class_path``, ``net_init_args``) and as the module's
``hyper_parameters["net"]``, and :func:`build_net` / :func:`load_net` turn it back into a
network. This module sits below training and inference, so both rebuild nets the same way.

:func:`load_net` gives the bare trained net (its weights, e.g. to fine-tune or inspect);
:func:`load_inference_net` gives the network as the checkpoint's module evaluated it
(validation, test, predict, calibration): the bare net wrapped in the test-time augmentation
recorded in ``checkpoint["bus_mtl"]["tta"]`` (:mod:`bus_mtl.models.tta`). Inference and export
use the latter, so a deployed model computes what the checkpoint was validated with.
"""

from __future__ import annotations

import importlib
import inspect
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bus_mtl.data.io import check_resize
from bus_mtl.models.tta import check_tta, with_tta

# Init arguments that load weights from elsewhere: the checkpoint's state_dict replaces them,
# and the file or download they name may not exist where the checkpoint is used.
WEIGHT_SOURCES = ("pretrained", "encoder_weights", "weights")
_JSON_SCALARS = (bool, int, float, str, type(None))
_MISSING = object()


class UnrecordedNetError(ValueError):
    """The net carries no usable record of its constructor arguments (see :func:`net_config`)."""


def is_plain_value(value: Any) -> bool:
    """True for values a ``weights_only`` checkpoint (and a YAML config) can hold."""
    if isinstance(value, _JSON_SCALARS):
        return True
    if isinstance(value, (list, tuple)):
        return all(is_plain_value(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_plain_value(v) for k, v in value.items())
    return False


def class_path_of(obj: Any) -> str:
    """``"module.Class"`` of a class or of an instance's class."""
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def net_config(net: nn.Module) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` that rebuild ``net``'s architecture, from
    ``net.init_args`` alone (recorded by :class:`MTLNet`; set by hand on other modules).

    Raises :class:`UnrecordedNetError` (a ``ValueError``) naming the fix when there is no
    record, when it cannot be replayed by keyword, or when a value is not a plain
    JSON-like value a checkpoint can hold.
    """
    name = type(net).__name__
    if getattr(net, "init_args", _MISSING) is _MISSING:
        raise UnrecordedNetError(
            f"{name} records no constructor arguments (net.init_args), so a checkpoint cannot "
            f"rebuild it: derive {name} from bus_mtl.models.MTLNet (which records them), or "
            "set net.init_args = {...the keyword arguments it was built with...}"
        )
    recorded = net.init_args
    if not isinstance(recorded, dict):
        raise UnrecordedNetError(
            f"{name} was built with extra positional arguments (*args), which no keyword "
            f"call replays; build it with keyword arguments, or set net.init_args = {{...}} "
            f"(got init_args={recorded!r})"
        )
    bad = sorted(k for k, v in recorded.items() if not isinstance(k, str) or not is_plain_value(v))
    if bad:
        raise UnrecordedNetError(
            f"{name}'s constructor arguments {bad} are not plain values (None, bool, int, "
            "float, str, lists and dicts of them), so a checkpoint cannot hold them; pass "
            "such arguments by name or path instead of as objects"
        )
    if "<locals>" in type(net).__qualname__:
        raise UnrecordedNetError(
            f"{name} is defined inside a function ({class_path_of(net)}), so a checkpoint "
            "cannot import it to rebuild it; define the class at module level"
        )
    return {"class_path": class_path_of(net), "init_args": dict(recorded)}


def import_class(class_path: str) -> type:
    """The class named by ``"module.Class"``; ``ValueError`` naming it when it does not import."""
    module_name, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"cannot import the net class {class_path!r}: {err}") from err


def without_weight_sources(cls: type, init_args: dict[str, Any]) -> dict[str, Any]:
    """``init_args`` with :data:`WEIGHT_SOURCES` that ``cls`` takes set to ``None``."""
    params = inspect.signature(cls.__init__).parameters
    return {k: (None if k in WEIGHT_SOURCES and k in params else v) for k, v in init_args.items()}


def build_net(config: dict[str, Any]) -> nn.Module:
    """A fresh net of ``{"class_path", "init_args"}`` (:func:`net_config`'s output), with its
    weight sources (``pretrained``, ``encoder_weights``) set to ``None``: the caller loads
    trained weights into it, so nothing is downloaded or read from the training machine."""
    cls = import_class(config["class_path"])
    return cls(**without_weight_sources(cls, dict(config["init_args"])))


def _not_a_checkpoint(path: Path, err: Exception) -> str:
    """What ``path`` is, given that ``torch.load`` refused it with ``err``, and the fix."""
    fix = "pass the .ckpt file that bus-mtl fit wrote (RUN/checkpoints/*.ckpt)"
    if path.suffix == ".onnx":
        return f"{path} is an ONNX export, not a PyTorch checkpoint: pass it with --model"
    if isinstance(err, pickle.UnpicklingError) and "weights only" in str(err).lower():
        return (
            f"{path} holds Python objects besides tensors and plain values, which a bus_mtl "
            f"checkpoint never does (not loaded: it could run code); {fix}"
        )
    with path.open("rb") as f:
        head = f.read(512)
    text = head.decode("utf-8", errors="replace")
    if not head:
        what = "an empty file"
    elif all(c.isprintable() or c.isspace() for c in text) and "\ufffd" not in text:
        what = "a text file"
    else:
        what = f"torch.load: {type(err).__name__}: {err}"
    return f"{path} is not a PyTorch checkpoint ({what}); {fix}"


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
        raise ValueError(_not_a_checkpoint(path, err)) from err
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


def checkpoint_net_config(meta: dict[str, Any], ckpt_path: str | Path = "") -> dict[str, Any]:
    """``{"class_path", "init_args"}`` out of ``checkpoint["bus_mtl"]``; ``ValueError``
    naming the class and the fix when the checkpoint recorded no init arguments (its net was
    not an :class:`MTLNet` and had no ``init_args``)."""
    class_path = meta.get("net_class_path")
    init_args = meta.get("net_init_args")
    if not class_path or not isinstance(init_args, dict):
        raise ValueError(
            f"{ckpt_path or 'the checkpoint'}: records no constructor arguments for its net "
            f"{class_path!r} (it was not a bus_mtl.models.MTLNet and had no init_args when it "
            "was trained), so it cannot be rebuilt from the checkpoint alone; build the net "
            "yourself and load the weights: net.load_state_dict(net_state_dict("
            "load_checkpoint(path)))"
        )
    return {"class_path": class_path, "init_args": dict(init_args)}


def checkpoint_tta(meta: dict[str, Any], ckpt_path: str | Path = "") -> str:
    """The test-time augmentation of ``checkpoint["bus_mtl"]``: ``"none"`` or ``"hflip"``;
    checkpoints from before the key existed were evaluated without one (``"none"``)."""
    where = f"{ckpt_path}: " if ckpt_path else ""
    return check_tta(meta.get("tta", "none"), what=f"{where}checkpoint['bus_mtl']['tta']")


def checkpoint_resize(meta: dict[str, Any], ckpt_path: str | Path = "") -> str:
    """How the checkpoint's images became the square input (``data.resize``): ``"squash"``
    or ``"letterbox"``; checkpoints from before the key existed squashed (``"squash"``)."""
    where = f"{ckpt_path}: " if ckpt_path else ""
    return check_resize(
        meta.get("resize") or "squash", what=f"{where}checkpoint['bus_mtl']['resize']"
    )


def load_net(ckpt_path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the trained net from a checkpoint's metadata alone, in eval mode: the *bare*
    net, without the checkpoint's test-time augmentation (:func:`load_inference_net` adds it).

    Returns ``(net, meta)`` where ``meta`` is ``checkpoint["bus_mtl"]`` (see ARCHITECTURE.md):
    variant, class path, init args, channels, classes, image size, resize mode (``"squash"``
    for checkpoints from before it was recorded), normalisation, class names, fitted
    temperature, mask threshold and the image-level decision threshold.
    Checkpoints of every version of the library load: only ``net_class_path`` and
    ``net_init_args`` are needed to build the net.
    """
    checkpoint = load_checkpoint(ckpt_path)
    meta = dict(checkpoint["bus_mtl"])
    meta["resize"] = checkpoint_resize(meta, ckpt_path)
    config = checkpoint_net_config(meta, ckpt_path)
    net = build_net(config)
    missing, unexpected = net.load_state_dict(net_state_dict(checkpoint), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{ckpt_path}: weights do not fit {config['class_path']}({config['init_args']}); "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return net.eval(), meta


# The keys of checkpoint["bus_mtl"] that make one operating point: they hold for the net
# evaluated with one test-time augmentation, and for no other.
OPERATING_POINT_KEYS = ("temperature", "decision_threshold", "threshold_rule", "calibration")


def operating_point(
    meta: dict[str, Any], tta: str | None = None, ckpt_path: str | Path = ""
) -> dict[str, Any]:
    """``checkpoint["bus_mtl"]`` as it holds for the net evaluated with test-time
    augmentation ``tta`` (``None``: the checkpoint's own, ``meta["tta"]``).

    The fitted temperature and decision threshold belong to one evaluation: the logits of a
    single pass are less extreme than the two-view average. ``TemperatureCalibration`` fits
    every mode of a TTA checkpoint and stores them in ``meta["operating_points"]``
    (``{"none": {...}, "hflip": {...}}``); this returns a copy of ``meta`` whose ``tta``,
    ``temperature``, ``decision_threshold``, ``threshold_rule`` and ``calibration`` are the
    requested mode's. ``ValueError`` naming the modes the checkpoint has when it was not
    calibrated for ``tta`` (checkpoints from before ``operating_points`` hold only their own).
    """
    own = checkpoint_tta(meta, ckpt_path)
    if tta is None:
        return dict(meta)
    where = f"{ckpt_path}: " if ckpt_path else ""
    tta = check_tta(tta, what=f"{where}the requested test-time augmentation")
    if tta == own:
        return dict(meta)
    points = meta.get("operating_points") or {}
    if tta not in points:
        raise ValueError(
            f"{where}the checkpoint was calibrated with test-time augmentation "
            f"{sorted(points) or [own]} only, not {tta!r}: its temperature and decision "
            f"threshold do not hold for that network. Use tta={own!r} (the default), or train "
            "with this version of bus_mtl, whose TemperatureCalibration fits every mode of a "
            "TTA checkpoint"
        )
    out = dict(meta)
    out.update({k: v for k, v in points[tta].items() if k in OPERATING_POINT_KEYS})
    out["tta"] = tta
    return out


def load_inference_net(
    ckpt_path: str | Path, tta: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """The network as the checkpoint's module evaluated it, in eval mode, and its metadata.

    :func:`load_net`'s net, wrapped in the checkpoint's test-time augmentation
    (``meta["tta"]``: ``"hflip"`` -> :class:`~bus_mtl.models.tta.FlipTTA`; ``"none"`` or
    absent, as in checkpoints from before TTA -> the bare net). Its temperature and decision
    threshold were fitted on these outputs, so predictors and exports use this network.

    ``tta`` asks for another evaluation of the same weights, e.g. ``"none"`` for the single
    pass of an ``"hflip"`` checkpoint (half the latency): ``meta`` then carries that mode's
    own operating point (:func:`operating_point`; ``ValueError`` when it was not fitted).
    Returns ``(net, meta)``; ``ValueError`` naming an unknown ``tta``.
    """
    net, meta = load_net(ckpt_path)
    meta = operating_point(meta, tta, ckpt_path)
    return with_tta(net, checkpoint_tta(meta, ckpt_path)).eval(), meta
