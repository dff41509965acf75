"""Tiny float64 problems shared by the influence tests."""
from __future__ import annotations

import numpy as np
import torch

from tda_clean.config.influence import ExactSettings, InfluenceSpec
from tda_clean.models.trainer import fit_to_optimum


def blobs(n: int = 40, d: int = 4, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs: X (n, d) float64, y (n,) int64."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centers = rng.normal(scale=1.5, size=(classes, d))
    return centers[y] + rng.normal(size=(n, d)), y.astype(np.int64)


def fit_convex(model: torch.nn.Module, X: np.ndarray, y: np.ndarray, l2: float, steps: int = 300) -> torch.nn.Module:
    """Train to the optimum of mean CE + l2/2 ||theta||^2 with full-batch L-BFGS in float64."""
    return fit_to_optimum(model, X, y, l2, max_iter=steps, tolerance_grad=1e-12)


EXACT0 = InfluenceSpec(solver=ExactSettings(damping=0.0))  # exact solve, no damping, all parameters, model dtype
