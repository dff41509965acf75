"""XDA: input attributions of a training row's relevance (docs/methods.md#xda-why-a-training-row-is-relevant).

Quality floor: deleting the most relevant features first lowers the relevance much faster than deleting them at
random; the same test run with a random attribution stays at a ratio near 1, so the floor can fail.
"""
from __future__ import annotations

import base64

import numpy as np
import pytest
import torch

from tda_clean.config.influence import ExactSettings, GradientSettings, InfluenceSpec
from tda_clean.errors import InputError
from tda_clean.influence import InfluenceEngine
from tda_clean.influence.params import ParamSpace
from tda_clean.influence.xda import (completeness, deletion_auc, deletion_curve, influence_relevance,
                                     integrated_gradients, top_query_relevances)
from tda_clean.objective import TrainingObjective
from tda_clean.review_why import column_shares, feature_columns, heatmap_uri
from tests.unit_helpers import torch_single_thread

_single_thread = pytest.fixture(autouse=True)(torch_single_thread)
FRACTIONS = np.linspace(0, 1, 11)


@pytest.fixture(scope="module")
def digits_case():
    """A logistic regression on 400 digits (64 pixels), exact influence: relevances of 6 training rows."""
    from sklearn.datasets import load_digits

    d = load_digits()
    X, y = (d.data / 16.0)[:500], d.target[:500]
    Xtr, ytr, Xval, yval = X[:400], y[:400], X[400:], y[400:]
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 10).double()
    opt = torch.optim.LBFGS(model.parameters(), max_iter=200, line_search_fn="strong_wolfe")
    Xt, yt = torch.as_tensor(Xtr), torch.as_tensor(ytr)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(Xt), yt) + 1e-2 / 2 * sum((p * p).sum() for p in model.parameters())
        loss.backward()
        return loss

    opt.step(closure)
    spec = InfluenceSpec(solver=ExactSettings(damping=0.0), gradients=GradientSettings(params="all", dtype="float64"))
    engine = InfluenceEngine(model, (Xtr, ytr), spec, TrainingObjective(l2=1e-2))
    rows = np.arange(6) * 50
    relevances, S, top = top_query_relevances(engine, Xtr[rows], ytr[rows], Xval, yval, top=3)
    return relevances, Xtr[rows], Xtr.mean(0), S, top


def _ratio(relevances, X, baseline, order_of, seeds=(0, 1, 2)):
    """Mean deletion AUC with ``order_of(r, e)`` over the mean with random orders (3 seeds)."""
    ours, rand = [], []
    for r, (R, x) in enumerate(zip(relevances, X)):
        e = integrated_gradients(R, x, baseline, steps=16)
        ours.append(deletion_auc(deletion_curve(R, x, baseline, order_of(r, e), FRACTIONS), FRACTIONS))
        for s in seeds:
            order = np.random.default_rng(s).permutation(x.size)
            rand.append(deletion_auc(deletion_curve(R, x, baseline, order, FRACTIONS), FRACTIONS))
    return np.mean(ours) / np.mean(rand)


def test_relevance_at_the_row_is_its_total_influence_on_its_top_queries(digits_case):
    relevances, X, baseline, S, top = digits_case
    for r, R in enumerate(relevances):
        value = R(torch.as_tensor(X[r:r + 1])).item()
        np.testing.assert_allclose(value, np.abs(S[r, top[r]]).sum(), rtol=1e-8)


def test_attributions_are_complete(digits_case):
    relevances, X, baseline, _, _ = digits_case
    for R, x in zip(relevances, X):
        e = integrated_gradients(R, x, baseline, steps=32)
        total = abs(R(torch.as_tensor(x[None])).item())
        assert abs(completeness(R, x, baseline, e)) < 0.02 * total


def test_deletion_quality_floor(digits_case):
    relevances, X, baseline, _, _ = digits_case
    xda = _ratio(relevances, X, baseline, lambda r, e: np.argsort(-e.ravel()))
    reverse = _ratio(relevances, X, baseline, lambda r, e: np.argsort(e.ravel()))  # least relevant first
    noise = _ratio(relevances, X, baseline, lambda r, e: np.argsort(-np.random.default_rng(100 + r).normal(size=e.size)))
    assert xda < 0.5, xda
    assert 0.8 < noise < 1.25, noise  # a random attribution is no better than random deletion
    assert reverse > xda + 0.5, (reverse, xda)  # and the sign matters


