"""XDA (docs/methods.md#xda-why-a-training-row-is-relevant): why a training row is relevant to some queries, in
terms of the row's own input features.

A *relevance function* ``R(x)`` maps a training input ``x`` (the row's feature shape, e.g. ``(d,)`` or
``(C, H, W)``) to a scalar; everything else (model, curvature, queries, the row's label and dual variables) is held
fixed, and ``R(x_i)`` is the attribution score being explained. Two are built here:

- :func:`influence_relevance`: ``R(x) = (g(x, y_i) + l2 theta*)^T u / (n - 1)`` with ``u = A^-1 sum_j s_j q_j``, ``g`` the per-row
  loss gradient over the engine's parameter subset, ``q_j`` the query rows' loss gradients and ``s_j = sign`` of
  the influence of row i on query j (the review's removal influence, :func:`query_influence`). So
  ``R(x_i) = sum_j |infl_ij| >= 0``.
- :func:`dualda_relevance`: ``R(x) = sum_j s_j alpha_i^{c_j} <phi(x), phi(v_j)>`` (DualDA's attribution of query
  j's class ``c_j`` to row i, ``phi`` the penultimate features), again ``R(x_i) = sum_j |a_ji|``.

:func:`top_query_relevances` / :func:`top_query_dualda_relevances` build them for k training rows at once, each on
the queries it moves most.

:func:`integrated_gradients` decomposes ``R(x_i) - R(b)`` over the input features, ``b`` a baseline row (the
training mean): ``e = (x_i - b) * mean_t grad R(b + t (x_i - b))`` over ``steps`` midpoints ``t`` of [0, 1]; the
sum of ``e`` tends to ``R(x_i) - R(b)`` as ``steps`` grows (``completeness`` reports the gap).
Sign of ``e_k``: positive = feature k's value (against the baseline) makes the row MORE relevant to those
queries, so setting it to the baseline lowers ``R``; negative = it works against the relevance.
:func:`deletion_curve` checks that: ``R`` as growing fractions of the features, taken in a given order, are set to
the baseline.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from tda_clean.errors import InputError
from tda_clean.influence.params import ParamSpace

#: ``R``: a batch of training inputs ``(k, *shape)`` -> ``(k,)`` relevance values, differentiable in the inputs.
Relevance = Callable[[torch.Tensor], torch.Tensor]


def influence_relevance(space: ParamSpace, u: torch.Tensor, label: int, scale: float, offset: float = 0.0,
                        ) -> Relevance:
    """``R(x) = scale * (grad_theta CE(f(x; theta), label) . u + offset)`` for each row of a batch ``x``
    (k, *shape) -> (k,).

    ``u`` (p,): the inverse-curvature-weighted query direction ``A^-1 sum_j s_j q_j`` over ``space``; ``scale``:
    ``1 / (n - 1)`` for the removal form; ``offset``: the regulariser share ``l2 theta* . u`` (constant in ``x``).
    """
    theta = space.flat()
    u = u.to(theta)

    def relevance(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device=theta.device, dtype=theta.dtype)  # differentiable: gradients flow back to the caller's x
        target = torch.full((len(x),), int(label), dtype=torch.long, device=theta.device)
        return scale * (_per_row_directional(space, theta, u, x, target) + offset)

    return relevance


def _per_row_directional(space: ParamSpace, theta: torch.Tensor, u: torch.Tensor, x: torch.Tensor,
                         target: torch.Tensor) -> torch.Tensor:
    """``(k,)`` ``g(x_r) . u`` = the derivative of row r's loss along ``u`` in parameter space (forward mode)."""
    from torch.func import jvp

    def losses(th: torch.Tensor) -> torch.Tensor:
        logits = space.forward(th, x)
        return torch.nn.functional.cross_entropy(logits, target, reduction="none")

    return jvp(losses, (theta,), (u,))[1]


