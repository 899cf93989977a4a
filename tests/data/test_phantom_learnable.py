"""The synthetic phantom carries the malignancy cues: a tiny CNN learns them."""

import pytest
import torch
from torch import nn
from torchmetrics.functional.classification import binary_auroc

from bus_mtl.data import make_phantom


def _tensors(indices: range, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    items = [make_phantom(i, seed=seed, size=64) for i in indices]
    x = torch.stack([torch.from_numpy(im).float().div(255).unsqueeze(0) for im, _, _ in items])
    y = torch.tensor([label for _, _, label in items], dtype=torch.float32)
    return (x - x.mean()) / x.std(), y


@pytest.mark.slow
def test_tiny_cnn_separates_benign_from_malignant() -> None:
    torch.manual_seed(0)
    x_train, y_train = _tensors(range(0, 128), seed=21)
    x_test, y_test = _tensors(range(128, 208), seed=21)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 5, stride=2, padding=2),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 1),
    )
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(12):
        for k in range(0, len(x_train), 32):
            loss = nn.functional.binary_cross_entropy_with_logits(
                net(x_train[k : k + 32])[:, 0], y_train[k : k + 32]
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        auc = binary_auroc(net(x_test)[:, 0], y_test.long()).item()
    assert auc > 0.85, auc
