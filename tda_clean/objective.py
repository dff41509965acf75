"""The training objective, defined once for the trainer, the curvature solvers, group influence and unlearning:

    L(theta) = sum_i w_i loss(f(x_i; theta), y_i) / sum_i w_i  +  (l2 / 2) ||theta||^2

with ``w_i = 1`` unless row weights are given and ``loss`` a per-sample loss ``(logits (n, C), y (n,)) -> (n,)``
(cross-entropy by default; any differentiable per-sample loss of the same shape can replace it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch.nn import functional as F

from tda_clean.errors import InputError

# per-sample loss: (logits (n, C), labels (n,) long) -> (n,) losses
SampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy: ``logits`` (n, C), ``y`` (n,) -> (n,)."""
    return F.cross_entropy(logits, y, reduction="none")


@dataclass(frozen=True)
class TrainingObjective:
    """``loss`` (per-sample, (n,)) averaged with optional row weights, plus ``(l2/2) ||theta||^2``."""

    l2: float = 0.0
    loss: SampleLoss = cross_entropy

    def __post_init__(self) -> None:
        if isinstance(self.l2, bool) or not isinstance(self.l2, (int, float)) or not self.l2 >= 0:
            raise InputError(f"l2: expected a number >= 0, got {self.l2!r}")

    def data_sum(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``sum_i loss_i`` (scalar; unregularised)."""
        return self.loss(logits, y).sum()

    def data_mean(self, logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """``sum_i w_i loss_i / sum_i w_i`` (the plain mean without ``weight`` (n,))."""
        losses = self.loss(logits, y)
        return losses.mean() if weight is None else (losses * weight).sum() / weight.sum()

    def row(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss of one row: ``logits`` (C,), ``y`` () -> scalar (for per-sample gradients)."""
        return self.loss(logits.unsqueeze(0), y.unsqueeze(0))[0]

    def regulariser(self, params: torch.Tensor | Iterable[torch.Tensor]) -> torch.Tensor:
        """``(l2/2) ||theta||^2`` of a flat vector or of an iterable of parameter tensors."""
        tensors = [params] if isinstance(params, torch.Tensor) else params
        return 0.5 * self.l2 * sum((p * p).sum() for p in tensors)

    def value(self, logits: torch.Tensor, y: torch.Tensor, params, weight: torch.Tensor | None = None) -> torch.Tensor:
        """``L(theta)`` on one batch: :meth:`data_mean` + :meth:`regulariser`."""
        return self.data_mean(logits, y, weight) + self.regulariser(params)
