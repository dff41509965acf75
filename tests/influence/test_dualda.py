import numpy as np
from pydantic import ValidationError
import pytest
import torch

from tda_clean.errors import InputError
from tda_clean.influence import DualDA, DualDASettings
from tda_clean.influence.dualda import project_rows


def _data(n=120, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    y = (X[:, 0] + 0.7 * rng.normal(size=n) > 0).astype(int) + (X[:, 1] > 0.8)
    return X, y


def test_projection_is_feasible_and_optimal():
    from scipy.optimize import minimize

    rng = np.random.default_rng(1)
    Z, y = rng.normal(size=(20, 4)), rng.integers(0, 4, 20)
    U = 0.7 * np.eye(4)[y]
    A = project_rows(Z, U)
    np.testing.assert_allclose(A.sum(1), 0, atol=1e-12)
    assert (A <= U + 1e-12).all()
    for i in range(3):
        ref = minimize(lambda a: ((a - Z[i]) ** 2).sum(), np.zeros(4), bounds=[(None, u) for u in U[i]],
                       constraints=[{"type": "eq", "fun": lambda a: a.sum()}], tol=1e-12).x
        np.testing.assert_allclose(A[i], ref, atol=1e-6)


def test_attributions_sum_to_surrogate_logit():
    X, y = _data()
    dd = DualDA(DualDASettings(C=0.5)).fit(X, y)
    Xq = np.random.default_rng(3).normal(size=(7, 5))
    for c in range(3):
        a = dd.attribute(Xq, c)
        np.testing.assert_allclose(a.sum(1), dd.decision_function(Xq)[:, c], rtol=1e-12, atol=1e-12)
    # dual feasibility / sign structure of docs/methods.md#dualda-and-xda
    al = dd.alpha_
    own = al[np.arange(len(y)), y]
    assert (own >= -1e-12).all() and (own <= 0.5 + 1e-9).all()
    np.testing.assert_allclose(al.sum(1), 0, atol=1e-10)
    off = al.copy()
    off[np.arange(len(y)), y] = 0
    assert (off <= 1e-12).all()
    assert dd.duality_gap_ <= 1e-6


def test_matches_sklearn_crammer_singer():
    from sklearn.svm import LinearSVC

    X, y = _data()
    dd = DualDA(DualDASettings(C=0.1, tol=1e-8, max_iter=20000)).fit(X, y)
    sk = LinearSVC(multi_class="crammer_singer", C=0.1, fit_intercept=False, tol=1e-10, max_iter=200000).fit(X, y)
    np.testing.assert_allclose(dd.W_, sk.coef_, atol=2e-3)


def test_C_changes_sparsity():
    X, y = _data()
    supports = [DualDA(DualDASettings(C=C)).fit(X, y).support_.mean() for C in (0.01, 1.0)]
    assert supports[0] != supports[1] and min(supports) < 1.0


def test_from_model_and_self_influence(mlp):
    model, X, y = mlp
    dd = DualDA.from_model(model, X, y, DualDASettings(C=1.0), n_classes=3)
    feats = dd.query_features(X[:4])
    with torch.no_grad():
        ref = model.features(torch.as_tensor(X[:4])).numpy()
    np.testing.assert_allclose(feats, ref)
    np.testing.assert_allclose(dd.attribute(feats, y[:4]).sum(1), dd.decision_function(feats)[np.arange(4), y[:4]])
    s = dd.self_influence()
    assert s.shape == (len(X),) and (s >= -1e-12).all()


def test_bad_input():
    X, y = _data(10)
    X[4, 1] = np.inf
    with pytest.raises(InputError, match=r"row positions \[4\]"):
        DualDA().fit(X, y)
    with pytest.raises(ValidationError, match="C"):
        DualDASettings(C=0)
