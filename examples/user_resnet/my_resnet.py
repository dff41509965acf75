"""The user's own model and training function (a file of the user's, not of tda-clean).

``make_resnet(input_shape, n_classes)`` builds a small ResNet-style CNN (BatchNorm, residual blocks) for grey
images ``(n, H, W)``; ``fit(model, train, val, *, seed)`` trains it. tda-clean imports both by name
(``model.factory: my_resnet:make_resnet``, ``train.function: my_resnet:fit``); train.py uses them too.
"""
from __future__ import annotations

import copy
import os

import torch
from torch import nn
from torch.nn import functional as F

EPOCHS = int(os.environ.get("USER_RESNET_EPOCHS", "15"))  # the example's test trains fewer


class Block(nn.Module):
    """conv-bn-relu-conv-bn plus the input (through a strided 1x1 conv + bn when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.skip(x))


class ResNet(nn.Module):
    def __init__(self, n_classes: int, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = Block(width, width)
        self.layer2 = Block(width, 2 * width, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.classifier = nn.Linear(2 * width * 16, n_classes)  # the last Linear: tda-clean's params "head"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(1) if x.dim() == 3 else x  # grey images (n, H, W)
        return self.classifier(self.pool(self.layer2(self.layer1(self.stem(x)))).flatten(1))


def make_resnet(input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    return ResNet(n_classes)


@torch.no_grad()
def accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(X).argmax(1) == y).float().mean())


def fit(model: nn.Module, train, val, *, seed: int) -> nn.Module:
    """Adam with a seeded batch order for ``EPOCHS`` epochs; keeps the weights of the best validation accuracy.
    ``train`` / ``val``: (X, y, weights) tuples of tensors (val may be None)."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    best, best_state = -1.0, copy.deepcopy(model.state_dict())
    for _ in range(EPOCHS):
        model.train()
        for idx in torch.randperm(len(train.y), generator=gen).split(64):
            idx = idx.to(train.y.device)
            opt.zero_grad()
            F.cross_entropy(model(train.X[idx]), train.y[idx]).backward()
            opt.step()
        score = accuracy(model, *val[:2]) if val is not None else 0.0
        if score >= best:
            best, best_state = score, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return model.eval()
