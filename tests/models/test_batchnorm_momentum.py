"""BatchNorm running statistics keep up with training.

efficientnet-pytorch (and smp's EfficientNet encoders) carry TensorFlow's
``batch_norm_momentum=0.99``, i.e. PyTorch momentum 0.01: after a few hundred steps the
running statistics still hold much of their initial values and eval-mode logits collapse to
a constant. Every variant must use PyTorch's 0.1.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchmetrics.functional.classification import binary_auroc

from bus_mtl.data import make_phantom
from bus_mtl.models import create, list_variants
from bus_mtl.models.efficientnet_parts import BN_MOMENTUM


def _batchnorms(net: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (name, m)
        for name, m in net.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]


@pytest.mark.parametrize("variant", list_variants())
def test_every_batchnorm_uses_pytorch_momentum(variant: str) -> None:
    net = create(variant)
    wrong = {name: m.momentum for name, m in _batchnorms(net) if m.momentum != BN_MOMENTUM}
    assert not wrong, f"{variant}: BatchNorm layers with momentum != {BN_MOMENTUM}: {wrong}"


def test_lite_and_pretrained_builds_use_pytorch_momentum() -> None:
    net = create("seg_features_effnet", model_name="efficientnet-lite0", pretrained="lite0-offline")
    layers = _batchnorms(net)
    assert layers, "expected BatchNorm layers in the Lite0 EfficientNet"
    assert {m.momentum for _, m in layers} == {BN_MOMENTUM}


def _phantoms(indices: range, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    items = [make_phantom(i, seed=seed, size=64) for i in indices]
    x = torch.stack([torch.from_numpy(im).float().div(255).unsqueeze(0) for im, _, _ in items])
    y = torch.tensor([label for _, _, label in items], dtype=torch.long)
    return (x - x.mean()) / x.std(), y


@torch.no_grad()
def _reestimated_eval_logits(
    net: nn.Module, x_train: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """Eval-mode logits of a copy of ``net`` whose BatchNorm statistics are recomputed
    (cumulative average over the training images, no weight changes)."""
    import copy

    ref = copy.deepcopy(net)
    for _, bn in _batchnorms(ref):
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average
    ref.train()
    for k in range(0, len(x_train), 16):
        ref(x_train[k : k + 16])
    ref.eval()
    return ref(x).logits[:, 0]


@pytest.mark.slow
def test_eval_mode_keeps_what_training_learned() -> None:
    """A short run of the paper's best variant: eval-mode logits have a real spread and the
    eval-mode AUC is what the same weights give with re-estimated BatchNorm statistics.

    With momentum 0.01 (the bug) the eval logits' spread is a few percent of train mode's
    after these 60 steps and the eval AUC falls far below the re-estimated one.
    """
    torch.manual_seed(0)
    x_train, y_train = _phantoms(range(0, 96), seed=7)
    x_test, y_test = _phantoms(range(96, 160), seed=7)
    net = create("seg_features_effnet", init_filters=8)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    net.train()
    for _ in range(10):
        perm = torch.randperm(len(x_train))
        for k in range(0, len(x_train), 16):
            idx = perm[k : k + 16]
            out = net(x_train[idx])
            loss = nn.functional.binary_cross_entropy_with_logits(
                out.logits[:, 0], y_train[idx].float()
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        train_logits = net(x_test).logits[:, 0]  # batch statistics
        net.eval()
        eval_logits = net(x_test).logits[:, 0]  # running statistics
    ref_logits = _reestimated_eval_logits(net, x_train, x_test)

    spread = float(eval_logits.std() / train_logits.std())
    assert spread > 0.3, f"eval-mode logits collapsed: std ratio eval/train = {spread:.3f}"
    auc_eval = binary_auroc(eval_logits, y_test).item()
    auc_ref = binary_auroc(ref_logits, y_test).item()
    assert auc_ref > 0.75, f"the short run learned too little to judge (AUC {auc_ref:.3f})"
    assert auc_eval > auc_ref - 0.1, (
        f"eval-mode AUC {auc_eval:.3f} far below the re-estimated statistics' {auc_ref:.3f}"
    )
