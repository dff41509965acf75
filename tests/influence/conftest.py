"""Tiny seeded float64 problems for the influence math tests."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tda_clean.models.factory import MLP, LogisticRegression, SmallCNN


def blobs(n: int = 40, d: int = 4, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs: X (n, d) float64, y (n,) int64."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centers = rng.normal(scale=1.5, size=(classes, d))
    return centers[y] + rng.normal(size=(n, d)), y.astype(np.int64)


def fit_convex(model: torch.nn.Module, X: np.ndarray, y: np.ndarray, l2: float, steps: int = 300) -> torch.nn.Module:
    """Train to the optimum of mean CE + l2/2 ||theta||^2 with full-batch L-BFGS in float64."""
    Xt, yt = torch.as_tensor(X), torch.as_tensor(y)
    opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=steps, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(Xt), yt) + 0.5 * l2 * sum((p * p).sum() for p in model.parameters())
        loss.backward()
        return loss

    opt.step(closure)
    return model.eval()


@pytest.fixture(scope="session")
def convex():
    """(model, X, y, l2): a trained float64 logistic regression on 40 rows, 4 features, 3 classes."""
    X, y = blobs()
    torch.manual_seed(0)
    model = LogisticRegression(4, 3).double()
    return fit_convex(model, X, y, l2=0.1), X, y, 0.1


@pytest.fixture(scope="session")
def mlp():
    """(model, X, y): a float64 MLP (4 -> 5 -> 3), lightly trained (non-convex)."""
    X, y = blobs(seed=1)
    torch.manual_seed(1)
    model = MLP(4, 3, (5,)).double()
    return fit_convex(model, X, y, l2=0.05, steps=20), X, y


@pytest.fixture(scope="session")
def cnn():
    """(model, X, y): a float64 SmallCNN on 12 random 1x6x6 images."""
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(12, 1, 6, 6)), rng.integers(0, 3, 12)
    torch.manual_seed(2)
    return SmallCNN((1, 6, 6), 3, (2, 3), 5).double().eval(), X, y