def test_influence_relevance_matches_double_backward():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).double()
    space = ParamSpace(model, "all")
    u = torch.randn(space.p, dtype=torch.float64)
    x = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    R = influence_relevance(space, u, 1, 0.1, offset=0.5)
    got = torch.autograd.grad(R(x).sum(), x)[0]
    for r in range(2):
        xr = x[r:r + 1].detach().clone().requires_grad_(True)
        g = torch.autograd.grad(torch.nn.functional.cross_entropy(model(xr), torch.tensor([1])),
                                list(model.parameters()), create_graph=True)
        value = (torch.cat([t.reshape(-1) for t in g]) @ u + 0.5) * 0.1
        np.testing.assert_allclose(value.item(), R(x[r:r + 1]).item(), rtol=1e-10)
        np.testing.assert_allclose(torch.autograd.grad(value, xr)[0][0], got[r], rtol=1e-8)


def test_bad_inputs_raise_input_error():
    R = lambda x: x.sum(dim=tuple(range(1, x.dim())))  # noqa: E731
    with pytest.raises(InputError, match="baseline shape"):
        integrated_gradients(R, np.zeros(3), np.zeros(4))
    with pytest.raises(InputError, match="steps"):
        integrated_gradients(R, np.zeros(3), np.zeros(3), steps=0)
    np.testing.assert_allclose(integrated_gradients(R, np.arange(3.0), np.ones(3)), np.arange(3.0) - 1)


def test_one_hot_features_map_back_to_their_column():
    names = ["age", "hours_per_week", "hours_slept", "workclass_Private", "workclass_State-gov", "sex_Male"]
    X = np.array([[30, 40, 7, 1, 0, 1], [50, 20, 8, 0, 1, 0], [41, 35, 6, 0, 0, 1.0]])
    X[:, 3] = (X[:, 3] - 0.3) / 0.4  # one-hot columns may be standardised: still two values
    cols = feature_columns(names, X)
    assert cols == ["age", "hours_per_week", "hours_slept", "workclass", "workclass", "sex_Male"]
    shares = column_shares(np.array([0.3, -0.1, 0.0, 0.2, 0.2, -0.2]), cols)
    assert list(shares) [:2] == ["workclass", "age"] and shares["workclass"] == pytest.approx(0.4 / 1.0)
    assert feature_columns((), X)[0] == "x0"


def test_heatmap_is_a_png_data_uri():
    uri = heatmap_uri(np.arange(64.0).reshape(8, 8) - 32)
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_dualda_relevance_at_the_row_is_its_total_attribution():
    from tda_clean.influence import DualDA, DualDASettings
    from tda_clean.influence.xda import top_query_dualda_relevances

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(80, 6)), rng.integers(0, 3, 80)
    Xq = rng.normal(size=(9, 6))

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = torch.nn.Linear(6, 5).double(), torch.nn.Linear(5, 3).double()

        def features(self, x):
            return torch.tanh(self.body(x))

        def forward(self, x):
            return self.head(self.features(x))

    model = Net().eval()
    dd = DualDA.from_model(model, X, y, DualDASettings(C=0.5), n_classes=3)
    rows = np.flatnonzero(dd.support_)[:4]
    classes = rng.integers(0, 3, 9)
    relevances, A, top = top_query_dualda_relevances(dd, rows, dd.query_features(Xq), classes, top=2)
    for r, i in enumerate(rows):
        np.testing.assert_allclose(relevances[r](torch.as_tensor(X[i:i + 1])).item(), np.abs(A[r, top[r]]).sum(),
                                   rtol=1e-8)
        e = integrated_gradients(relevances[r], X[i], X.mean(0), steps=64)
        assert abs(completeness(relevances[r], X[i], X.mean(0), e)) < 1e-3 * np.abs(A[r, top[r]]).sum()
