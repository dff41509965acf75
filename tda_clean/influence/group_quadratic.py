"""The quadratic model of a scalar objective's group change in the 0/1 membership vector, and its optimisers.

Built by :meth:`tda_clean.influence.group.GroupInfluence.row_terms` and used by the group selectors
(:mod:`tda_clean.selection.group_selectors`) to pick a group of ``m`` rows. Same conventions as
:mod:`tda_clean.influence.group` (its module docstring has the derivation): a POSITIVE value means that REMOVING
the rows INCREASES the objective f; ``w`` (n,) is the membership vector over the ``n`` training rows, ``p`` the
size of the parameter subset, ``A = H + damping I`` the engine's curvature, ``a = A^-1 grad f`` (p,), ``gt_i`` and
``Ht_i`` the per-row gradient and curvature (with the ``l2`` term) and ``(c1, a1, a2)`` the first- and
second-order coefficients of the group size ``m`` (:func:`coefficients`). The
optimisers (:meth:`QuadraticGroupModel.greedy`, :meth:`QuadraticGroupModel.relaxed`) MINIMISE the model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tda_clean.errors import InputError


def coefficients(m, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(c1, a1, a2)`` per group size ``m`` (array): first-order ``1/((1-p)n)``, second-order
    ``(1-2p)/((1-p)^2 n)`` and ``1/((1-p)^2 n^2)`` (module docstring)."""
    m = np.asarray(m, dtype=float)
    p = m / n
    return 1.0 / ((1 - p) * n), (1 - 2 * p) / ((1 - p) ** 2 * n), 1.0 / ((1 - p) ** 2 * n * n)


