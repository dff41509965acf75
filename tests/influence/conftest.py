"""Tiny seeded float64 problems for the influence math tests."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tda_clean.models.factory import MLP, LogisticRegression, SmallCNN
from tests.influence.helpers import blobs, fit_convex


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
