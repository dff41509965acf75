"""Kronecker-factored (LoGra-style) projection: equal to materialised per-sample gradients times the explicit
Kronecker product, seeded, the same streamed as in memory; the dense projector draws its matrix once."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tda_clean.config.influence import GradientSettings, ProjectionSettings
from tda_clean.errors import InputError
from tda_clean.influence import MeanLoss, per_sample_grads_loop, projected_influence
from tda_clean.influence.factored_projection import FactoredProjector
from tda_clean.influence.params import ParamSpace
from tda_clean.influence.projection import RandomProjector
from tda_clean.influence.rows import ArrayRows
from tda_clean.objective import TrainingObjective


class TinyCNN(nn.Module):
    """conv(bias) -> ReLU -> strided dilated conv (no bias) -> BN -> ReLU -> flatten -> Linear(bias)."""

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 5, 3, stride=2, padding=2, dilation=2, bias=False)
        self.bn = nn.BatchNorm2d(5)
        self.act = nn.ReLU(inplace=inplace)
        self.head = nn.Linear(5 * 3 * 3, 3)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.c2(self.act(self.c1(x))))).flatten(1))


def _tiny(kind: str, inplace: bool = False):
    torch.manual_seed(5)
    rng = np.random.default_rng(5)
    if kind == "mlp":
        model = nn.Sequential(nn.Linear(6, 7), nn.ReLU(inplace=inplace), nn.Linear(7, 3)).double().eval()
        X = rng.normal(size=(9, 6))
    else:
        model = TinyCNN(inplace).double().eval()
        with torch.no_grad():
            model.bn.running_mean.normal_()
            model.bn.running_var.uniform_(0.5, 2.0)
        X = rng.normal(size=(9, 2, 5, 5))
    return model, X, rng.integers(0, 3, len(X))


def _explicit(model: nn.Module, proj: FactoredProjector, X, y) -> torch.Tensor:
    """Per-row autograd gradients of each layer as the matrix ``[W | b]`` (out, inp), times the explicit
    ``torch.kron(P_out, P_in)`` (independent of the projector's flat layout)."""
    rows = []
    for i in range(len(X)):
        model.zero_grad()
        loss = nn.functional.cross_entropy(model(torch.as_tensor(X[i : i + 1])), torch.as_tensor(y[i : i + 1]))
        loss.backward()
        parts = []
        for l in proj.layers:
            M = l.module.weight.grad.reshape(l.out, -1)
            if l.module.bias is not None:
                M = torch.cat([M, l.module.bias.grad[:, None]], dim=1)
            Po, Pi = proj.factors(l)
            parts.append(torch.kron(Po, Pi) @ M.reshape(-1))
        rows.append(torch.cat(parts))
    return torch.stack(rows)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_factored_projection_equals_gradients_times_the_kronecker_matrix(kind):
    model, X, y = _tiny(kind)
    space = ParamSpace(model, "all")
    proj = FactoredProjector(space, k=20, kind="gaussian", seed=3)
    assert any(l.k_out < l.out for l in proj.layers) and any(l.k_in < l.inp for l in proj.layers)  # really reduced
    assert proj.k <= 20
    streamed = torch.cat([PG for _, PG in proj.iter_rows(ArrayRows(X, y), TrainingObjective().row, memory_mb=0.001)])
    explicit = _explicit(model, proj, X, y)
    torch.testing.assert_close(streamed, explicit, rtol=0, atol=1e-9)
    G = per_sample_grads_loop(space, X, y)
    torch.testing.assert_close(proj.project(G), explicit, rtol=0, atol=1e-9)
    torch.testing.assert_close(G @ proj.matrix().T, explicit, rtol=0, atol=1e-9)
    if kind == "cnn":  # BatchNorm is frozen: named, and no coordinate of the projection depends on it
        assert proj.frozen == ("bn.weight", "bn.bias")
        start = sum(space.sizes[: space.names.index("bn.weight")])
        assert float(proj.matrix()[:, start : start + 10].abs().max()) == 0.0
        assert float(proj.matrix()[:, :start].abs().max(0).values.min()) > 0  # every conv weight / bias column used


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_unhooked_forward_falls_back_to_materialised_gradients(kind):
    """An in-place ReLU on a layer output defeats the hooks: gradients are materialised, same numbers."""
    model, X, y = _tiny(kind)
    other, _, _ = _tiny(kind, inplace=True)
    a, b = (FactoredProjector(ParamSpace(m, "all"), k=20, seed=1) for m in (model, other))
    rows = lambda p: torch.cat([PG for _, PG in p.iter_rows(ArrayRows(X, y), TrainingObjective().row)])  # noqa: E731
    torch.testing.assert_close(rows(b), rows(a), rtol=0, atol=1e-12)


def test_factored_projection_is_seeded_and_drawn_once(mlp):
    model, X, y = mlp
    space = ParamSpace(model, "all")
    a, b, c = (FactoredProjector(space, k=12, seed=s) for s in (7, 7, 8))
    G = per_sample_grads_loop(space, X, y)
    torch.testing.assert_close(a.project(G), b.project(G), rtol=0, atol=0)
    assert not torch.allclose(a.project(G), c.project(G))
    first = a.factors(a.layers[0])
    list(a.iter_rows(ArrayRows(X, y), TrainingObjective().row, memory_mb=0.001))  # many blocks
    assert a.factors(a.layers[0])[0] is first[0]


def test_widths_fill_the_budget_and_keep_small_sides_whole():
    model = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 3)).double()
    proj = FactoredProjector(ParamSpace(model, "all"), k=100)
    # r = 8: 8*8 + 3*8 = 88 <= 100; r = 9: 81 + 27 = 108 > 100
    assert [(l.k_out, l.k_in) for l in proj.layers] == [(8, 8), (3, 8)] and proj.k == 88
    Po, _ = proj.factors(proj.layers[1])
    torch.testing.assert_close(Po, torch.eye(3, dtype=torch.float64))


