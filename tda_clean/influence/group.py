"""Group influence, first and second order (Basu, You & Feizi 2020; docs/methods.md), batched over many groups.

Sign convention (as everywhere in tda-clean): a POSITIVE change of an objective f means that REMOVING the group
INCREASES f. Parameter changes are ``theta_without_U - theta*``.

Scale convention. The trainer minimises ``L(theta) = (1/n) sum_i lt_i(theta)`` with the per-row loss
``lt_i = CE_i + (l2/2) ||theta||^2`` (the L2 term belongs to every row, so retraining on ``n - m`` rows keeps the
same ``l2``). Over the engine's parameter subset, with ``A = H + damping I`` the engine's curvature:

* ``gt_i = g_i + l2 theta*``         per-row gradient of ``lt_i`` (``g_i`` = the engine's CE gradient), as in the
  engine's single-row scores ``a^T gt_i / (n - 1)`` (so first order = ``(n-1)/(n-m)`` x their sum over U);
  ``regularized_rows=False`` drops the ``l2 theta*`` part (the textbook form, for comparison);
* ``Ht_i = d2 CE_i + (l2 + damping) I``  per-row curvature, so that ``(1/n) sum_i Ht_i = A``;
* for a group U of ``m`` rows, ``p = m/n``, sums ``g_U = sum_U gt_i`` and ``H_U = sum_U Ht_i``:

    first order   dtheta1 = q A^-1 gbar_U                 = [1 / ((1-p) n)]      A^-1 g_U          (q = p/(1-p))
    second order  dtheta2 = dtheta1 + q^2 (A^-1 Hbar_U - I) A^-1 gbar_U
                          = [(1-2p) / ((1-p)^2 n)] A^-1 g_U + [1 / ((1-p)^2 n^2)] A^-1 H_U A^-1 g_U

  (the Newton step agrees with ``dtheta2`` to O(p^3), and the single-row case: docs/methods.md).

* objective change: ``df = grad f(theta*)^T dtheta``. With ``a = A^-1 grad f`` (one solve for the objective),
  ``s_i = a^T gt_i`` and ``r_i = Ht_i a`` (one per-row Hessian-vector product with the same vector for all rows):

    df1 = sum_U s_i / ((1-p) n)
    df2 = (1-2p)/((1-p)^2 n) sum_U s_i + 1/((1-p)^2 n^2) (sum_U r_i)^T A^-1 g_U

  so k groups cost one batched solve of ``(k, p)`` group gradients; ``df2`` is quadratic in the 0/1 membership
  vector.

* objective curvature ``Hf = d2 f(theta*)`` (needed for a change of f consistent to second order in p):
  :meth:`GroupInfluence.objective_change` reports ``first`` (Koh et al.: ``grad f^T dtheta1``), ``second_linear``
  (Basu et al.: ``grad f^T dtheta2``) and ``second`` = ``grad f^T dtheta2 + 1/2 dtheta2^T Hf dtheta2`` (the
  default second order). The selectors' :class:`~tda_clean.influence.group_quadratic.QuadraticGroupModel` uses
  ``df2 + 1/2 dtheta1^T Hf dtheta1``, quadratic in the membership vector and equal to ``second`` up to O(p^3).
  Max-type objectives: :mod:`tda_clean.influence.group_minimax`.

Exact for convex models with the exact solver (``damping=0`` for an L2 logistic regression trained to its
optimum); the CG / LiSSA / K-FAC solvers give the approximate version for other models.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.func import grad, jvp, vmap

from tda_clean.errors import InputError
from tda_clean.influence.curvature import hvp_mode, loss_hvps
from tda_clean.influence.estimators import InfluenceEngine
from tda_clean.influence.gradients import as_tensors
from tda_clean.influence.group_quadratic import QuadraticGroupModel, coefficients
from tda_clean.influence.objectives import Objective


# ------------------------------------------------------------------------------------------- groups in
def group_positions(groups: Any, n: int) -> list[np.ndarray]:
    """Normalise groups to a list of sorted unique int64 position arrays, validated against ``n`` rows.

    Accepts a (k, n) boolean mask, one (n,) boolean mask, a sequence of position arrays / boolean masks, or
    objects with a ``positions`` attribute (:class:`tda_clean.groups.Group`). Empty groups, out-of-range or
    duplicated positions and a group that is the whole training set raise :class:`InputError`.
    """
    if isinstance(groups, np.ndarray) and groups.dtype == bool:
        groups = [groups] if groups.ndim == 1 else list(groups)
    if isinstance(groups, torch.Tensor):
        groups = groups.cpu().numpy()
        groups = [groups] if groups.ndim == 1 else list(groups)
    out = []
    for j, g in enumerate(groups):
        name = getattr(g, "name", f"#{j}")
        pos = np.asarray(getattr(g, "positions", g))
        if pos.dtype == bool:
            if pos.shape != (n,):
                raise InputError(f"group {name}: boolean mask of shape {pos.shape}, expected ({n},)")
            pos = np.flatnonzero(pos)
        if pos.size and not np.issubdtype(pos.dtype, np.integer):
            raise InputError(f"group {name}: positions must be integers, got {pos.dtype}")
        pos = pos.astype(np.int64).reshape(-1)
        if pos.size == 0:
            raise InputError(f"group {name}: the group is empty")
        if pos.min() < 0 or pos.max() >= n:
            raise InputError(f"group {name}: positions must lie in [0, {n}), got range [{pos.min()}, {pos.max()}]")
        uniq = np.unique(pos)
        if len(uniq) != len(pos):
            raise InputError(f"group {name}: {len(pos) - len(uniq)} duplicated positions")
        if len(uniq) >= n:
            raise InputError(f"group {name}: the group is the whole training set ({n} rows); removing it leaves "
                             "nothing to train on")
        out.append(uniq)
    if not out:
        raise InputError("groups: no groups given")
    return out


def objective_value(objective: Objective, model) -> torch.Tensor:
    """Differentiable scalar value of ``objective`` at ``model`` (scalar objectives and ``reduce="mean"`` per-row
    objectives such as :class:`MeanLoss`)."""
    if hasattr(objective, "value"):
        return objective.value(model).reshape(())
    if getattr(objective, "reduce", None) == "mean" and hasattr(objective, "row_value"):
        X, t = as_tensors(model, objective.X, objective.targets)
        return vmap(objective.row_value)(model(X), t).mean()
    raise InputError(f"objective {getattr(objective, 'name', '?')!r}: curvature needs a scalar objective")


def objective_hvp(objective: Objective, space, V: torch.Tensor) -> torch.Tensor:
    """``Hf V`` (k, p): Hessian of a scalar objective w.r.t. the parameter subset times each row of ``V``."""
    params = space.tensors()
    out = []
    with torch.enable_grad():
        value = objective_value(objective, space.model)
        grads = torch.autograd.grad(value, params, create_graph=True, allow_unused=True)
        flat = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])
        for v in V:
            if not flat.requires_grad:  # objective linear in the subset
                out.append(torch.zeros_like(v))
                continue
            h = torch.autograd.grad(flat @ v.to(flat), params, retain_graph=True, allow_unused=True)
            out.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(h, params)]))
    return torch.stack(out).detach() if out else V.new_zeros(V.shape)


@dataclass(frozen=True)
class GroupInfluenceResult:
    """Predicted change of an objective when each group is removed (POSITIVE = removal INCREASES f).

    first:         (k, m) ``grad f^T dtheta1`` (Koh et al. first order).
    second_linear: (k, m) ``grad f^T dtheta2`` (Basu et al. second order, linear in f).
    second:        (k, m) ``grad f^T dtheta2 + 1/2 dtheta2^T Hf dtheta2`` (second order in p including f's own
                   curvature; equals ``second_linear`` when ``objective_curvature=False`` or m > 1).
    sizes (k,) rows per group. ``m`` = objective outputs (1 for scalar objectives).
    """

    first: np.ndarray
    second: np.ndarray
    sizes: np.ndarray
    objective: str
    info: dict[str, Any] = field(default_factory=dict)
    second_linear: np.ndarray | None = None


class GroupInfluence:
    """Group influence on top of a fitted :class:`InfluenceEngine` (its solver, parameters and training rows).

    ``regularized_rows`` (default True): per-row gradients include ``l2 theta*`` (retraining keeps ``l2``); see
    the module docstring for the scale convention. Per-row quantities are computed in row blocks of
    ``engine.spec.gradients.batch_size``; nothing of size (n, p) is kept unless :meth:`row_terms` is asked for.
    """

    def __init__(self, engine: InfluenceEngine, *, regularized_rows: bool = True):
        self.engine = engine
        self.regularized_rows = bool(regularized_rows)
        self.n = engine.n

    # ----------------------------------------------------------------------------------- pieces
    @property
    def solver(self):
        return self.engine.solver

    def _shift(self) -> float:
        """``l2 + damping``: the per-row curvature added to d2 CE_i."""
        return float(self.engine.loss.l2) + float(self.solver.damping_)

    def _reg_grad(self) -> torch.Tensor:
        theta = self.engine.loss.theta
        return (self.engine.loss.l2 * theta) if self.regularized_rows else torch.zeros_like(theta)

    def _row_blocks(self):
        """Yield ``(rows, X_rows, y_rows)`` tensor blocks of the training rows."""
        X, y = self.engine.loss.X, self.engine.loss.y
        bs = self.engine.spec.gradients.batch_size
        for start in range(0, self.n, bs):
            rows = slice(start, min(self.n, start + bs))
            yield rows, X[rows], y[rows]

    def _row_hvp_fn(self):
        space, theta = self.engine.space, self.engine.loss.theta

        def one(th, x, label):
            return self.engine.training.row(space.forward(th, x.unsqueeze(0))[0], label)

        g = grad(one)

        def row_hvp(v, x, label):  # d2 CE_i v for one row
            return jvp(lambda th: g(th, x, label), (theta,), (v,))[1]

        return row_hvp

    def row_gradients(self) -> torch.Tensor:
        """``Gt`` (n, p): per-row gradients ``gt_i`` (with ``l2 theta*`` when ``regularized_rows``)."""
        blocks = [G for _, G in self.engine.train_gradients()]
        return torch.cat(blocks) + self._reg_grad()

    def row_hvps(self, v: torch.Tensor) -> torch.Tensor:
        """``R`` (n, p): ``Ht_i v`` for every training row, same vector ``v`` (p,)."""
        fn = vmap(self._row_hvp_fn(), in_dims=(None, 0, 0))
        v = v.reshape(-1).to(self.engine.loss.theta)
        out = []
        with torch.no_grad():
            for _, Xb, yb in self._row_blocks():
                out.append(fn(v, Xb, yb) + self._shift() * v)
        return torch.cat(out)

    def weighted_hvp(self, w: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        """``H_w V`` (k, p): ``sum_i w_i Ht_i v`` for each row ``v`` of ``V`` (k, p), membership weights ``w`` (n,).

        Equals ``row_hvps(v).T @ w`` without the (n, p) matrix: one Hessian-vector product of the weighted loss
        ``sum_i w_i CE_i`` over the rows with ``w_i != 0``, plus ``sum(w) (l2 + damping) v``.
        """
        theta = self.engine.loss.theta
        w = w.reshape(-1).to(theta)
        V = V.reshape(-1, theta.numel()).to(theta)
        if w.shape[0] != self.n:
            raise InputError(f"weighted_hvp: {w.shape[0]} weights for {self.n} training rows")
        X, y = self.engine.loss.X, self.engine.loss.y
        space, training = self.engine.space, self.engine.training
        rows = torch.nonzero(w).reshape(-1)
        bs = max(self.engine.spec.gradients.batch_size, 4096)
        out = torch.zeros_like(V)
        for start in range(0, len(rows), bs):
            sub = rows[start : start + bs]
            Xb, yb, wb = X[sub.to(X.device)], y[sub.to(y.device)], w[sub]
            mode = "reverse" if len(V) == 1 else hvp_mode(space, len(sub))  # one vector: nothing to vectorise
            out += loss_hvps(lambda th: (wb * training.loss(space.forward(th, Xb), yb)).sum(), theta, V, mode)
        return out + float(w.sum()) * self._shift() * V

    def row_bilinear(self, u: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(n,): ``u^T Ht_i b`` for every training row, ``u``, ``b`` (p,).

        Equals ``row_hvps(u) @ b`` without the (n, p) matrix: per block of rows, a forward-over-forward product
        (``jvp`` along ``b`` of the per-row ``jvp`` along ``u`` of the per-row losses), plus ``(l2 + damping) u^T b``.
        """
        theta = self.engine.loss.theta
        u, b = u.reshape(-1).to(theta), b.reshape(-1).to(theta)
        space, training = self.engine.space, self.engine.training
        X, y = self.engine.loss.X, self.engine.loss.y
        bs = max(self.engine.spec.gradients.batch_size, 4096)
        out = []
        with torch.no_grad():
            for start in range(0, self.n, bs):
                Xb, yb = X[start : start + bs], y[start : start + bs]

                def along_u(th, Xb=Xb, yb=yb):
                    return jvp(lambda t: training.loss(space.forward(t, Xb), yb), (th,), (u,))[1]

                out.append(jvp(along_u, (theta,), (b,))[1])
        return torch.cat(out) + self._shift() * float(u @ b)

    def group_gradients(self, groups) -> tuple[torch.Tensor, np.ndarray]:
        """``(g_U (k, p), sizes (k,))``: per-group SUMS of ``gt_i``."""
        pos = group_positions(groups, self.n)
        M = self._membership(pos)
        theta = self.engine.loss.theta
        out = torch.zeros(len(pos), theta.numel(), dtype=theta.dtype, device=theta.device)
        for rows, G in self.engine.train_gradients():
            out += M[:, rows].to(G) @ G
        sizes = np.array([len(p) for p in pos])
        out += torch.as_tensor(sizes, dtype=out.dtype, device=out.device)[:, None] * self._reg_grad()[None]
        return out, sizes

    def group_hvp(self, groups, V: torch.Tensor) -> torch.Tensor:
        """``H_U v_U`` (k, p): group j's SUM of per-row curvatures ``Ht_i`` times its own vector ``V[j]``."""
        pos = group_positions(groups, self.n)
        V = V.to(self.engine.loss.theta)
        if V.shape[0] != len(pos):
            raise InputError(f"group_hvp: {len(pos)} groups but {V.shape[0]} vectors")
        X, y = self.engine.loss.X, self.engine.loss.y
        space, theta = self.engine.space, self.engine.loss.theta
        bs = max(self.engine.spec.gradients.batch_size, 4096)
        out = torch.zeros_like(V)
        for j, p in enumerate(pos):
            idx = torch.as_tensor(p, device=X.device)
            for start in range(0, len(idx), bs):
                sub = idx[start : start + bs]
                Xb, yb = X[sub], y[sub]
                out[j] += loss_hvps(lambda th: self.engine.training.data_sum(space.forward(th, Xb), yb),
                                    theta, V[j : j + 1], hvp_mode(space, len(sub)))[0]
            out[j] += len(p) * self._shift() * V[j]
        return out

    def _membership(self, pos: list[np.ndarray]) -> torch.Tensor:
        M = torch.zeros(len(pos), self.n, dtype=torch.bool)
        for j, p in enumerate(pos):
            M[j, torch.as_tensor(p)] = True
        return M.to(self.engine.loss.theta.device)

    # ------------------------------------------------------------------------------- answers
    def parameter_change(self, groups, order: int = 2) -> torch.Tensor:
        """Predicted ``theta_without_U - theta*`` (k, p), first (``order=1``) or second order (module docstring).

        Cost: one batched solve (first order), plus one group HVP and a second batched solve (second order).
        """
        if order not in (1, 2):
            raise InputError(f"order: expected 1 or 2, got {order!r}")
        gU, sizes = self.group_gradients(groups)
        U = self.solver.solve(gU)
        c1, a1, a2 = (torch.as_tensor(c, dtype=U.dtype, device=U.device)[:, None] for c in coefficients(sizes, self.n))
        if order == 1:
            return c1 * U
        W = self.solver.solve(self.group_hvp(groups, U))
        return a1 * U + a2 * W

    def newton_change(self, groups) -> torch.Tensor:
        """One Newton step from theta* on the objective without U: ``(A - p Hbar_U)^-1 p gbar_U`` (k, p).

        Needs the exact solver (builds ``A``); for tests and small models.
        """
        s = self.solver
        if not hasattr(s, "matrix_"):
            raise InputError("newton_change: needs the exact solver (it builds the full Hessian)")
        A = s.matrix_
        pos = group_positions(groups, self.n)
        gU, sizes = self.group_gradients(pos)
        p_ = s.p_
        out = []
        for j, p in enumerate(pos):
            eye = torch.eye(p_, dtype=gU.dtype, device=gU.device)
            HU = torch.cat([self.group_hvp([p], eye[k : k + 1]) for k in range(p_)]).to(A.dtype)
            HU = 0.5 * (HU + HU.T)
            out.append(torch.linalg.solve(A - HU / self.n, gU[j].to(A.dtype) / self.n))
        return torch.stack(out).to(gU.dtype)

    def query(self, objective: Objective) -> torch.Tensor:
        """``a = A^-1 grad f`` (m, p) for the objective's outputs."""
        return self.engine.inverse_hvp(objective)

    def objective_change(self, groups, objective: Objective, objective_curvature: bool = True,
                         dtheta2: torch.Tensor | None = None) -> GroupInfluenceResult:
        """Predicted change of each output of ``objective`` when each group is removed (first order, Basu's
        second order, and second order with the objective's curvature; see :class:`GroupInfluenceResult`). ``dtheta2`` (k, p) reuses
        :meth:`parameter_change` ``(groups, order=2)`` computed once for several objectives.

        Cost: one solve per objective output, one per-row HVP pass per output, one batched solve of the
        ``(k, p)`` group gradients; with ``objective_curvature`` (scalar objectives) also the group HVPs, a
        second batched solve and k objective HVPs.
        """
        pos = group_positions(groups, self.n)
        a = self.query(objective)
        gU, sizes = self.group_gradients(pos)
        U = self.solver.solve(gU)  # (k, p)
        c1, a1, a2 = coefficients(sizes, self.n)
        M = self._membership(pos)
        first = np.zeros((len(pos), a.shape[0]))
        second = np.zeros_like(first)
        for o in range(a.shape[0]):
            S = (gU @ a[o]).double().cpu().numpy()  # sum_U s_i
            R = self.row_hvps(a[o])  # (n, p)
            RU = M.to(R) @ R  # (k, p): H_U a
            cross = (RU * U).sum(1).double().cpu().numpy()
            first[:, o] = c1 * S
            second[:, o] = a1 * S + a2 * cross
        linear = second.copy()
        curved = bool(objective_curvature and a.shape[0] == 1)
        if curved:
            if dtheta2 is None:
                W = self.solver.solve(self.group_hvp(pos, U))
                a1t, a2t = (torch.as_tensor(c, dtype=U.dtype, device=U.device)[:, None] for c in (a1, a2))
                D2 = a1t * U + a2t * W
            else:
                D2 = dtheta2.to(U)
            HD = objective_hvp(objective, self.engine.space, D2)
            second[:, 0] += 0.5 * (D2 * HD).sum(1).double().cpu().numpy()
        return GroupInfluenceResult(first, second, sizes, getattr(objective, "name", "objective"),
                                    {**self.engine._info(), "regularized_rows": self.regularized_rows,
                                     "objective_curvature": curved}, second_linear=linear)

    def row_terms(self, objective: Objective, objective_curvature: bool = True) -> QuadraticGroupModel:
        """The quadratic model of a scalar objective's group change over all rows (for the selectors)."""
        a = self.query(objective)
        if a.shape[0] != 1:
            raise InputError(f"row_terms: objective {getattr(objective, 'name', '?')!r} has {a.shape[0]} outputs; "
                             "selection needs a scalar objective")
        G = self.row_gradients()
        R = self.row_hvps(a[0])
        s = G @ a[0]
        exact = hasattr(self.solver, "matrix_")
        space = self.engine.space
        Hf = None
        if objective_curvature:
            if exact:  # build Hf once (p objective HVPs); every later product is a matmul
                eye = torch.eye(space.p, dtype=G.dtype, device=G.device)
                Hmat = torch.cat([objective_hvp(objective, space, eye[i : i + 256]) for i in range(0, space.p, 256)])
                Hmat = 0.5 * (Hmat + Hmat.T)
                Hf = lambda V: V @ Hmat  # noqa: E731
            else:
                Hf = lambda V: objective_hvp(objective, space, V)  # noqa: E731
        diag = torch.zeros_like(s)
        diag_f = torch.zeros_like(s)
        if exact:
            AG = self.solver.solve(G)
            diag = (R * AG).sum(1)
            if Hf is not None:
                diag_f = (AG * Hf(AG)).sum(1)
        return QuadraticGroupModel(s=s.double(), G=G, R=R, diag=diag.double(), solver=self.solver, n=self.n,
                                   Hf=Hf, diag_f=diag_f.double())

