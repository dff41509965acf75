"""The reference workload's model (a user model file, named in the config as ``workload_model:make_resnet``).

A ResNet-style CNN for grey 28x28 images ``(n, H, W)`` (or ``(n, 1, H, W)``) -> logits ``(n, n_classes)``:
a strided 3x3 stem, four residual blocks (conv-BN-ReLU-conv-BN plus a 1x1-conv-BN skip when the shape
changes) at 14x14, 7x7, 4x4 and 4x4, global average pooling and a linear ``head``. About 0.6M parameters at the
default ``WIDTH`` (``WORKLOAD_WIDTH`` overrides it). Trained by tda-clean's own Adam trainer; influence sees the
BatchNorm layers frozen (eval mode).
"""
from __future__ import annotations

import os

import torch
from torch import nn
from torch.nn import functional as F

WIDTH = int(os.environ.get("WORKLOAD_WIDTH", "32"))


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
    def __init__(self, n_classes: int, width: int = WIDTH):
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(1, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.layers = nn.Sequential(Block(w, w), Block(w, 2 * w, stride=2), Block(2 * w, 4 * w, stride=2),
                                    Block(4 * w, 4 * w))
        self.head = nn.Linear(4 * w, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(1) if x.dim() == 3 else x
        return self.head(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1))


def make_resnet(input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    return ResNet(n_classes)
