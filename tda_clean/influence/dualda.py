"""DualDA (docs/methods.md): a Crammer-Singer multiclass SVM surrogate on penultimate features, explained by its dual.

Primal (no bias):  min_W  1/2 ||W||_F^2 + C sum_i max_c (1[c != y_i] + w_c.phi_i - w_{y_i}.phi_i)
Dual (solved here, as in LIBLINEAR's MCSVM_CS):

    min_alpha  1/2 sum_c ||w_c||^2 + sum_{i,c} 1[c != y_i] alpha_i^c     with  w_c = sum_i alpha_i^c phi_i
    s.t.       alpha_i^c <= C 1[c = y_i],  sum_c alpha_i^c = 0            (so alpha_i^{y_i} >= 0, the others <= 0)

solved by accelerated projected gradient (FISTA) with an exact per-row projection, stopped on the relative
duality gap. Rows with ``alpha_i = 0`` are not support vectors; C sets how many there are (attribution sparsity).

Attribution of class c on a query x to training row i:  ``a_i = alpha_i^c <phi(x), phi(x_i)>``, and
``sum_i a_i = w_c . phi(x)`` -- the surrogate's logit (no bias) -- exactly, by construction.
Sign: ``a_i > 0`` means row i pushes the class-c logit UP, so removing it (zeroing alpha_i, a first-order view)
LOWERS that logit; in the project's removal convention the influence on the logit is ``-a_i``.
Self-influence for mislabel ranking: ``||phi(x_i)||^2 alpha_i^{y_i}``.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tda_clean.errors import InputError
from tda_clean.influence.gradients import as_tensors
from tda_clean.config.influence import DualDASettings


def model_features(model: nn.Module, X, batch_size: int = 1024) -> np.ndarray:
    """Penultimate features ``model.features(X)`` as float64 numpy, shape (n, d)."""
    if not hasattr(model, "features"):
        raise InputError(f"DualDA: {type(model).__name__} has no features(x) method (penultimate layer)")
    model.eval()
    out = []
    with torch.no_grad():
        for a in range(0, len(X), batch_size):
            Xt, _ = as_tensors(model, X[a : a + batch_size])
            out.append(model.features(Xt).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def project_rows(Z: np.ndarray, U: np.ndarray) -> np.ndarray:
    """Row-wise Euclidean projection onto ``{a : a <= U_row, sum(a) = 0}``: ``a = min(U, Z - tau)`` per row.

    Z, U: (n, C). For each row the number k of coordinates clamped at U is tried for every k (largest Z - U first)
    and the tau with zero row sum is kept.
    """
    n, C = Z.shape
    order = np.argsort(-(Z - U), axis=1)
    Zs, Us = np.take_along_axis(Z, order, 1), np.take_along_axis(U, order, 1)
    cz = np.concatenate([np.zeros((n, 1)), np.cumsum(Zs, 1)[:, :-1]], 1)  # sum of the k clamped Z's
    cu = np.concatenate([np.zeros((n, 1)), np.cumsum(Us, 1)[:, :-1]], 1)
    tau = (Zs.sum(1, keepdims=True) - cz + cu) / (C - np.arange(C))[None, :]  # (n, k)
    cand = np.minimum(U[:, None, :], Z[:, None, :] - tau[:, :, None])  # (n, k, C)
    best = np.abs(cand.sum(2)).argmin(1)
    return cand[np.arange(n), best]


class DualDA:
    """Crammer-Singer SVM surrogate with dual attributions (see module docstring).

    After ``fit``: ``alpha_`` (n, C) dual variables, ``W_`` (C, d) = ``alpha_.T @ features_``, ``features_`` (n, d),
    ``support_`` (n,) bool (rows with a non-zero dual row), ``duality_gap_`` (relative), ``n_iter_``.
    """

    def __init__(self, settings: DualDASettings = DualDASettings()):
        self.settings = settings

    @classmethod
    def from_model(cls, model: nn.Module, X, y, settings: DualDASettings = DualDASettings(),
                   n_classes: int | None = None) -> "DualDA":
        """Fit on ``model.features(X)``; the model is only read."""
        self = cls(settings)
        self.model_ = model
        return self.fit(model_features(model, X, settings.batch_size), y, n_classes)

    def fit(self, features: np.ndarray, y: np.ndarray, n_classes: int | None = None) -> "DualDA":
        Phi = np.asarray(features, dtype=np.float64)
        y = np.asarray(y).astype(np.int64)
        if Phi.ndim != 2 or len(Phi) != len(y) or len(y) == 0:
            raise InputError(f"DualDA.fit: expected features (n, d) and labels (n,), got {Phi.shape} and {y.shape}")
        if not np.isfinite(Phi).all():
            rows = np.flatnonzero(~np.isfinite(Phi).all(1))[:10].tolist()
            raise InputError(f"DualDA.fit: features are NaN/inf for row positions {rows}")
        C = int(n_classes or (y.max() + 1))
        if y.min() < 0 or y.max() >= C:
            raise InputError(f"DualDA.fit: labels must lie in 0..{C - 1}")
        n = len(y)
        s = self.settings
        onehot = np.eye(C)[y]
        U, E = s.C * onehot, 1.0 - onehot
        L = max(np.linalg.norm(Phi, 2) ** 2, 1e-12)
        alpha = np.zeros((n, C))
        beta, t = alpha.copy(), 1.0
        gap, it = np.inf, 0
        for it in range(1, s.max_iter + 1):
            grad = Phi @ (beta.T @ Phi).T + E
            new = project_rows(beta - grad / L, U)
            t_next = (1 + np.sqrt(1 + 4 * t * t)) / 2
            beta = new + ((t - 1) / t_next) * (new - alpha)
            alpha, t = new, t_next
            if it % 10 == 0 or it == s.max_iter:
                gap = self._gap(alpha, Phi, y, E, s.C)
                if gap <= s.tol:
                    break
        alpha[np.abs(alpha) < 1e-12 * s.C] = 0.0
        self.alpha_, self.features_, self.y_, self.n_classes_ = alpha, Phi, y, C
        self.W_ = alpha.T @ Phi
        self.support_ = np.abs(alpha).max(1) > 0
        self.duality_gap_, self.n_iter_ = float(gap), it
        return self

    @staticmethod
    def _gap(alpha, Phi, y, E, Cbox) -> float:
        W = alpha.T @ Phi
        scores = Phi @ W.T
        hinge = (E + scores - scores[np.arange(len(y)), y][:, None]).max(1)
        primal = 0.5 * (W * W).sum() + Cbox * hinge.sum()
        dual = -(0.5 * (W * W).sum() + (E * alpha).sum())  # maximisation form
        return float((primal - dual) / max(abs(primal), 1e-12))

    # ------------------------------------------------------------------------------ explanations
    def _check(self) -> None:
        if not hasattr(self, "alpha_"):
            raise RuntimeError("DualDA is not fitted: call fit(features, y) or DualDA.from_model(...)")

    def query_features(self, X) -> np.ndarray:
        """Penultimate features of raw inputs (only for ``from_model`` surrogates)."""
        self._check()
        if not hasattr(self, "model_"):
            raise InputError("DualDA: fitted on features; pass features to attribute(...)")
        return model_features(self.model_, X, self.settings.batch_size)

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        """Surrogate logits (m, C) = ``features @ W_.T`` (no bias)."""
        self._check()
        return np.asarray(features, dtype=np.float64) @ self.W_.T

    def attribute(self, features: np.ndarray, target) -> np.ndarray:
        """(m, n) attributions ``a[j, i] = alpha_[i, c_j] <phi_j, phi_i>``; rows sum to the class-c_j surrogate logit.

        ``target``: one class id or (m,) class ids (e.g. the model's predictions).
        """
        self._check()
        F = np.asarray(features, dtype=np.float64)
        c = np.full(len(F), int(target)) if np.isscalar(target) else np.asarray(target, dtype=np.int64)
        if len(c) != len(F):
            raise InputError(f"DualDA.attribute: {len(F)} query rows but {len(c)} targets")
        if len(c) and (c.min() < 0 or c.max() >= self.n_classes_):
            raise InputError(f"DualDA.attribute: target classes must lie in 0..{self.n_classes_ - 1}")
        return (F @ self.features_.T) * self.alpha_[:, c].T

    def self_influence(self) -> np.ndarray:
        """(n,) ``||phi_i||^2 alpha_i^{y_i}`` (high = a support vector the surrogate leans on; mislabel ranking)."""
        self._check()
        return (self.features_ ** 2).sum(1) * self.alpha_[np.arange(len(self.y_)), self.y_]