def test_factored_needs_a_linear_or_conv_weight():
    model = TinyCNN().double().eval()
    with pytest.raises(InputError, match="method 'dense'"):
        FactoredProjector(ParamSpace(model, "bn"), k=8)
    with pytest.raises(InputError, match="projection.method"):
        projected_influence(model, (np.zeros((2, 2, 5, 5)), np.zeros(2, int)), MeanLoss(np.zeros((1, 2, 5, 5)), [0]),
                            l2=0.0, method="sparse")


@pytest.mark.parametrize("method", ["factored", "dense"])
def test_projected_influence_streamed_equals_in_memory(mlp, tmp_path, method):
    model, X, y = mlp
    np.save(tmp_path / "X.npy", X)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.as_tensor(X), torch.as_tensor(y)),
                                         batch_size=5, shuffle=False)
    obj, grads = MeanLoss(X[:6], y[:6]), GradientSettings(memory_mb=0.002)
    spec = ProjectionSettings(method=method, k=16, seed=4)
    ref = projected_influence(model, (X, y), obj, l2=0.05, damping=0.01, gradients=grads, projection=spec).scores
    for train in ((np.load(tmp_path / "X.npy", mmap_mode="r"), y), loader):
        got = projected_influence(model, train, obj, l2=0.05, damping=0.01, gradients=grads, projection=spec).scores
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)
    stored = projected_influence(model, (X, y), obj, l2=0.05, damping=0.01, gradients=grads, projection=spec,
                                 store_dir=tmp_path / "store").scores
    np.testing.assert_allclose(stored, ref, rtol=1e-9, atol=1e-12)
    single = projected_influence(model, (X, y), obj, l2=0.05, damping=0.01, projection=spec).scores  # one block
    np.testing.assert_allclose(single, ref, rtol=1e-9, atol=1e-12)


def test_factored_scores_equal_the_explicit_formula(mlp):
    """Scores ``(Pq)^T F^-1 P(g_i + l2 theta) / (n-1)`` with the explicit Kronecker matrix, float64."""
    model, X, y = mlp
    l2, damping = 0.05, 0.01
    obj = MeanLoss(X[:4], y[:4])
    res = projected_influence(model, (X, y), obj, l2=l2, damping=damping, k=10, seed=2)
    space = ParamSpace(model, "all")
    P = FactoredProjector(space, k=10, seed=2).matrix()
    G = per_sample_grads_loop(space, X, y) @ P.T
    F = G.T @ G / len(X) + (l2 + damping) * torch.eye(len(P), dtype=torch.float64)
    q = obj.query_gradients(space, 256.0) @ P.T
    expected = torch.linalg.solve(F, q.T).T @ (G + l2 * space.flat() @ P.T).T / (len(X) - 1)
    np.testing.assert_allclose(res.scores, expected.numpy(), rtol=1e-9, atol=1e-12)
    assert res.info["projection"]["method"] == "factored" and res.info["k"] == len(P)


def test_dense_projector_draws_its_matrix_once(monkeypatch):
    G = torch.randn(6, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cached, fresh = RandomProjector(50, 8, seed=1, block=7), RandomProjector(50, 8, seed=1, block=7, cache_mb=0)
    calls = []
    draw = RandomProjector._draw
    monkeypatch.setattr(RandomProjector, "_draw", lambda self, *a: calls.append(self.cache_mb) or draw(self, *a))
    for _ in range(3):
        torch.testing.assert_close(cached.project(G[:2]), fresh.project(G[:2]), rtol=0, atol=0)
    assert calls.count(256.0) == 8 and calls.count(0) == 3 * 8  # 8 blocks of 7 parameter rows
    torch.testing.assert_close(cached.project(G), G @ fresh.matrix() / 8 ** 0.5)


def test_float32_scoring_is_close_to_float64(mlp):
    model, X, y = mlp
    obj = MeanLoss(X[:4], y[:4])
    a = projected_influence(model, (X, y), obj, l2=0.05, damping=0.01, k=10).scores
    b = projected_influence(model, (X, y), obj, l2=0.05, damping=0.01, k=10, precision="float32")
    assert b.info["precision"] == "float32"
    np.testing.assert_allclose(b.scores, a, rtol=1e-4, atol=1e-6 * float(np.abs(a).max()))
    assert not np.array_equal(b.scores, a)