def query_influence(engine, X_rows, y_rows, X_query, y_query) -> tuple[np.ndarray, torch.Tensor]:
    """``(S, Q)``: ``S`` (k, m) the removal influence ``q_j^T A^-1 (g_i + l2 theta*) / (n - 1)`` of each of k
    training rows on each query row's loss (the engine's removal form and sign: positive = removing the row
    INCREASES that loss); ``Q`` (m, p) the query rows' loss gradients over the engine's parameter subset."""
    from tda_clean.influence.gradients import per_sample_grads
    from tda_clean.influence.objectives import PerSampleLoss

    G = per_sample_grads(engine.space, X_rows, y_rows)  # (k, p)
    Q = PerSampleLoss(X_query, y_query).query_gradients(engine.space, engine.spec.gradients.memory_mb)  # (m, p)
    G = G + engine.regulariser_gradient().to(G)
    S = (engine.solver.solve(G) @ Q.T).double().cpu().numpy() * engine.removal_scale()  # A symmetric
    return S, Q


def top_query_relevances(engine, X_rows, y_rows, X_query, y_query, top: int = 3,
                         ) -> tuple[list[Relevance], np.ndarray, np.ndarray]:
    """For each training row (k rows ``X_rows``, ``y_rows``): its :func:`influence_relevance` on the ``top`` query
    rows it influences most. ``engine``: a fitted-or-not :class:`InfluenceEngine`.

    Returns ``(relevances, S, top_idx)``: ``S`` (k, m) from :func:`query_influence` (the review's
    ``most_influenced_val_rows``), ``top_idx`` (k, top) by ``|S|``.
    """
    S, Q = query_influence(engine, X_rows, y_rows, X_query, y_query)
    top_idx = np.argsort(-np.abs(S), axis=1)[:, :top]
    signs = torch.as_tensor(np.sign(np.take_along_axis(S, top_idx, 1))).to(Q)
    U = engine.solver.solve(torch.stack([signs[r] @ Q[top_idx[r]] for r in range(len(S))])) if len(S) else Q[:0]
    offsets = (U @ engine.regulariser_gradient().to(U)).tolist() if len(S) else []
    relevances = [influence_relevance(engine.space, U[r], int(y), engine.removal_scale(), offsets[r])
                  for r, y in enumerate(np.asarray(y_rows))]
    return relevances, S, top_idx


def dualda_relevance(model: torch.nn.Module, alpha_row: np.ndarray, query_features: np.ndarray,
                     query_classes: np.ndarray, signs: np.ndarray) -> Relevance:
    """``R(x) = sum_j signs_j alpha_row[c_j] <model.features(x), phi_j>`` (k, *shape) -> (k,).

    alpha_row (C,): the row's DualDA dual variables; query_features (m, d); query_classes, signs (m,).
    """
    weights = np.asarray(signs, float) * np.asarray(alpha_row, float)[np.asarray(query_classes, int)]  # (m,)
    direction = torch.as_tensor(weights @ np.asarray(query_features, float))

    def relevance(x: torch.Tensor) -> torch.Tensor:
        param = next(model.parameters())
        phi = model.features(x.to(device=param.device, dtype=param.dtype))
        return phi.to(direction.dtype) @ direction.to(phi.device)

    return relevance


def top_query_dualda_relevances(dualda, rows: np.ndarray, query_features: np.ndarray, query_classes: np.ndarray,
                                top: int = 3) -> tuple[list[Relevance], np.ndarray, np.ndarray]:
    """For each training row position in ``rows`` (k,): its :func:`dualda_relevance` on the ``top`` queries whose
    class-``c_j`` logit it moves most. ``dualda``: a :class:`DualDA` fitted with ``from_model``.

    Returns ``(relevances, A, top_idx)``: ``A`` (k, m) the DualDA attributions ``a_ji`` (positive = the row pushes
    query j's class-``c_j`` logit up), ``top_idx`` (k, top) by ``|A|``.
    """
    A = dualda.attribute(query_features, query_classes)[:, rows].T  # (k, m)
    top_idx = np.argsort(-np.abs(A), axis=1)[:, :top]
    relevances = [dualda_relevance(dualda.model_, dualda.alpha_[i], query_features[top_idx[r]],
                                   np.asarray(query_classes)[top_idx[r]], np.sign(A[r, top_idx[r]]))
                  for r, i in enumerate(rows)]
    return relevances, A, top_idx