@dataclass
class QuadraticGroupModel:
    """Predicted change of a scalar objective as a function of a membership vector ``w`` (n,), at a FIXED
    group size ``m`` (the budget): ``Q(w) = a1 s^T w + a2 (R^T w)^T A^-1 (G^T w) + (c1^2/2) u^T Hf u`` with
    ``u = A^-1 G^T w`` (coefficients of ``m``; the last term is the objective's curvature along dtheta1).

    s (n,) = ``a^T gt_i``; G (n, p) = ``gt_i``; R (n, p) = ``Ht_i a``; diag (n,) = ``r_i^T A^-1 gt_i`` (zero when
    the solver is not exact: a 1/m-relative term). For 0/1 ``w`` with ``sum(w) = m`` this is exactly
    :meth:`~tda_clean.influence.group.GroupInfluence.objective_change`'s second order.
    """

    s: torch.Tensor
    G: torch.Tensor
    R: torch.Tensor
    diag: torch.Tensor
    solver: Any
    n: int
    Hf: Any = None  # V (k, p) -> Hf V, the objective's Hessian; None = f taken as linear
    diag_f: torch.Tensor | None = None  # (n,) (A^-1 gt_i)^T Hf (A^-1 gt_i) when exact

    def coef(self, m: int) -> tuple[float, float, float]:
        """``(c1, a1, a2)`` at group size ``m`` (:func:`coefficients`)."""
        c1, a1, a2 = coefficients(np.array([m]), self.n)
        return float(c1[0]), float(a1[0]), float(a2[0])

    def _uv(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = w.to(self.G)
        X = self.solver.solve(torch.stack([self.G.T @ w, self.R.T @ w]))
        return X[0], X[1]  # u = A^-1 g_w, v = A^-1 H_w a

    def _hf(self, u: torch.Tensor) -> torch.Tensor:
        return self.Hf(u[None])[0] if self.Hf is not None else torch.zeros_like(u)

    def value(self, w: torch.Tensor, m: int, order: int = 2) -> float:
        """``Q(w)`` (``order=2``) or its first-order part ``c1 s^T w``."""
        c1, a1, a2 = self.coef(m)
        sw = float(self.s @ w.to(self.s))
        if order == 1:
            return c1 * sw
        u, v = self._uv(w)
        return a1 * sw + a2 * float((self.R.T @ w.to(self.R)) @ u) + 0.5 * c1 * c1 * float(u @ self._hf(u))

    def gradient(self, w: torch.Tensor, m: int) -> torch.Tensor:
        """``dQ/dw`` (n,) = ``a1 s + a2 (R u + G v) + c1^2 G A^-1 Hf u``."""
        c1, a1, a2 = self.coef(m)
        u, v = self._uv(w)
        return a1 * self.s + (a2 * (self.R @ u + self.G @ v) + c1 * c1 * (self.G @ self._ainv_hf(u))).double()

    def _ainv_hf(self, u: torch.Tensor) -> torch.Tensor:
        if self.Hf is None:
            return torch.zeros_like(u)
        return self.solver.solve(self._hf(u)[None])[0]

    def contributions(self, w: torch.Tensor, m: int) -> np.ndarray:
        """(n,) per-row share of ``Q(w)``: ``a1 s_i + (a2/2)(r_i^T u + gt_i^T v) + (c1^2/2) gt_i^T A^-1 Hf u``;
        sums to Q(w) over ``w``'s rows (weighted by w)."""
        c1, a1, a2 = self.coef(m)
        u, v = self._uv(w)
        out = a1 * self.s + (0.5 * a2 * (self.R @ u + self.G @ v) + 0.5 * c1 * c1 * (self.G @ self._ainv_hf(u))).double()
        return out.cpu().numpy()

    # ------------------------------------------------------------------------------ optimisers
    def greedy(self, m: int, steps: int = 50, init: np.ndarray | None = None,
               candidates: np.ndarray | None = None) -> np.ndarray:
        """Greedy MINIMISATION of Q over sets of exactly ``m`` rows: ``steps`` rounds, each adding the
        ``ceil(m/steps)`` rows with the smallest exact marginal change (second-order re-scoring, diagonal
        included when exact). ``candidates`` (bool (n,)) restricts the pool. Returns sorted positions."""
        n = self.n
        pool = np.ones(n, dtype=bool) if candidates is None else candidates.copy()
        if int(pool.sum()) < m:
            raise InputError(f"budget: {m} rows requested but the candidate pool has {int(pool.sum())}")
        w = torch.zeros(n, dtype=self.G.dtype, device=self.G.device)
        chosen = np.zeros(n, dtype=bool)
        if init is not None:
            w[torch.as_tensor(init)] = 1.0
            chosen[init] = True
        b = max(1, int(np.ceil((m - chosen.sum()) / max(1, steps))))
        c1, a1, a2 = self.coef(m)
        diag_f = torch.zeros_like(self.s) if self.diag_f is None else self.diag_f
        while chosen.sum() < m:
            u, v = self._uv(w)
            marg = (a1 * self.s + (a2 * (self.R @ u + self.G @ v + self.diag.to(self.G))
                                   + c1 * c1 * (self.G @ self._ainv_hf(u))).double()
                    + 0.5 * c1 * c1 * diag_f).cpu().numpy()
            marg[chosen | ~pool] = np.inf
            take = min(b, m - int(chosen.sum()))
            idx = np.argpartition(marg, take - 1)[:take] if take < len(marg) else np.arange(len(marg))
            idx = idx[np.isfinite(marg[idx])]
            chosen[idx] = True
            w[torch.as_tensor(idx)] = 1.0
        return np.flatnonzero(chosen)

    def relaxed(self, m: int, iters: int = 200, lr: float = 0.5, init: np.ndarray | None = None,
                candidates: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Relaxed quadratic (docs/methods.md): minimise Q(w) over ``w in [0,1]^n, sum w = m`` by projected
        gradient descent (step normalised by the largest gradient entry, decaying), then round to the top ``m``.
        Returns ``(positions (m,), w (n,))``."""
        n = self.n
        pool = np.ones(n, dtype=bool) if candidates is None else candidates
        if int(pool.sum()) < m:
            raise InputError(f"budget: {m} rows requested but the candidate pool has {int(pool.sum())}")
        cap = torch.as_tensor(pool, dtype=torch.float64)
        w = torch.zeros(n, dtype=torch.float64)
        if init is not None:
            w[torch.as_tensor(init)] = 1.0
        else:
            w = cap * (m / float(cap.sum()))
        for t in range(iters):
            g = self.gradient(w, m).cpu()
            g = g - g[pool].mean() if pool.any() else g
            step = lr / (1 + t / 20) / max(float(g.abs().max()), 1e-300)
            w = _project_capped_simplex(w - step * g, m, cap)
        order = np.lexsort((self.s.cpu().numpy(), -w.numpy()))  # ties: smaller first-order s first
        order = order[pool[order]]
        return np.sort(order[:m]), w.numpy()


def _project_capped_simplex(x: torch.Tensor, m: int, cap: torch.Tensor) -> torch.Tensor:
    """Euclidean projection onto ``{w : 0 <= w <= cap, sum w = m}`` (cap in {0, 1}) by bisection on the shift."""
    lo, hi = float(x.min()) - 1.0, float(x.max())
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        total = float(torch.minimum(torch.clamp(x - mid, min=0), cap).sum())
        if total > m:
            lo = mid
        else:
            hi = mid
    return torch.minimum(torch.clamp(x - 0.5 * (lo + hi), min=0), cap)
