"""Second-order group selection for MAX-TYPE objectives (issue 4): predict every component, minimise their max.

Why: these objectives are maxima (or spreads) of components (per-(group, label) positive rates, per-group rates,
per-group losses); removing the rows that lower the linearised active branch moves another component into the max
(docs/methods.md#second-order-group-influence). So every component is predicted with ONE model of the parameter
change, and the selection minimises a smooth max of them:

* :class:`GroupComponents` the components ``c(theta)`` (J,) of a max-type objective on a validation split, as
  differentiable functions of a flat parameter vector, with the exact aggregate (``hard``) and a smooth one
  (``soft``: log-sum-exp max / spread with ``sharpness``). Rates are ``mean sigmoid(logit p_pos / temperature)``:
  ``temperature=1`` is the mean predicted probability (the engine's smooth objectives), smaller temperatures
  approach the thresholded TPR / FPR / selection rates that fairness metrics report.
* :class:`ParameterChangeModel` the predicted parameter change when the rows with membership ``w`` (n,) are
  removed together, ``m = sum w`` fixed: first order ``c1 A^-1 G^T w`` or second order (Basu et al.,
  docs/methods.md) ``a1 A^-1 G^T w + a2 A^-1 H_w A^-1 G^T w`` with ``H_w = sum_i w_i Ht_i`` (scale conventions of
  :mod:`tda_clean.influence.group`), and the exact gradient of ``v^T dtheta(w)`` with respect to ``w``.
  Components are evaluated EXACTLY at ``theta* + dtheta(w)`` (a forward pass on the validation rows), so the
  only approximation is the parameter change (second order in the group, exact for the objective).
* :func:`minimax_select` the relaxed problem ``min soft(c(theta* + dtheta(w)))`` over ``w in [0,1]^n``,
  ``sum w = m``, by projected gradient descent, rounded to the top ``m``; the rounded set competes with the
  first-order top-m of the linearised soft objective (the set with the lower predicted ``hard`` value wins).

:class:`tda_clean.selection.group_selectors.GroupSecondOrderSelector` calls this in ROUNDS, refitting (warm
start) on the kept rows in between.

Costs per projected-gradient step: two Hessian-vector products of the ``w``-weighted training loss, one
forward-over-forward pass over the n training rows (per-row ``u^T Ht_i b``; nothing of size ``(n, p)``), four
solves with ``A`` and one forward/backward pass over the validation rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from tda_clean.errors import InputError

COMPONENT_OBJECTIVES = ("equalized_odds_gap", "demographic_parity_gap", "worst_group_loss")


class GroupComponents:
    """Components of a max-type objective on a query (validation) split, as functions of flat parameters.

    kind:        ``equalized_odds_gap`` (components: smoothed positive rate of every group x true label cell;
                 value: max over labels of the spread over groups), ``demographic_parity_gap`` (smoothed positive
                 rate of every group; value: spread) or ``worst_group_loss`` (mean cross-entropy of every group;
                 value: max).
    X, y, groups: the query rows (m, ...), labels (m,) and group keys (m,).
    positive:    the class whose rate is measured. temperature (> 0): rates are ``mean sigmoid(logit(p)/T)``.
    sharpness:   beta of the smooth max ``(1/beta) log sum exp(beta c)`` used by :meth:`soft` (rates are in
                 [0, 1]: 50 smooths over ~0.02).
    """

    def __init__(self, kind: str, X, y, groups, *, positive: int = 1, temperature: float = 1.0,
                 sharpness: float = 50.0):
        if kind not in COMPONENT_OBJECTIVES:
            raise InputError(f"components: objective {kind!r} is not max-type; expected one of "
                             f"{', '.join(COMPONENT_OBJECTIVES)}")
        if not temperature > 0:
            raise InputError(f"components: temperature must be > 0, got {temperature}")
        if not sharpness > 0:
            raise InputError(f"components: sharpness must be > 0, got {sharpness}")
        g = np.asarray(groups, dtype=object).reshape(-1)
        if len(g) != len(X) or (y is not None and len(y) != len(X)):
            raise InputError(f"components: {len(X)} query rows but {len(g)} group values"
                             + ("" if y is None else f" and {len(y)} labels"))
        keys = sorted(set(g.tolist()), key=str)
        if len(keys) < 2:
            raise InputError(f"components: needs at least two query groups, found {keys}")
        self.kind, self.positive = kind, int(positive)
        self.temperature, self.sharpness = float(temperature), float(sharpness)
        self.X = X
        self.y = None if y is None else np.asarray(y)
        cells, names, blocks = [], [], []
        if kind == "equalized_odds_gap":
            for label in np.unique(self.y):
                block = []
                for k in keys:
                    mask = (g == k) & (self.y == label)
                    if mask.any():
                        block.append(len(cells))
                        cells.append(mask)
                        names.append(f"{k}|y={label}")
                if len(block) >= 2:
                    blocks.append(block)
                else:  # a label seen in one group only has no spread
                    for j in block:
                        cells.pop(j), names.pop(j)
            if not blocks:
                raise InputError("components: no label value has rows in two or more groups")
        else:
            for k in keys:
                cells.append(g == k)
                names.append(str(k))
            blocks = [list(range(len(cells)))]
        W = np.stack(cells).astype(np.float64)
        self.weights = W / W.sum(1, keepdims=True)  # (J, m): row j averages cell j
        self.names, self.blocks = names, blocks

    # ----------------------------------------------------------------------------------------- values
    def components(self, space, theta: torch.Tensor) -> torch.Tensor:
        """(J,) components at the flat parameters ``theta`` of ``space`` (differentiable in ``theta``)."""
        X = torch.as_tensor(np.asarray(self.X), dtype=theta.dtype, device=theta.device)
        Wt = torch.as_tensor(self.weights, dtype=theta.dtype, device=theta.device)
        logits = space.forward(theta, X)
        if self.kind == "worst_group_loss":
            y = torch.as_tensor(self.y, dtype=torch.long, device=theta.device)
            return Wt @ F.cross_entropy(logits, y, reduction="none")
        logp = torch.log_softmax(logits, 1)
        pos = logp[:, self.positive]
        others = torch.cat([logp[:, : self.positive], logp[:, self.positive + 1:]], 1)
        logit = pos - torch.logsumexp(others, 1)  # log p / (1 - p)
        return Wt @ torch.sigmoid(logit / self.temperature)

    def _agg(self, c: torch.Tensor, smooth: bool) -> torch.Tensor:
        b = self.sharpness

        def smax(v):
            return torch.logsumexp(b * v, 0) / b if smooth else v.max()

        if self.kind == "worst_group_loss":
            return smax(c)
        spreads = torch.stack([smax(c[blk]) + smax(-c[blk]) for blk in self.blocks])
        return smax(spreads) if len(spreads) > 1 else spreads[0]

    def soft(self, c: torch.Tensor) -> torch.Tensor:
        """Smooth aggregate (log-sum-exp max / spread), differentiable."""
        return self._agg(c, smooth=True)

    def hard(self, c: torch.Tensor) -> float:
        """Exact aggregate: max over labels of (max - min) over groups, spread, or max."""
        return float(self._agg(c.detach(), smooth=False))

    def describe(self, c: torch.Tensor) -> dict[str, float]:
        return {name: float(v) for name, v in zip(self.names, c.detach().cpu())}


# ------------------------------------------------------------------------------------ parameter change
@dataclass
class _Cache:
    u: torch.Tensor  # A^-1 G^T w


class ParameterChangeModel:
    """Predicted ``theta_without_w - theta*`` as a function of a membership vector ``w`` (n,) with ``sum w = m``.

    ``gi`` a :class:`~tda_clean.influence.group.GroupInfluence`; ``order`` 1 or 2 (module docstring). For a 0/1
    ``w`` this equals ``gi.parameter_change([rows of w], order)``.
    """

    def __init__(self, gi, order: int = 2):
        if order not in (1, 2):
            raise InputError(f"order: expected 1 or 2, got {order!r}")
        self.gi, self.order = gi, order
        self.G = gi.row_gradients()  # (n, p)
        self.n = gi.n

    def _solve(self, v: torch.Tensor) -> torch.Tensor:
        return self.gi.solver.solve(v.reshape(1, -1))[0]

    def coef(self, m: float) -> tuple[float, float, float]:
        from tda_clean.influence.group_quadratic import coefficients

        c1, a1, a2 = coefficients(np.array([float(m)]), self.n)
        return float(c1[0]), float(a1[0]), float(a2[0])

    def change(self, w: torch.Tensor, m: float) -> tuple[torch.Tensor, _Cache]:
        """``(dtheta (p,), cache)`` for membership ``w`` (n,)."""
        w = w.to(self.G)
        c1, a1, a2 = self.coef(m)
        u = self._solve(self.G.T @ w)
        if self.order == 1:
            return c1 * u, _Cache(u)
        return a1 * u + a2 * self._solve(self.gi.weighted_hvp(w, u)[0]), _Cache(u)

    def pullback(self, w: torch.Tensor, m: float, v: torch.Tensor, cache: _Cache) -> torch.Tensor:
        """``d(v^T dtheta(w)) / dw`` (n,) with ``v`` held fixed (chain rule for a function of theta* + dtheta):
        ``G (a1 b + a2 A^-1 H_w b) + a2 (Ht_i u)^T b`` with ``b = A^-1 v``; first order: ``c1 G b``."""
        w = w.to(self.G)
        c1, a1, a2 = self.coef(m)
        b = self._solve(v.to(self.G))
        if self.order == 1:
            return c1 * (self.G @ b)
        Hb = self.gi.weighted_hvp(w, b)[0]  # H_w b
        return self.G @ (a1 * b + a2 * self._solve(Hb)) + a2 * self.gi.row_bilinear(cache.u, b)


# ------------------------------------------------------------------------------------------ selection
@dataclass
class MinimaxResult:
    """positions (m,) sorted; w (n,) relaxed solution; predicted (hard aggregate at theta* + dtheta of the
    chosen set); candidates {name: predicted hard value}; method (the winning candidate); scores (n,) the
    linearised per-row effect on the soft objective at the chosen set (higher = removing it lowers the objective
    more); components {name: predicted value} at the chosen set."""

    positions: np.ndarray
    w: np.ndarray
    predicted: float
    candidates: dict[str, float]
    method: str
    scores: np.ndarray
    components: dict[str, float]


def _indicator(pos: np.ndarray, n: int, like: torch.Tensor) -> torch.Tensor:
    w = torch.zeros(n, dtype=like.dtype, device=like.device)
    w[torch.as_tensor(pos, device=like.device)] = 1.0
    return w


def minimax_select(pcm: ParameterChangeModel, comps: GroupComponents, space, theta0: torch.Tensor, m: int, *,
                   pool: np.ndarray | None = None, iters: int = 100, lr: float = 0.5) -> MinimaxResult:
    """Choose exactly ``m`` rows of ``pool`` (bool (n,), default all) whose removal minimises the predicted
    max-type objective (module docstring). Deterministic (no random step)."""
    from tda_clean.influence.group_quadratic import _project_capped_simplex

    n = pcm.n
    pool = np.ones(n, dtype=bool) if pool is None else np.asarray(pool, dtype=bool)
    if pool.shape != (n,):
        raise InputError(f"minimax_select: pool has shape {pool.shape}, expected ({n},)")
    if not 1 <= m <= int(pool.sum()):
        raise InputError(f"budget: {m} rows requested but the candidate pool has {int(pool.sum())}")
    theta0 = theta0.detach()

    def evaluate(w: torch.Tensor, need_grad: bool):
        dtheta, cache = pcm.change(w, m)
        theta = (theta0 + dtheta.to(theta0)).detach().requires_grad_(need_grad)
        with torch.enable_grad() if need_grad else torch.no_grad():
            c = comps.components(space, theta)
            soft = comps.soft(c)
            g = None
            if need_grad:
                (v,) = torch.autograd.grad(soft, theta)
                g = pcm.pullback(w, m, v.detach(), cache).double().cpu()
        return c.detach(), float(soft.detach()), g

    like = pcm.G
    # first-order candidate: linearise the soft objective at w = 0 (every row scored alone)
    _, _, g0 = evaluate(torch.zeros(n, dtype=like.dtype, device=like.device), True)
    g0 = g0.numpy()
    first = _top_m(g0, pool, m)
    # relaxed projected gradient descent from the first-order set
    cap = torch.as_tensor(pool, dtype=torch.float64)
    w = _indicator(first, n, torch.zeros(1, dtype=torch.float64))
    for t in range(iters):
        _, _, g = evaluate(w.to(like), True)
        g = g - g[torch.as_tensor(pool)].mean()
        step = lr / (1 + t / 20) / max(float(g.abs().max()), 1e-300)
        w = _project_capped_simplex(w - step * g, m, cap)
    wn = w.numpy()
    order = np.lexsort((g0, -wn))  # ties: lower first-order score first
    order = order[pool[order]]
    relaxed = np.sort(order[:m])
    candidates = {"relaxed": relaxed, "first_order_topk": first}
    values, comp_values = {}, {}
    for name, pos in candidates.items():
        c, _, _ = evaluate(_indicator(pos, n, like), False)
        values[name], comp_values[name] = comps.hard(c), c
    method = min(values, key=values.get)
    chosen = candidates[method]
    _, _, g_end = evaluate(_indicator(chosen, n, like), True)
    return MinimaxResult(positions=chosen, w=wn, predicted=values[method], candidates=values, method=method,
                         scores=-g_end.numpy(), components=comps.describe(comp_values[method]))


def _top_m(g: np.ndarray, pool: np.ndarray, m: int) -> np.ndarray:
    """Sorted positions of the ``m`` pool rows with the lowest ``g`` (ties by position)."""
    return np.sort(np.argsort(np.where(pool, g, np.inf), kind="stable")[:m])


def first_order_select(pcm: ParameterChangeModel, comps: GroupComponents, space, theta0: torch.Tensor, m: int, *,
                       pool: np.ndarray | None = None) -> MinimaxResult:
    """First-order top-m for a max-type objective: the ``m`` pool rows whose removal lowers the LINEARISED smooth
    aggregate most (gradient at ``w = 0``, every row scored alone); ``predicted`` is the hard aggregate at
    ``theta* + dtheta`` of the set with ``pcm``'s order."""
    n = pcm.n
    pool = np.ones(n, dtype=bool) if pool is None else np.asarray(pool, dtype=bool)
    if not 1 <= m <= int(pool.sum()):
        raise InputError(f"budget: {m} rows requested but the candidate pool has {int(pool.sum())}")
    like = pcm.G
    zero = torch.zeros(n, dtype=like.dtype, device=like.device)
    dtheta, cache = pcm.change(zero, m)
    theta = (theta0.detach() + dtheta.to(theta0)).requires_grad_(True)
    with torch.enable_grad():
        (v,) = torch.autograd.grad(comps.soft(comps.components(space, theta)), theta)
    g0 = pcm.pullback(zero, m, v.detach(), cache).double().cpu().numpy()
    chosen = _top_m(g0, pool, m)
    dtheta, _ = pcm.change(_indicator(chosen, n, like), m)
    with torch.no_grad():
        c = comps.components(space, theta0.detach() + dtheta.to(theta0))
    value = comps.hard(c)
    return MinimaxResult(positions=chosen, w=_indicator(chosen, n, like).cpu().numpy(), predicted=value,
                         candidates={"first_order_topk": value}, method="first_order_topk", scores=-g0,
                         components=comps.describe(c))


def components_at(comps: GroupComponents, space, theta: torch.Tensor) -> tuple[float, dict[str, Any]]:
    """``(hard aggregate, {component: value})`` at ``theta`` (no gradient)."""
    with torch.no_grad():
        c = comps.components(space, theta.detach())
    return comps.hard(c), comps.describe(c)
