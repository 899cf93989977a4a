"""Class-activation maps of the malignancy logit (Grad-CAM, Selvaraju et al. 2017).

One function for every variant with a classifier, :func:`grad_cam`: forward hooks record the
4-D feature maps the network computes, the malignancy logit is differentiated with respect
to them, and the map is ``ReLU(Σ_k w_k A_k)`` with ``w_k`` the spatial mean of the gradient
of channel ``k``. The target layer is found, not listed per variant: the last feature map
(in the order the forward pass finishes them) that the logit depends on and that still has
a spatial extent (more than one pixel). That is the EfficientNet's head convolution block
in ``efficientnet``, ``seg_features_effnet``, ``mask_guided``, ``cross_stitch`` and
``seg_crop_effnet``, the SegResNet bottleneck in ``shared_encoder``, the encoder's last
stage in the smp comparators; the decoder's maps are never taken, because the logit does
not depend on them.

Where the classifier sees a crop (:class:`~bus_mtl.models.SegCropEffNet`), the map covers
that crop and is put back into the image through the crop window (zero outside it). A net
wrapped in :class:`~bus_mtl.models.FlipTTA` is explained as it predicts: both views run, the
mirror's map is flipped back, and the two are averaged before the ReLU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CamResult", "cam_overlay", "grad_cam", "grad_cam_full", "predictor_cam"]

#: Modules whose output is their input rearranged, never a feature map of their own.
_PASS_THROUGH = (
    nn.Identity,
    nn.ZeroPad2d,
    nn.ConstantPad2d,
    nn.ReflectionPad2d,
    nn.ReplicationPad2d,
    nn.Dropout,
    nn.Dropout2d,
)
#: The class whose logit is explained with K = 3 logits (benign, malignant, normal).
MALIGNANT = 1


class CamResult(NamedTuple):
    """What :func:`grad_cam_full` returns."""

    cam: np.ndarray  # H×W float32 in [0, 1]
    layer: str  # dotted name of the module explained, as in the bare net's named_modules()


def grad_cam(
    net: nn.Module,
    image: Tensor,
    layer: nn.Module | str | None = None,
    class_index: int | None = None,
) -> np.ndarray:
    """Grad-CAM of the malignancy logit of ``net`` for one image.

    Args:
        net: a ``bus_mtl.models`` network with a classification head (``has_cls``), bare
            or wrapped in ``FlipTTA``; used in the mode it is in (eval for inference).
        image: C×H×W or 1×C×H×W float network input (normalised, as
            :func:`bus_mtl.inference.preprocess.preprocess` makes it).
        layer: the module whose output is explained (a module of the bare net or its
            dotted name); ``None``: found automatically (module docstring).
        class_index: the logit explained; default: the malignancy logit (the only one for
            K = 1, index 1 of benign/malignant/normal for K = 3).

    Returns:
        H×W float32 array in [0, 1] (the maximum is 1; all zeros when no pixel speaks for
        the class).

    Raises:
        ValueError: a net without a classifier, an unknown layer name, a batch of several
            images.
    """
    return grad_cam_full(net, image, layer, class_index).cam


def grad_cam_full(
    net: nn.Module,
    image: Tensor,
    layer: nn.Module | str | None = None,
    class_index: int | None = None,
) -> CamResult:
    """:func:`grad_cam` and the name of the layer used (``CamResult``)."""
    from bus_mtl.models.tta import FlipTTA

    bare = net.net if isinstance(net, FlipTTA) else net
    if not getattr(bare, "has_cls", True):
        raise ValueError(
            f"{type(bare).__name__} has no classification head: there is no malignancy logit "
            "to explain (class-activation maps need a variant with a classifier)"
        )
    x = image if image.dim() == 4 else image[None]
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"expected one image, C×H×W or 1×C×H×W, got shape {tuple(image.shape)}")
    param = next(bare.parameters(), None)
    x = x.detach().to(device=param.device if param is not None else x.device, dtype=torch.float32)
    views = torch.cat([x, x.flip(-1)]) if isinstance(net, FlipTTA) else x
    names = {id(m): n for n, m in bare.named_modules() if n}
    wanted = _resolve_layer(bare, layer)

    captured: list[tuple[str, Tensor]] = []

    def hook(module: nn.Module, inputs: Any, output: Any) -> Any:
        if (
            isinstance(output, Tensor)
            and output.dim() == 4
            and output.is_floating_point()
            and not any(output is i for i in inputs)  # nn.Identity: its input's map
        ):
            captured.append((names.get(id(module), type(module).__name__), output))
            # The clone is what the rest of the forward sees, so an in-place op after this
            # module (ReLU(inplace=True)) cannot overwrite the values explained here.
            return output.clone()
        return None

    targets = (
        [m for m in bare.modules() if m is not bare and not isinstance(m, _PASS_THROUGH)]
        if wanted is None
        else [wanted]
    )
    handles = [m.register_forward_hook(hook) for m in targets]
    try:
        with torch.inference_mode(False), torch.enable_grad():
            views = views.clone().requires_grad_(True)  # a graph even with frozen weights
            out = bare(views)
            logits = out[1]
            if logits is None:
                raise ValueError(f"{type(bare).__name__} returned no class logits")
            k = (
                class_index
                if class_index is not None
                else (0 if logits.shape[1] == 1 else MALIGNANT)
            )
            score = logits[:, k].sum()
            tensors = [t for _, t in captured]
            grads = torch.autograd.grad(score, tensors, allow_unused=True) if tensors else []
    finally:
        for h in handles:
            h.remove()
    index = _pick(captured, grads, explicit=wanted is not None)
    name, acts = captured[index]
    grad = grads[index]
    if grad is None:  # an explicit layer the logit does not depend on
        grad = torch.zeros_like(acts)
    weights = grad.detach().mean(dim=(2, 3), keepdim=True)  # V×C×1×1
    maps = (weights * acts.detach()).sum(dim=1, keepdim=True).float()  # V×1×h×w
    h, w = x.shape[-2], x.shape[-1]
    full = _to_image(bare, name, maps, views.detach(), h, w)  # V×h×w, in each view's frame
    if full.shape[0] == 2:
        full = (full[0] + full[1].flip(-1)) / 2  # the mirror's map back in the image's frame
    else:
        full = full[0]
    cam = full.clamp(min=0)
    top = float(cam.max())
    cam = cam / top if top > 0 else torch.zeros_like(cam)
    return CamResult(cam.cpu().numpy().astype(np.float32), name)


def _resolve_layer(bare: nn.Module, layer: nn.Module | str | None) -> nn.Module | None:
    if layer is None or isinstance(layer, nn.Module):
        return layer
    modules = dict(bare.named_modules())
    if layer not in modules or not layer:
        heads = [n for n in modules if n.count(".") < 2 and n][:12]
        raise ValueError(
            f"layer {layer!r} is not a module of {type(bare).__name__}; give a dotted name from "
            f"net.named_modules() (e.g. {', '.join(heads)}), or layer=None to find it"
        )
    return modules[layer]


def _pick(
    captured: list[tuple[str, Tensor]], grads: list[Tensor | None] | tuple, explicit: bool
) -> int:
    """Index of the map to explain: the explicit layer's last call, else the last map the
    logit depends on with more than one pixel (a 1×1 map, a global pooling, is a last
    resort)."""
    if not captured:
        raise ValueError(
            "no 4-D feature map was recorded: the layer is not called in the forward pass"
        )
    if explicit:
        return len(captured) - 1
    connected = [i for i, g in enumerate(grads) if g is not None]
    if not connected:
        raise ValueError("the malignancy logit depends on no recorded feature map")
    # A zero gradient everywhere (a dead unit) says nothing; it is kept only when all are.
    used = [i for i in connected if bool(grads[i].abs().sum() > 0)] or connected
    spatial = [i for i in used if captured[i][1].shape[-1] * captured[i][1].shape[-2] > 1]
    return (spatial or used)[-1]


def _to_image(bare: nn.Module, name: str, maps: Tensor, views: Tensor, h: int, w: int) -> Tensor:
    """V×1×h'×w' maps -> V×H×W in the input's pixels: bilinear upsampling, or, for a map of
    the crop a :class:`SegCropEffNet` classifies, resampled into its crop window."""
    from bus_mtl.models.seg_crop_effnet import SegCropEffNet

    if isinstance(bare, SegCropEffNet) and name.startswith("effnet"):
        with torch.no_grad():
            boxes = bare.crop_window(bare.segment(views), h, w).float()  # V×4 pixel edges
        return _paste(maps, boxes, h, w)
    return F.interpolate(maps, size=(h, w), mode="bilinear", align_corners=False)[:, 0]


def _paste(maps: Tensor, boxes: Tensor, h: int, w: int) -> Tensor:
    """Each V×1×h'×w' map stretched over its box ``(x0, y0, x1, y1)`` (pixel edges) of an
    H×W canvas, zero outside: every canvas pixel centre is looked up in crop coordinates
    (bilinear, the map's edge values held up to the box edge)."""
    ys = torch.arange(h, dtype=torch.float32, device=maps.device) + 0.5
    xs = torch.arange(w, dtype=torch.float32, device=maps.device) + 0.5
    out = []
    for m, (x0, y0, x1, y1) in zip(maps, boxes):
        u = (xs - x0) / (x1 - x0).clamp(min=1e-6) * 2 - 1  # W, in grid_sample's [-1, 1]
        v = (ys - y0) / (y1 - y0).clamp(min=1e-6) * 2 - 1  # H
        grid = torch.stack(torch.meshgrid(u, v, indexing="xy"), dim=-1)[None]  # 1×H×W×2
        inside = (grid.abs() <= 1).all(dim=-1)[0]  # H×W: pixel centres within the box
        sampled = F.grid_sample(
            m[None], grid, mode="bilinear", padding_mode="border", align_corners=False
        )[0, 0]
        out.append(torch.where(inside, sampled, torch.zeros_like(sampled)))
    return torch.stack(out)


def predictor_cam(predictor: Any, gray: np.ndarray) -> np.ndarray:
    """The map of :func:`grad_cam` for an H×W uint8 grey image at its original size, from a
    :class:`~bus_mtl.inference.TorchPredictor` (its network, TTA included, and its
    preprocessing: size, ``resize`` mode, normalisation).

    Raises:
        ValueError: a predictor without a PyTorch network (an ONNX ``Predictor``: CAM needs
            the gradients of a checkpoint's network), or a net without a classifier.
    """
    from bus_mtl.inference.preprocess import mask_to_original, preprocess

    net = getattr(predictor, "net", None)
    if not isinstance(net, nn.Module):
        raise ValueError(
            "class-activation maps need the PyTorch network of a checkpoint (--ckpt, "
            "TorchPredictor): an ONNX model has no gradients to follow"
        )
    info = predictor.info
    batch = torch.from_numpy(preprocess(gray, info))
    cam = grad_cam(net, batch)
    return np.clip(mask_to_original(cam, gray.shape, info.resize), 0.0, 1.0).astype(np.float32)


def cam_overlay(
    gray: np.ndarray,
    cam: np.ndarray,
    alpha: float = 0.45,
    contours: Callable[[np.ndarray], None] | None = None,
) -> np.ndarray:
    """``cam`` (H×W in [0, 1]) as a JET heat map blended over ``gray`` (H×W uint8): H×W×3
    uint8 RGB; where the map is 0 the image shows through unchanged. ``contours``: drawn
    on the RGB afterwards (e.g. ``lambda rgb: cv2.drawContours(rgb, ...)``)."""
    if cam.shape != gray.shape:
        raise ValueError(f"cam shape {cam.shape} differs from image shape {gray.shape}")
    rgb = cv2.cvtColor(np.ascontiguousarray(gray, dtype=np.uint8), cv2.COLOR_GRAY2RGB)
    heat = cv2.applyColorMap(np.uint8(np.clip(cam, 0, 1) * 255), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB).astype(np.float32)
    a = (alpha * np.clip(cam, 0, 1))[..., None].astype(np.float32)
    out = np.clip(rgb * (1 - a) + heat * a, 0, 255).astype(np.uint8)
    if contours is not None:
        contours(out)
    return out
