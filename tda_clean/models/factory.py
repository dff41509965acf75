"""Model factories: logistic regression, MLP and a small CNN, all mapping inputs to logits.

Every model maps a float tensor ``X`` of shape ``(n, *feature_shape)`` to logits of shape ``(n, n_classes)``.
The last ``nn.Linear`` is always named ``head`` so "last layer" parameter subsets are found by name.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from tda_clean.models import user
from tda_clean.models.given import fresh_copy
from tda_clean.config import CNNConfig, InstanceModel, LogisticConfig, MLPConfig, ModelConfig, PythonModelConfig


class LogisticRegression(nn.Module):
    """Multinomial logistic regression: ``head(flatten(X))``."""

    def __init__(self, n_features: int, n_classes: int):
        super().__init__()
        self.head = nn.Linear(n_features, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Input of the last layer, shape ``(n, n_features)``."""
        return x.flatten(1)


class MLP(nn.Module):
    """``Linear -> ReLU`` blocks then a linear ``head``."""

    def __init__(self, n_features: int, n_classes: int, hidden: tuple[int, ...]):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features, shape ``(n, hidden[-1])``."""
        return self.body(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SmallCNN(nn.Module):
    """Two 3x3 conv blocks, 2x2 max-pool, one hidden dense layer, linear ``head``.

    Input shape ``(n, channels, height, width)``.
    """

    def __init__(self, in_shape: tuple[int, int, int], n_classes: int, channels: tuple[int, int], hidden: int):
        super().__init__()
        c, h, w = self.in_shape = in_shape
        c1, c2 = channels
        self.conv = nn.Sequential(
            nn.Conv2d(c, c1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        flat = c2 * (h // 2) * (w // 2)
        self.dense = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features, shape ``(n, hidden)``; ``x`` may omit the channel axis."""
        return self.dense(self.conv(x.reshape(x.shape[0], *self.in_shape)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_model(config: ModelConfig, feature_shape: tuple[int, ...], n_classes: int, seed: int) -> nn.Module:
    """Build a freshly initialised model (a ``python`` model from the user's factory); initialisation is a
    function of ``seed`` only.

    The global torch RNG is forked, so the caller's random state is left untouched.
    """
    builders: dict[type, Callable[[], nn.Module]] = {
        LogisticConfig: lambda: LogisticRegression(math.prod(feature_shape), n_classes),
        MLPConfig: lambda: MLP(math.prod(feature_shape), n_classes, tuple(config.hidden)),  # type: ignore[union-attr]
        CNNConfig: lambda: SmallCNN(_image_shape(feature_shape), n_classes, tuple(config.channels), config.hidden),  # type: ignore[union-attr]
        InstanceModel: lambda: fresh_copy(config.key),  # type: ignore[union-attr]
        PythonModelConfig: lambda: user.build(config, feature_shape, n_classes),
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builders[type(config)]()


def _image_shape(feature_shape: tuple[int, ...]) -> tuple[int, int, int]:
    from tda_clean.errors import InputError

    if len(feature_shape) == 3:
        return feature_shape  # type: ignore[return-value]
    if len(feature_shape) == 2:
        return (1, *feature_shape)  # type: ignore[return-value]
    raise InputError(f"model.kind=cnn needs image data (shape HxW or CxHxW); got feature shape {feature_shape}")
