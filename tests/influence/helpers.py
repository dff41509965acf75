"""Tiny float64 problems shared by the influence tests."""
from __future__ import annotations

import numpy as np
import torch

from tda_clean.config.influence import ExactSettings, InfluenceSpec
from tda_clean.influence import MeanLoss
from tda_clean.models.factory import LogisticRegression
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


def newton(Xa: torch.Tensor, y: torch.Tensor, W: torch.Tensor, l2: float, iters: int = 30) -> torch.Tensor:
    """argmin_W mean CE(Xa W^T, y) + l2/2 ||W||^2 for W (C, d+1) (last column = bias), Xa (n, d+1) with ones:
    Newton's method in float64 from ``W`` (a warm start), until the largest step entry is below 1e-10."""
    n, D = Xa.shape
    C = W.shape[0]
    for _ in range(iters):
        P = torch.softmax(Xa @ W.T, 1)
        R = P.clone()
        R[torch.arange(n), y] -= 1
        g = R.T @ Xa / n + l2 * W
        H = torch.zeros(C, D, C, D, dtype=Xa.dtype)
        for a in range(C):
            for b in range(C):
                w = P[:, a] * (float(a == b) - P[:, b])
                H[a, :, b, :] = (Xa * w[:, None]).T @ Xa / n
        H = H.reshape(C * D, C * D) + l2 * torch.eye(C * D, dtype=Xa.dtype)
        step = torch.linalg.solve(H, g.reshape(-1)).reshape(C, D)
        W = W - step
        if float(step.abs().max()) < 1e-10:
            break
    return W


def sklearn_split(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A scikit-learn data set (``iris``, ``wine``, ``breast_cancer`` or ``breast_cancer_mean``: its ten "mean"
    features), shuffled (seed 0), split 70/30 and standardised with the training part's statistics:
    ``(X_train, y_train, X_test, y_test)`` float64 / int64."""
    from sklearn import datasets

    loader = {"iris": datasets.load_iris, "wine": datasets.load_wine}.get(name, datasets.load_breast_cancer)
    X, y = loader(return_X_y=True)
    if name == "breast_cancer_mean":
        X = X[:, :10]
    order = np.random.default_rng(0).permutation(len(y))
    X, y = X[order], y[order].astype(np.int64)
    k = int(0.7 * len(y))
    mu, sd = X[:k].mean(0), X[:k].std(0)
    X = (X - mu) / sd
    return X[:k], y[:k], X[k:], y[k:]


class ConvexProblem:
    """L2 logistic regression (weights and bias, float64) on :func:`sklearn_split` ``name``, minimised by
    :func:`newton`; ``actual(rows)`` retrains without ``rows`` (warm start) and returns the change of the mean
    test loss. ``model`` is the trained model, ``objective`` the mean test loss (:class:`MeanLoss`)."""

    def __init__(self, name: str, l2: float):
        self.X, self.y, self.Xt, self.yt = sklearn_split(name)
        self.l2 = l2
        self.Xa = torch.cat([torch.as_tensor(self.X), torch.ones(len(self.X), 1, dtype=torch.float64)], 1)
        self.ya = torch.as_tensor(self.y)
        C = int(self.y.max()) + 1
        self.W = newton(self.Xa, self.ya, torch.zeros(C, self.Xa.shape[1], dtype=torch.float64), l2, iters=100)
        self.model = LogisticRegression(self.X.shape[1], C).double().eval()
        with torch.no_grad():
            self.model.head.weight.copy_(self.W[:, :-1])
            self.model.head.bias.copy_(self.W[:, -1])
        self.objective = MeanLoss(self.Xt, self.yt)
        self.base = self.test_loss(self.W)

    def test_loss(self, W: torch.Tensor) -> float:
        logits = torch.as_tensor(self.Xt) @ W[:, :-1].T + W[:, -1]
        return float(torch.nn.functional.cross_entropy(logits, torch.as_tensor(self.yt)))

    def actual(self, removed: np.ndarray) -> float:
        """Change of the test loss when the rows ``removed`` are left out and the model is retrained."""
        keep = torch.ones(len(self.y), dtype=torch.bool)
        keep[torch.as_tensor(removed)] = False
        return self.test_loss(newton(self.Xa[keep], self.ya[keep], self.W.clone(), self.l2, iters=100)) - self.base
