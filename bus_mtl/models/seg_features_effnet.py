"""The paper's best: an EfficientNet classifier that runs on SegResNet's encoded features."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from bus_mtl.models.base import MTLNet, PretrainedPart
from bus_mtl.models.efficientnet_parts import (
    activation_like,
    batch_norm_like,
    build_efficientnet,
    classify,
    effnet_layout,
    remove_blocks_before,
    remove_stem,
    run_blocks,
    run_head,
)
from bus_mtl.models.output import MTLOutput
from bus_mtl.models.pretrained import apply_pretrained
from bus_mtl.models.segresnet import build_segresnet, segresnet_channels

FEATURE_SOURCES = ("multiscale", "bottleneck")


class SegResNetEffNetFeatures(MTLNet):
    """SegResNet + EfficientNet on the shared encoded features (registry name
    ``seg_features_effnet``) — the best scheme of de Araújo et al. 2026.

    ``feature_source="multiscale"`` (default; B0 channels, f = init_filters)::

        x ─► SegResNet encoder: s1 (f, /1) ─ s2 (2f, /2) ─ s4 (4f, /4) ─ s8 (8f, /8)
              │                      │             │             │
              │              3×3 conv+BN+act   1×1 conv+BN   1×1 conv+BN
              │              (replaces stem)       │             │
              │                      ▼             ▼             ▼
              │      EfficientNet: blocks@/2 ──(+)─► blocks@/4 ─(+)─► blocks@/8…/32
              │                                                  ─► head conv ─► pool ─► FC ─► logits
              └─► SegResNet decoder (skips s1, s2, s4; input s8) ─► mask

    How the features enter the EfficientNet:

    * The EfficientNet's stem (3×3 stride-2 conv on the image) is removed. A 3×3 conv + BN +
      activation adapter maps SegResNet's stride-2 stage (2f channels) to the stem's output
      width (32 for B0); the EfficientNet's MBConv blocks run on it from block 0.
    * Lateral fusion: where the EfficientNet's feature has finished a stride (its endpoints
      at /4 and /8: 24 and 40 channels in B0), a 1×1 conv + BN projection of the SegResNet
      stage at that stride (s4, and the bottleneck s8) is *added* to it, just before the
      stride-2 block that leaves that stride.
    * The blocks from stride 8 to 32, the head conv (1280 channels for B0), average pooling,
      dropout and the FC are the EfficientNet's own.

    ``feature_source="bottleneck"``: only the stride-8 bottleneck feeds the EfficientNet. A
    3×3 conv + BN + activation adapter maps it to the input width of the EfficientNet's
    first stride-8→16 block (40 for B0); the stem and every earlier block are removed (not
    just unused), so the classifier is cheaper: the blocks from /8 onward, head, pool, FC.

    Shared: the whole SegResNet encoder — the classification loss back-propagates through
    the adapter and the laterals into it, which is the point of the scheme. The decoder is
    segmentation-only, the EfficientNet classification-only. Parameters at in_channels=1,
    num_classes=1, init_filters=16, B0: 5.60 M (multiscale), 5.57 M (bottleneck).

    Args:
        in_channels: image channels, 1 or 3.
        num_classes: K, 1 or 3.
        model_name: the EfficientNet (B0–B7, Lite0–4).
        feature_source: ``"multiscale"`` or ``"bottleneck"`` (above).
        init_filters: SegResNet width (multiple of 8).
        dropout_prob: SegResNet's dropout after its first convolution.
        pretrained: ``None``, a checkpoint path, ``"imagenet"`` or ``"lite0-offline"``;
            ImageNet weights go into the EfficientNet blocks and head (the stem is replaced).
        norm: SegResNet's normalisation, ``"group"`` (the paper's) or ``"batch"`` (folds
            into the convolutions when deployed; see ``SEGRESNET_NORMS``).

    Shapes: B×C×H×W (H, W multiples of 32) -> ``MTLOutput(mask=B×1×H×W, logits=B×K)``.
    """

    has_seg = True
    has_cls = True
    size_divisor = 32

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        model_name: str = "efficientnet-b0",
        feature_source: Literal["multiscale", "bottleneck"] = "multiscale",
        init_filters: int = 16,
        dropout_prob: float | None = None,
        pretrained: str | None = None,
        norm: Literal["group", "batch"] = "group",
    ) -> None:
        super().__init__(in_channels, num_classes)
        if feature_source not in FEATURE_SOURCES:
            raise ValueError(
                f"feature_source must be one of {FEATURE_SOURCES}, got {feature_source!r}"
            )
        self.model_name = model_name
        self.feature_source = feature_source
        self.segresnet = build_segresnet(in_channels, init_filters, dropout_prob, norm)
        # Built with 3 input channels so ImageNet state dicts fit; the stem is removed below.
        self.effnet = build_efficientnet(model_name, 3, num_classes)
        layout = effnet_layout(self.effnet)
        seg = segresnet_channels(init_filters)
        if feature_source == "multiscale":
            entry_stride, entry_channels, self.start = 2, layout.stem_channels, 0
            self.lateral_strides: tuple[int, ...] = (4, 8)
        else:
            entry_stride, entry_channels, self.start = 8, layout.channels[8], layout.split[8]
            self.lateral_strides = ()
        self.entry_stride = entry_stride
        self.adapter = nn.Sequential(
            nn.Conv2d(seg[entry_stride], entry_channels, 3, padding=1, bias=False),
            batch_norm_like(self.effnet, entry_channels),
            activation_like(self.effnet),
        )
        self.laterals = nn.ModuleDict(
            {
                str(r): nn.Sequential(
                    nn.Conv2d(seg[r], layout.channels[r], 1, bias=False),
                    batch_norm_like(self.effnet, layout.channels[r]),
                )
                for r in self.lateral_strides
            }
        )
        self.splits = {r: layout.split[r] for r in self.lateral_strides}
        remove_stem(self.effnet)
        remove_blocks_before(self.effnet, self.start)
        apply_pretrained(self, pretrained)

    def pretrained_part(self) -> PretrainedPart:
        return PretrainedPart(self.effnet, 3, self.model_name)

    def forward(self, x: Tensor) -> MTLOutput:
        self.check_input(x)
        bottleneck, stages = self.segresnet.encode(x)
        mask = self.segresnet.decode(bottleneck, stages[::-1])
        by_stride = dict(zip((1, 2, 4, 8), stages))
        h = self.adapter(by_stride[self.entry_stride])
        i = self.start
        for r in self.lateral_strides:
            h = run_blocks(self.effnet, h, i, self.splits[r])
            h = h + self.laterals[str(r)](by_stride[r])
            i = self.splits[r]
        h = run_blocks(self.effnet, h, i, len(self.effnet._blocks))
        return MTLOutput(mask=mask, logits=classify(self.effnet, run_head(self.effnet, h)))
