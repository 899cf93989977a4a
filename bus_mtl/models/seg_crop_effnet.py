"""Segment, then classify a crop of the lesion cut from the full-resolution image."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

from bus_mtl.models.base import MTLNet, PretrainedPart
from bus_mtl.models.efficientnet_parts import (
    build_efficientnet,
    classify,
    run_blocks,
    run_head,
    run_stem,
)
from bus_mtl.models.effnet_unet import EFFNET_UNET_DIVISOR, EffNetUNet
from bus_mtl.models.output import MTLOutput
from bus_mtl.models.pretrained import (
    IMAGENET,
    LITE0_OFFLINE,
    apply_pretrained,
    imagenet_state_dict,
    load_efficientnet_part,
)
from bus_mtl.models.segresnet import SEGRESNET_DIVISOR, build_segresnet

CROP_DIVISOR = 32  # the EfficientNet's total stride: a crop side it divides gives whole grids
# What segments: MONAI's SegResNet from random weights (the paper's), or a U-Net on an
# EfficientNet encoder that ImageNet weights start (bus_mtl.models.effnet_unet).
SEGMENTERS = ("segresnet", "effnet_unet")
# How each crop's intensities reach the classifier: as the data module normalised the image,
# or standardised per crop (zero mean, unit variance per channel).
CROP_NORMS = ("none", "instance")


def mask_box(mask_logits: Tensor) -> tuple[Tensor, Tensor]:
    """Bounding box of the predicted lesion pixels (logit > 0, i.e. sigmoid > 0.5).

    Plain min/max of the foreground rows and columns (every component counts), computed
    with reductions only, so it traces and exports (ReduceMin/ReduceMax/Where) with no
    data-dependent control flow.

    Args:
        mask_logits: B×1×h×w.

    Returns:
        ``(box, found)``: ``box`` B×4 float32 ``(x0, y0, x1, y1)`` as fractions of the image
        side, pixel edges (a lesion covering columns 3..5 of w gives x0 = 3/w, x1 = 6/w);
        ``found`` B bool, False where no pixel is foreground (its box is then ``(0, 0, 1,
        1)``, the whole image).
    """
    # float32 whatever the autocast dtype: bf16 cannot count past 256 exactly.
    fg = (mask_logits[:, 0] > 0).float()
    h, w = fg.shape[-2], fg.shape[-1]
    rows, cols = fg.amax(dim=2), fg.amax(dim=1)  # B×h, B×w: any foreground in that row/column
    iy = torch.arange(h, device=fg.device, dtype=torch.float32)
    ix = torch.arange(w, device=fg.device, dtype=torch.float32)
    # Background rows are pushed past the far edge for the min and to 0 for the max.
    y0 = (iy + h * (1 - rows)).amin(dim=1) / h
    y1 = ((iy + 1) * rows).amax(dim=1) / h
    x0 = (ix + w * (1 - cols)).amin(dim=1) / w
    x1 = ((ix + 1) * cols).amax(dim=1) / w
    found = rows.amax(dim=1) > 0
    box = torch.stack([x0, y0, x1, y1], dim=1)
    whole = torch.tensor([0.0, 0.0, 1.0, 1.0], device=fg.device).expand_as(box)
    return torch.where(found[:, None], box, whole), found


def crop_box(
    box: Tensor,
    found: Tensor,
    height: int,
    width: int,
    margin: float = 0.25,
    min_box: float = 0.25,
    square: bool = True,
) -> Tensor:
    """The crop window around a lesion box, in pixels of an image of ``height``×``width``.

    The box (fractions, :func:`mask_box`) grows by ``margin`` of its width/height on each
    side; with ``square`` both sides become the larger one (the crop is resized to a square,
    so this keeps the lesion's aspect ratio, a malignancy cue: taller-than-wide); each side
    is at least ``min_box`` and at most 1 of the image side; the window is shifted inside
    the image where it would cross an edge (it keeps its size and its margin). Where
    ``found`` is False the window is the whole image.

    Shapes: box B×4, found B -> B×4 float32 ``(x0, y0, x1, y1)`` in pixel-edge coordinates
    (the whole image is ``(0, 0, width, height)``), ``roi_align(aligned=True)``'s convention.
    """
    x0, y0, x1, y1 = (box.float() * box.new_tensor([width, height, width, height])).unbind(1)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    bw, bh = (x1 - x0) * (1 + 2 * margin), (y1 - y0) * (1 + 2 * margin)
    if square:
        bw = bh = torch.maximum(bw, bh)
    bw = bw.clamp(min=min_box * width, max=width)
    bh = bh.clamp(min=min_box * height, max=height)
    left = torch.minimum((cx - bw / 2).clamp(min=0), width - bw)
    top = torch.minimum((cy - bh / 2).clamp(min=0), height - bh)
    window = torch.stack([left, top, left + bw, top + bh], dim=1)
    whole = window.new_tensor([0.0, 0.0, width, height]).expand_as(window)
    return torch.where(found[:, None], window, whole)


def jitter_window(window: Tensor, jitter: float, height: int, width: int) -> Tensor:
    """A randomly moved and rescaled copy of each crop window (training only).

    Each side is scaled by ``exp(u)``, ``u ~ U(-jitter, jitter)`` (the same factor for both
    sides, so a square window stays square), the centre moves by ``U(-jitter/2, jitter/2)``
    of the new side along each axis, and the window is clipped to the image side and moved
    inside the image as in :func:`crop_box`. The classifier then learns from crops as loose,
    tight or off-centre as a segmentation at another hospital may give.

    Shapes: B×4 pixel windows -> B×4.
    """
    x0, y0, x1, y1 = window.unbind(1)
    b = window.shape[0]
    scale = torch.exp((torch.rand(b, device=window.device) * 2 - 1) * jitter)
    bw = ((x1 - x0) * scale).clamp(min=1.0, max=width)
    bh = ((y1 - y0) * scale).clamp(min=1.0, max=height)
    shift = (torch.rand(2, b, device=window.device) - 0.5) * jitter
    cx = (x0 + x1) / 2 + shift[0] * bw
    cy = (y0 + y1) / 2 + shift[1] * bh
    left = torch.minimum((cx - bw / 2).clamp(min=0), width - bw)
    top = torch.minimum((cy - bh / 2).clamp(min=0), height - bh)
    return torch.stack([left, top, left + bw, top + bh], dim=1)


def standardise(lesion: Tensor, eps: float = 1e-5) -> Tensor:
    """Each crop and channel to zero mean and unit variance over its pixels.

    A scanner's overall gain and contrast then no longer reach the classifier; what is
    brighter or darker than the rest of the crop (a hypoechoic lesion in its tissue, the
    shadow below it) stays. A flat crop gives zeros (up to rounding). Instance
    normalisation without affine parameters or running statistics (the same in training
    and inference; ONNX ``InstanceNormalization``).

    Shapes: B×C×s×s -> B×C×s×s.
    """
    return F.instance_norm(lesion, eps=eps)


def crop(x: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Resample box ``i`` of image ``i``: B×C×H×W, B×4 pixel boxes -> B×C×size×size.

    ``roi_align`` with ``aligned=True`` (pixel ``j`` is the interval [j, j+1), its value at
    its centre) and an adaptive number of samples per output pixel (``ceil(box side /
    size)`` per axis): a box of exactly ``size`` integer-aligned pixels returns them
    unchanged, a box k times larger (k integer) their k×k averages, a smaller one a bilinear
    enlargement. Exports as ONNX ``RoiAlign`` (opset >= 16, half_pixel).
    """
    # Row index of each box as a column (ones' cumsum - 1 rather than arange(B): the batch
    # axis stays dynamic in a traced export).
    index = torch.ones_like(boxes[:, :1]).cumsum(0) - 1
    rois = torch.cat([index, boxes], dim=1).to(x.dtype)
    return roi_align(x, rois, output_size=size, spatial_scale=1.0, sampling_ratio=0, aligned=True)


def _layout_of(x: Tensor, t: Tensor) -> Tensor:
    """``t`` in ``x``'s memory format: roi_align writes contiguous tensors, and the
    convolutions after it run in the layout the caller chose (channels-last on CPU)."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return t.contiguous(memory_format=torch.channels_last)
    return t


class SegCropEffNet(MTLNet):
    """Segment, then classify the lesion crop (registry name ``seg_crop_effnet``).

    ::

        x (H×W) ─► resample to seg_size² ─► SegResNet ─► mask logits ─► upsample ─► mask (H×W)
        │                                                   │
        │                                box of logit > 0 (+ margin, ≥ min_box), detached
        │                                                   ▼
        └────────── roi_align: crop_size² window of x at full resolution ─► EfficientNet
                                                                      ─► pool ─► FC ─► logits

    The classifier sees the lesion at the input's full resolution (not the image shrunk to
    the segmentation size) and little of the scanner's frame, text overlays and caliper
    marks, which differ between hospitals. SegResNet segments a resampled copy of the input
    (``seg_size``², e.g. 128² of a 256² image: the segmentation costs what it costs at 128
    px); its logits are upsampled (bilinear) back to H×W. The box comes from the
    segmentation-size logits (:func:`mask_box`: plain min/max of every foreground pixel,
    not only the largest component), grows by ``margin`` per side, becomes square
    (``square``), is at least ``min_box`` of the image side and lies inside the image
    (:func:`crop_box`); an empty prediction gives the whole image. The crop
    (:func:`crop`) is resampled to ``crop_size``² by ``roi_align`` and classified by an
    EfficientNet with the image's channels (a grey stem from summed ImageNet weights, as in
    ``efficientnet``).

    Shared: nothing. The box is a step function of the logits and is detached, so the
    classification loss trains only the EfficientNet and the segmentation loss only
    SegResNet; the tasks are coupled through where the crop is. Training uses the
    predicted mask only (no ground-truth crop): ``forward(x)`` never sees a target. Early
    in training the untrained segmentation marks most of the image, so the classifier
    starts on (nearly) whole images and the crops tighten as the segmentation learns.
    Parameters at in_channels=1, num_classes=1, init_filters=8, Lite0: 3.77 M.

    Args:
        in_channels: image channels, 1 or 3.
        num_classes: K, 1 or 3.
        model_name: the EfficientNet (B0–B7, Lite0–4).
        init_filters: SegResNet width (multiple of 8 with ``norm="group"``).
        seg_size: side of the square image SegResNet segments (multiple of 8); the input
            is resampled to it by area averaging (``roi_align`` on the whole image) and
            squashed if not square. ``None``: segment at the input size (H, W multiples
            of 8).
        crop_size: side of the square crop the EfficientNet classifies (multiple of 32).
        margin: context added on each side, as a fraction of the lesion box's side.
        min_box: smallest crop side, as a fraction of the image side (in (0, 1]): a small
            lesion is not enlarged beyond ``crop_size / (min_box · side)``.
        square: make the crop window square (keeps the lesion's aspect ratio).
        dropout_prob: SegResNet's dropout after its first convolution.
        pretrained: ``None``, a checkpoint path, ``"imagenet"`` or ``"lite0-offline"``
            (weights for the EfficientNet).
        norm: SegResNet's normalisation, ``"group"`` (the paper's) or ``"batch"`` (folds
            into the convolutions when deployed; see ``SEGRESNET_NORMS``).
        segmenter: ``"segresnet"`` (MONAI's SegResNet, random weights; ``init_filters``,
            ``dropout_prob`` and ``norm`` apply to it) or ``"effnet_unet"`` (a U-Net on a
            ``model_name`` EfficientNet encoder, :class:`~bus_mtl.models.effnet_unet.
            EffNetUNet`, which ImageNet weights in ``pretrained`` initialise as they do the
            classifier; ``seg_size`` a multiple of 32).
        box_jitter: in training only, each crop window is rescaled by up to ``exp(±box_
            jitter)`` and moved by up to ``box_jitter / 2`` of its side
            (:func:`jitter_window`); 0 turns it off. Inference never jitters.
        mask_channel: the EfficientNet also sees the predicted mask, cropped with the
            image (one more input channel, ``2·sigmoid − 1``, detached): the lesion's shape
            and margin, which do not depend on the scanner's gain or texture. Its stem
            weights for that channel start at zero (ImageNet weights then compute what
            they did on the image alone).
        crop_norm: ``"none"`` (the crop as the data module normalised the image) or
            ``"instance"`` (each crop standardised on its own, :func:`standardise`; the
            mask channel is left as it is).

    Shapes: B×C×H×W (any H, W; multiples of 8 (32 for ``effnet_unet``) when
    ``seg_size=None``) ->
    ``MTLOutput(mask=B×1×H×W, logits=B×K)``.
    """

    has_seg = True
    has_cls = True
    # With seg_size set nothing in the net depends on the input size (None: SegResNet's 8).
    size_divisor = 1

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        model_name: str = "efficientnet-b0",
        init_filters: int = 16,
        seg_size: int | None = 128,
        crop_size: int = 128,
        margin: float = 0.25,
        min_box: float = 0.25,
        square: bool = True,
        dropout_prob: float | None = None,
        pretrained: str | None = None,
        norm: Literal["group", "batch"] = "group",
        segmenter: Literal["segresnet", "effnet_unet"] = "segresnet",
        box_jitter: float = 0.0,
        mask_channel: bool = False,
        crop_norm: Literal["none", "instance"] = "none",
    ) -> None:
        super().__init__(in_channels, num_classes)
        if segmenter not in SEGMENTERS:
            raise ValueError(f"segmenter must be one of {', '.join(SEGMENTERS)}, got {segmenter!r}")
        divisor = SEGRESNET_DIVISOR if segmenter == "segresnet" else EFFNET_UNET_DIVISOR
        if seg_size is not None and (
            isinstance(seg_size, bool) or seg_size < divisor or seg_size % divisor
        ):
            raise ValueError(
                f"seg_size must be a positive multiple of {divisor} (the stride of "
                f"segmenter {segmenter!r}) or None (segment at the input size), got "
                f"{seg_size!r}"
            )
        if crop_norm not in CROP_NORMS:
            raise ValueError(f"crop_norm must be one of {', '.join(CROP_NORMS)}, got {crop_norm!r}")
        if not 0 <= box_jitter <= 1:
            raise ValueError(
                f"box_jitter must be in [0, 1] (log-scale and shift range of the training "
                f"crop window; 0 = off), got {box_jitter!r}"
            )
        if isinstance(crop_size, bool) or crop_size < CROP_DIVISOR or crop_size % CROP_DIVISOR:
            raise ValueError(
                f"crop_size must be a positive multiple of {CROP_DIVISOR} (the EfficientNet's "
                f"stride), got {crop_size!r}"
            )
        if not margin >= 0:
            raise ValueError(f"margin must be >= 0 (a fraction of the box side), got {margin!r}")
        if not 0 < min_box <= 1:
            raise ValueError(
                f"min_box must be in (0, 1] (a fraction of the image side), got {min_box!r}"
            )
        self.model_name = model_name
        self.seg_size = seg_size
        self.crop_size = crop_size
        self.margin = float(margin)
        self.min_box = float(min_box)
        self.square = bool(square)
        self.segmenter = segmenter
        self.box_jitter = float(box_jitter)
        self.crop_norm = crop_norm
        if seg_size is None:
            self.size_divisor = divisor
        if segmenter == "segresnet":
            self.segresnet = build_segresnet(in_channels, init_filters, dropout_prob, norm)
        else:
            self.unet = EffNetUNet(in_channels, model_name)
        self.mask_channel = bool(mask_channel)
        self.effnet = build_efficientnet(model_name, in_channels + self.mask_channel, num_classes)
        apply_pretrained(self, pretrained)
        if segmenter == "effnet_unet" and pretrained in (IMAGENET, LITE0_OFFLINE):
            # apply_pretrained filled the classifier (and checked the name); the U-Net's
            # encoder is the same EfficientNet and takes the same ImageNet weights.
            part = PretrainedPart(self.unet.encoder, in_channels, model_name)
            load_efficientnet_part(part, imagenet_state_dict(model_name), source=pretrained)

    def pretrained_part(self) -> PretrainedPart:
        return PretrainedPart(self.effnet, self.in_channels, self.model_name)

    def segment(self, x: Tensor) -> Tensor:
        """B×C×H×W -> B×1×s×s mask logits at the segmentation size (H×W when ``seg_size``
        is ``None``)."""
        net = self.segresnet if self.segmenter == "segresnet" else self.unet
        if self.seg_size is None:
            return net(x)
        h, w = x.shape[-2], x.shape[-1]
        whole = x.new_tensor([0.0, 0.0, w, h]).expand(x.shape[0], 4)
        return net(_layout_of(x, crop(x, whole, self.seg_size)))

    def crop_window(self, seg_logits: Tensor, height: int, width: int) -> Tensor:
        """B×1×s×s segmentation logits -> B×4 crop window in input pixels (detached;
        jittered in training when ``box_jitter`` > 0)."""
        box, found = mask_box(seg_logits.detach())
        window = crop_box(box, found, height, width, self.margin, self.min_box, self.square)
        if self.training and self.box_jitter > 0:
            window = jitter_window(window, self.box_jitter, height, width)
        return window

    def forward(self, x: Tensor) -> MTLOutput:
        self.check_input(x)
        h, w = x.shape[-2], x.shape[-1]
        seg = self.segment(x)
        mask = F.interpolate(seg, size=(h, w), mode="bilinear", align_corners=False)
        window = self.crop_window(seg, h, w)
        lesion = crop(x, window, self.crop_size)
        if self.crop_norm == "instance":
            lesion = standardise(lesion)
        if self.mask_channel:
            # The predicted mask as one more channel of the crop, in [-1, 1] and detached
            # (the classification loss does not train the segmenter).
            shape = torch.sigmoid(mask.detach()) * 2 - 1
            lesion = torch.cat([lesion, crop(shape.to(x.dtype), window, self.crop_size)], dim=1)
        lesion = _layout_of(x, lesion)
        e = self.effnet
        features = run_head(e, run_blocks(e, run_stem(e, lesion), 0, len(e._blocks)))
        return MTLOutput(mask=mask, logits=classify(e, features))
