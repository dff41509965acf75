"""Low-rank preconditioned query gradients (K-FAC / EK-FAC): full rank gives the engine's scores, rank r gives the
scores of the explicitly truncated preconditioned queries."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tda_clean.config.influence import GradientSettings, InfluenceSpec, KFACSettings
from tda_clean.errors import InputError
from tda_clean.influence import InfluenceEngine, PerSampleLoss, RowSum, TrainingObjective, per_sample_grads_loop
from tda_clean.influence.lowrank_query import low_rank_scores

SPEC = InfluenceSpec(solver=KFACSettings(kind="ekfac", damping=0.01), gradients=GradientSettings(memory_mb=0.01))


@pytest.mark.parametrize("fixture", ["mlp", "cnn"])
def test_full_rank_equals_the_engine_scores(request, fixture):
    model, X, y = request.getfixturevalue(fixture)
    engine = InfluenceEngine(model, (X, y), SPEC, TrainingObjective(0.05))
    obj = PerSampleLoss(X[:5], y[:5])
    np.testing.assert_allclose(low_rank_scores(engine, obj, 10_000), engine.scores(obj), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(low_rank_scores(engine, obj, 10_000, RowSum()), engine.scores(obj).sum(0), rtol=1e-9,
                               atol=1e-12)


@pytest.mark.parametrize("fixture", ["mlp", "cnn"])
def test_rank_one_equals_the_truncated_queries_times_gradients(request, fixture):
    model, X, y = request.getfixturevalue(fixture)
    engine = InfluenceEngine(model, (X, y), SPEC, TrainingObjective(0.05))
    obj = PerSampleLoss(X[:4], y[:4])
    W = engine.inverse_hvp(obj)
    Wr = torch.zeros_like(W)
    for l in engine.solver.layers_:  # explicit rank-1 truncation of each layer's [W | b]
        M = W[:, l.w_slice].reshape(len(W), l.out, -1)
        if l.b_slice is not None:
            M = torch.cat([M, W[:, l.b_slice].reshape(len(W), l.out, 1)], dim=2)
        U, S, Vh = torch.linalg.svd(M)
        M1 = S[:, 0, None, None] * U[:, :, :1] @ Vh[:, :1, :]
        Wr[:, l.w_slice] = M1[:, :, : M.shape[2] - (l.b_slice is not None)].reshape(len(W), -1)
        if l.b_slice is not None:
            Wr[:, l.b_slice] = M1[:, :, -1]
    G = per_sample_grads_loop(engine.space, X, y)
    expected = (Wr @ G.T + (W @ engine.regulariser_gradient())[:, None]) / (len(X) - 1)
    got = low_rank_scores(engine, obj, 1)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-9, atol=1e-12)
    assert not np.allclose(got, engine.scores(obj), rtol=1e-3)


def test_low_rank_needs_kfac_and_a_positive_rank(mlp):
    model, X, y = mlp
    engine = InfluenceEngine(model, (X, y), InfluenceSpec(solver="cg"), TrainingObjective(0.05))
    with pytest.raises(InputError, match="kfac or ekfac"):
        low_rank_scores(engine, PerSampleLoss(X[:2], y[:2]), 4)
    with pytest.raises(InputError, match="rank"):
        low_rank_scores(engine, PerSampleLoss(X[:2], y[:2]), 0)


@pytest.mark.parametrize("T, r", [(1, 2), (1, 6), (7, 2)])  # factored (r T (out + inp) < out inp) and materialised
def test_layer_scores_equal_the_explicit_contraction(T, r):
    from tda_clean.influence.lowrank_query import _layer_scores

    gen = torch.Generator().manual_seed(T + r)
    g, a = torch.randn(5, T, 9, generator=gen, dtype=torch.float64), torch.randn(5, T, 11, generator=gen, dtype=torch.float64)
    US, V = torch.randn(3, 9, r, generator=gen, dtype=torch.float64), torch.randn(3, 11, r, generator=gen, dtype=torch.float64)
    expected = torch.einsum("nto,nti,mor,mir->nm", g, a, US, V)
    torch.testing.assert_close(_layer_scores(US, V, g, a), expected, rtol=1e-12, atol=1e-12)