def integrated_gradients(relevance: Relevance, x: np.ndarray, baseline: np.ndarray, steps: int = 16,
                         dtype: torch.dtype = torch.float64) -> np.ndarray:
    """Feature attributions ``e`` (x.shape) of ``R(x) - R(baseline)``; see the module docstring for the sign.

    ``steps`` midpoints of the straight path are evaluated in one batch.
    """
    if steps < 1:
        raise InputError(f"xda: steps must be >= 1, got {steps}")
    x0 = torch.as_tensor(np.asarray(x), dtype=dtype)
    b = torch.as_tensor(np.asarray(baseline), dtype=dtype)
    if x0.shape != b.shape:
        raise InputError(f"xda: baseline shape {tuple(b.shape)} differs from the row's {tuple(x0.shape)}")
    if not x0.is_floating_point() or not torch.isfinite(x0).all():
        raise InputError("xda: the row's features must be finite floats")
    t = (torch.arange(steps, dtype=dtype) + 0.5) / steps
    path = (b + t.reshape(-1, *[1] * x0.dim()) * (x0 - b)).requires_grad_(True)  # (steps, *shape)
    grads = torch.autograd.grad(relevance(path).sum(), path)[0]
    return ((x0 - b) * grads.mean(0)).detach().cpu().numpy()


def relevance_values(relevance: Relevance, X: np.ndarray, dtype: torch.dtype = torch.float64,
                     batch: int = 256) -> np.ndarray:
    """``R`` of each row of ``X`` (k, *shape) -> (k,) numpy."""
    out = []
    for a in range(0, len(X), batch):
        out.append(relevance(torch.as_tensor(np.asarray(X[a:a + batch]), dtype=dtype)).detach().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def completeness(relevance: Relevance, x: np.ndarray, baseline: np.ndarray, attribution: np.ndarray) -> float:
    """``sum(e) - (R(x) - R(baseline))``: 0 for an exact decomposition."""
    r = relevance_values(relevance, np.stack([x, baseline]))
    return float(attribution.sum() - (r[0] - r[1]))


def deletion_curve(relevance: Relevance, x: np.ndarray, baseline: np.ndarray, order: np.ndarray,
                   fractions: np.ndarray) -> np.ndarray:
    """``R`` after setting the first ``round(f * d)`` features of ``order`` (flat indices, (d,)) to the baseline,
    for each ``f`` of ``fractions`` (k,) -> (k,). ``order = argsort(-e.ravel())`` deletes the most relevant first."""
    flat_x, flat_b = np.asarray(x, float).ravel(), np.asarray(baseline, float).ravel()
    rows = np.repeat(flat_x[None], len(fractions), 0)
    for r, f in enumerate(fractions):
        k = int(round(float(f) * len(order)))
        rows[r, order[:k]] = flat_b[order[:k]]
    return relevance_values(relevance, rows.reshape(len(fractions), *np.shape(x)))


def deletion_auc(curve: np.ndarray, fractions: np.ndarray) -> float:
    """Area under the share of relevance left, ``clip(curve / curve[0], 0, 1)``, over ``fractions`` (trapezoid).

    ``curve[0] = R(x) > 0``. The clip counts a relevance pushed past zero as gone and one pushed above its start as
    whole: ``R`` is unbounded off the data, and one row's excursion would otherwise dominate a mean over rows.
    """
    c = np.clip(np.asarray(curve, float) / curve[0], 0.0, 1.0)
    f = np.asarray(fractions, float)
    return float(((c[1:] + c[:-1]) / 2 * np.diff(f)).sum())
