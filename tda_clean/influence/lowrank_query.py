"""Low-rank preconditioned query gradients for K-FAC / EK-FAC scores (kronfluence's ``query_gradient_low_rank``).

Per layer the preconditioned query gradient ``W_j = A^-1 q_j`` is a matrix ``(out, inp)`` (bias as the last input
column). Its rank-``r`` truncated SVD ``W_j ~ sum_{s<r} sigma_s u_s v_s^T`` turns the score of a training row
whose layer gradient is ``M_i = sum_t g_t a_t^T`` into

    <W_j, M_i> ~ sum_s sigma_s sum_t (u_s . g_t)(v_s . a_t)

computed from the layer's hooked inputs ``a`` and output gradients ``g``: ``r T (out + inp)`` multiply-adds per
(query, row) instead of ``out inp`` -- fewer wherever ``r T (out + inp) < out inp`` (Linear layers on 2-D inputs
have ``T = 1``). Layers where that does not hold (convolutions with many positions) contract the materialised row
gradient with the same truncated ``W_j``. Removal scores as :meth:`InfluenceEngine.scores`:

    score[j, i] = (<W_j^(r), g_i> + W_j . l2 theta*) / (n - 1)      (m, n), POSITIVE = removal INCREASES f

the regulariser term with the full ``W_j`` (one number per query). With ``r >= min(out, inp)`` in every layer the
scores are the engine's up to rounding. The SVD is taken in the Kronecker eigenbasis where the engine computes the
queries there (``Q_S^T W_j Q_A``: same singular values, factors rotated back with ``Q_S`` and ``Q_A``). The query
side (preconditioning, one SVD per query and layer) costs the same for any number of training rows; the saving
is per (query, row) pair.
"""
from __future__ import annotations

from typing import Any

import torch

from tda_clean.errors import InputError
from tda_clean.influence import layer_grads
from tda_clean.influence.gradients import check_finite_rows, rows_per_batch
from tda_clean.influence.kfac import KFACSolver, _activations, _out_grads
from tda_clean.influence.reducers import DenseScores, ScoreReducer

_CHUNK_ELEMS = 2**24  # (rows x positions x queries x rank) products formed at once


def _truncate(solver: KFACSolver, W: torch.Tensor, rank: int,
              eigenbasis: bool) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per layer ``(US (m, out, r), V (m, inp, r))`` with ``US V^T`` the rank-``rank`` truncated SVD of the
    preconditioned queries ``W`` (m, p) (``U_r U_r^T M`` from the top eigenvectors of the smaller Gram matrix
    ``M M^T`` or ``M^T M``: the same matrix as from an SVD, fewer operations). ``eigenbasis``: ``W`` is given in
    the Kronecker eigenbasis (``Q_S^T W Q_A`` per layer), where the SVD is the same up to the rotation, applied
    to the factors afterwards."""
    out = {}
    for l in solver.layers_:
        M = W[:, l.w_slice].reshape(len(W), l.out, -1)
        if l.b_slice is not None:
            M = torch.cat([M, W[:, l.b_slice].reshape(len(W), l.out, 1)], dim=2)
        r = min(rank, l.out, l.inp)
        if l.out <= l.inp:  # top-r eigenvectors of the smaller Gram matrix: M_r = U_r U_r^T M
            U = torch.linalg.eigh(M @ M.transpose(1, 2))[1][:, :, -r:]
            US, V = U, M.transpose(1, 2) @ U
        else:               # M_r = M V_r V_r^T
            V = torch.linalg.eigh(M.transpose(1, 2) @ M)[1][:, :, -r:]
            US = M @ V
        if eigenbasis:
            US, V = solver.QS_[l.name].to(W) @ US, solver.QA_[l.name].to(W) @ V
        out[l.name] = (US, V)
    return out


def _preconditioned(engine, objective) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``(W (m, p), W . l2 theta* (m,), in_eigenbasis)``: the preconditioned queries in the Kronecker eigenbasis
    from their layer factors where the engine's eigenbasis path applies (no rotation back), else ``A^-1 Q``."""
    from tda_clean.influence.gradients import as_tensors
    from tda_clean.influence.objectives import PerSampleObjective

    solver, reg = engine.solver, engine.regulariser_gradient()
    if isinstance(objective, PerSampleObjective):
        Xq, tq = as_tensors(engine.space, objective.X, objective.targets)
        Q = solver.eigenbasis_gradients(Xq, tq, objective.row_value)
        if Q is not None:
            check_finite_rows(Q, what=f"{objective.name} query gradients")
            Q = (Q.mean(0, keepdim=True) if objective.reduce == "mean" else Q) * solver.eigenbasis_scale()
            return Q, Q @ solver.to_eigenbasis(reg[None].to(Q))[0], True
    W = engine.inverse_hvp(objective)
    return W, W @ reg.to(W), False


def _layer_scores(US: torch.Tensor, V: torch.Tensor, g: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``(n, m)`` = ``sum_s sum_t (US_js . g_it)(V_js . a_it)`` for ``g`` (n, T, out), ``a`` (n, T, inp)."""
    n, T, o = g.shape
    m, _, r = US.shape
    if r * T * (o + a.shape[2]) >= o * a.shape[2]:  # no saving: contract the materialised row gradient
        M = torch.einsum("nto,nti->noi", g, a).reshape(n, -1)                         # (n, out inp)
        return M @ torch.einsum("mor,mir->moi", US, V).reshape(m, -1).T
    res = torch.zeros(n, m, dtype=g.dtype, device=g.device)
    step = max(1, _CHUNK_ELEMS // max(1, n * T * r))
    for s in range(0, m, step):
        q = slice(s, s + step)
        k = US[q].shape[0]
        GU = (g.reshape(n * T, o) @ US[q].permute(1, 0, 2).reshape(o, k * r)).reshape(n, T, k, r)
        AV = (a.reshape(n * T, -1) @ V[q].permute(1, 0, 2).reshape(-1, k * r)).reshape(n, T, k, r)
        res[:, q] = (GU * AV).sum((1, 3))
    return res


def low_rank_scores(engine, objective, rank: int, reducer: ScoreReducer | None = None) -> Any:
    """Removal influence of every training row on ``objective`` with the preconditioned query gradients of each
    layer truncated to rank ``rank`` (module docstring). ``engine``: an :class:`InfluenceEngine` with a K-FAC /
    EK-FAC solver and no gradient store. ``reducer`` as in :meth:`InfluenceEngine.scores` (default: the dense
    ``(m, n)`` matrix)."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise InputError(f"rank: expected a positive integer, got {rank!r}")
    solver = engine.solver
    if not isinstance(solver, KFACSolver):
        raise InputError(f"rank: low-rank query gradients need solver kfac or ekfac, not {engine.spec.solver.kind!r}")
    reducer = DenseScores() if reducer is None else reducer
    W, offsets, eigenbasis = _preconditioned(engine, objective)                       # (m, p), (m,)
    offsets = offsets.double().cpu()[:, None]
    parts = _truncate(solver, W, rank, eigenbasis)
    flat = None
    space, scale = engine.space, engine.removal_scale()
    size = rows_per_batch(space.p, W.element_size(), engine.spec.gradients.memory_mb, engine.rows.row_elems)
    reducer.start(len(W), range(engine.n))
    for rows, Xb, yb in engine.loss.blocks(size):
        records = layer_grads._record(space, Xb, yb, engine.training.row) if layer_grads.supported(space) else None
        if records is None:  # hooks do not cover the forward pass: materialised gradients, the truncated W
            from tda_clean.influence.gradients import iter_per_sample_grads
            if flat is None:
                flat = torch.zeros_like(W)
                for l in solver.layers_:
                    US, V = parts[l.name]
                    M = torch.einsum("mor,mir->moi", US, V)
                    flat[:, l.w_slice] = M[:, :, : (l.w_slice.stop - l.w_slice.start) // l.out].reshape(len(W), -1)
                    if l.b_slice is not None:
                        flat[:, l.b_slice] = M[:, :, -1]
            (_, G), = iter_per_sample_grads(space, Xb, yb, loss=engine.training.row, batch_size=len(yb))
            S = (G @ flat.T)
        else:
            S = 0
            for l in solver.layers_:
                _, a, delta = records[l.owner]
                US, V = parts[l.name]
                S = S + _layer_scores(US, V, _out_grads(l, delta).to(W.dtype), _activations(l, a).to(W.dtype))
            check_finite_rows(S, "low-rank scores", offset=rows.start)
        reducer.add(rows, (S.T.double().cpu() + offsets) * scale)
    return reducer.result()
