"""Group selectors (issue 4): exact budgets, second order never predicted worse than first order, D3M alignment,
explanations by group, and bad budgets. Conformance is covered by ``test_conformance.py``."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tda_clean.config import Budget, LogisticConfig, TrainConfig, parse_config
from tda_clean.errors import InputError
from tda_clean.models.factory import build_model
from tda_clean.models.trainer import fit as fit_model
from tda_clean.selection import FitContext, Selection, make_detector
from tda_clean.selection.group_selectors import exact_budget, explain_selection
from tests.unit_helpers import torch_single_thread

_single_thread = pytest.fixture(scope="module", autouse=True)(torch_single_thread)
TRAIN = TrainConfig(optimizer="lbfgs", l2=1e-2, epochs=30, device="cpu", dtype="float64")


def _data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    g = rng.choice(["a", "b"], size=n, p=[0.7, 0.3])
    X = rng.normal(size=(n, 3))
    logit = 1.5 * X[:, 0] - X[:, 1] + np.where(g == "b", -1.0, 0.5)
    y = (logit + rng.logistic(size=n) > 0).astype(np.int64)
    # a biased cell: many "b" rows with label 0 whatever their features
    flip = (g == "b") & (rng.random(n) < 0.3)
    y[flip] = 0
    return X.astype(np.float64), y, pd.DataFrame({"g": g})


@pytest.fixture(scope="module")
def problem():
    X, y, groups = _data(300, 0)
    Xv, yv, groups_val = _data(200, 1)
    model = build_model(LogisticConfig(), (3,), 2, 0)
    fit_model(model, X, y, TRAIN, 0, progress=False)
    ctx = FitContext(seed=0, make_model=lambda s: build_model(LogisticConfig(), (3,), 2, s), train_config=TRAIN,
                     model=model, X_val=Xv, y_val=yv, groups_val=groups_val, n_classes=2)
    return X, y, groups, ctx


def _det(kind: str, **kw):
    base = {"kind": kind, **kw}
    if kind != "random":
        base.setdefault("damping", 0.0)
        base.setdefault("params", "all")
        # these tests check the selection itself; the gap check before it is tested in test_gap_check.py
        base.setdefault("min_gap_confidence", None)
    return make_detector(parse_config({"data": {"kind": "digits"}, "detector": base}).detector)


def _det_with(kind: str, extra: dict, **kw):
    """As :func:`_det`, with the settings of ``extra`` (``components``, ``rounds``, ``temperature``, ...)."""
    return _det(kind, **{**kw, **extra})


KINDS = ("group_first_order", "group_second_order", "d3m", "random")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("budget", [{"max_flagged": 17}, {"max_flagged": 40, "fraction": 0.1}])
def test_budget_is_exact(kind, budget, problem):
    X, y, _, ctx = problem
    sel = _det(kind, **budget).fit(X, y, ctx).to_selection()
    expected = exact_budget(len(y), Budget(**budget))
    assert sel.n_flagged == expected == len(sel.indices)
    assert sel.info["budget"] == expected


@pytest.mark.parametrize("kind", KINDS)
def test_budget_larger_than_pool_raises(kind, problem):
    X, y, _, ctx = problem
    with pytest.raises(InputError, match="smaller than the candidate pool"):
        _det(kind, max_flagged=len(y)).fit(X, y, ctx)
    with pytest.raises(InputError, match="candidate pool"):
        exact_budget(10, Budget(max_flagged=10))


@pytest.mark.parametrize("objective", ["equalized_odds_gap", "val_loss"])
def test_second_order_never_predicted_worse_than_first(objective, problem):
    """Scalar path (``components="off"``; val_loss is not max-type, so it takes this path anyway)."""
    X, y, _, ctx = problem
    off = {"components": "off"}
    first = _det_with("group_first_order", off, objective=objective, max_flagged=30).fit(X, y, ctx)
    second = _det_with("group_second_order", off, objective=objective, max_flagged=30).fit(X, y, ctx)
    info = second.info_
    assert info["predicted_change"] <= info["first_order_topk_predicted_change"] + 1e-12
    assert info["predicted_change"] < 0  # the selection is predicted to lower the objective
    # first-order top-k is the exact maximiser of the first-order decrease
    np.testing.assert_array_equal(np.sort(first.get_support(indices=True)),
                                  np.sort(np.argsort(-first.scores_, kind="stable")[:30]))
    # scores are per-row contributions: over the flagged rows they sum to the predicted change
    for det in (first, second):
        assert -det.scores_[det.get_support()].sum() == pytest.approx(det.info_["predicted_change"], rel=1e-6)
        assert set(np.unique(det.suggested_labels_)) <= {0, 1}


def test_second_order_methods_and_actual_effect(problem):
    """Removing the selected rows lowers the (smooth) group loss gap after retraining, more than random rows.

    (A max-type objective such as worst_group_loss is linearised on its active group: removing rows can make
    another group the worst one, which the prediction does not see.)"""
    from tda_clean.influence import GroupLossDifference

    X, y, groups, ctx = problem
    objective = GroupLossDifference(ctx.X_val, ctx.y_val, ("g=" + ctx.groups_val["g"]).to_numpy(), "g=b", "g=a")
    base = objective.values(ctx.model)[0]

    def after(mask):
        model = ctx.make_model(0)
        fit_model(model, X[~mask], y[~mask], TRAIN, 0, progress=False)
        return objective.values(model)[0] - base

    changes = {}
    for method in ("greedy", "relaxed", "best"):
        det = _det("group_second_order", objective="group_loss_gap", method=method, max_flagged=30).fit(X, y, ctx)
        assert det.info_["method"] in ("greedy", "relaxed", "first_order_topk")
        changes[method] = after(det.get_support())
    rand = _det("random", max_flagged=30).fit(X, y, ctx)
    assert changes["best"] < 0
    assert changes["best"] < after(rand.get_support())


@pytest.mark.parametrize("rounds", [1, 3])
@pytest.mark.parametrize("objective", ["equalized_odds_gap", "worst_group_loss", "demographic_parity_gap"])
def test_components_path_budget_rounds_and_prediction(objective, rounds, problem):
    """Max-type objectives: every component predicted; exact budget over rounds; per round the chosen set is never
    predicted worse than the first-order top-k candidate; flagged rows score above all others."""
    X, y, _, ctx = problem
    det = _det_with("group_second_order", {"rounds": rounds}, objective=objective, max_flagged=17, iters=10)
    sel = det.fit(X, y, ctx).to_selection()
    info = sel.info
    assert sel.n_flagged == 17 == info["budget"] and info["method"] == "components_order2"
    assert [r["rows"] for r in info["rounds"]] == ([17] if rounds == 1 else [6, 6, 5])
    assert len(info["objective_measured_at_refits"]) == rounds
    for r in info["rounds"]:
        cand = r["predicted_candidates"]
        assert min(cand.values()) <= cand["first_order_topk"] and r["method"] in cand
    assert sel.contributions is None  # a max is not additive over rows
    assert sel.scores[sel.mask].min() > sel.scores[~sel.mask].max()
    assert set(info["components_predicted"]) == set(info["components_before"])
    first = _det("group_first_order", objective=objective, max_flagged=17).fit(X, y, ctx)
    assert first.info_["method"] == "components_order1" and first.get_support().sum() == 17
    # first-order top-k = the 17 rows with the most negative linearised effect
    np.testing.assert_array_equal(np.sort(first.get_support(indices=True)),
                                  np.sort(np.argsort(first.row_effects_, kind="stable")[:17]))


def test_components_actual_effect_on_worst_group_loss(problem):
    """After retraining without the selection, the (hard) worst-group loss is lower than before and lower than
    after removing random rows at the same budget."""
    from tda_clean.influence import WorstGroupLoss

    X, y, groups, ctx = problem
    objective = WorstGroupLoss(ctx.X_val, ctx.y_val, ("g=" + ctx.groups_val["g"]).to_numpy())
    base = objective.values(ctx.model)[0]

    def after(mask):
        model = ctx.make_model(0)
        fit_model(model, X[~mask], y[~mask], TRAIN, 0, progress=False)
        return objective.values(model)[0] - base

    det = _det_with("group_second_order", {"rounds": 2}, objective="worst_group_loss", max_flagged=30, iters=20)
    change = after(det.fit(X, y, ctx).get_support())
    rand = _det("random", max_flagged=30).fit(X, y, ctx)
    assert change < 0
    assert change < after(rand.get_support())
    # measured at the refit between rounds: lower than before
    measured = det.info_["objective_measured_at_refits"]
    assert measured[1] < measured[0]


def test_components_bad_settings(problem):
    X, y, _, ctx = problem
    with pytest.raises(InputError, match="components"):
        _det_with("group_second_order", {"components": "yes"}, max_flagged=5).fit(X, y, ctx)
    with pytest.raises(InputError, match="not max-type"):
        _det_with("group_first_order", {"components": "on"}, objective="val_loss", max_flagged=5).fit(X, y, ctx)
    with pytest.raises(InputError, match="rounds"):
        _det_with("group_second_order", {"rounds": 0}, max_flagged=5).fit(X, y, ctx)
    with pytest.raises(InputError, match="temperature"):
        _det_with("group_second_order", {"temperature": -1.0}, max_flagged=5).fit(X, y, ctx)


def test_d3m_alignment_scores(problem):
    X, y, _, ctx = problem
    det = _det("d3m", max_flagged=20).fit(X, y, ctx)
    A = -det.scores_
    assert det.get_support().sum() == 20
    assert A[det.get_support()].max() <= A[~det.get_support()].min()
    assert set(det.info_["group_losses"]) == {"g=a", "g=b"}


def test_random_is_seeded(problem):
    X, y, _, ctx = problem
    a = _det("random", max_flagged=25).fit(X, y, ctx).get_support()
    b = _det("random", max_flagged=25).fit(X, y, ctx).get_support()
    np.testing.assert_array_equal(a, b)


def test_explain_selection_groups_and_shares():
    mask = np.array([True, True, False, True, False, True])
    sel = Selection(mask=mask, indices=np.flatnonzero(mask), scores=np.zeros(6), threshold=float("nan"),
                    detector="x")
    groups = pd.DataFrame({"sex": ["F", "F", "M", "M", "M", "F"], "race": ["W"] * 6})
    contrib = np.array([-0.3, -0.1, 5.0, -0.2, 9.0, 0.1])
    out = explain_selection(sel, groups, contrib)
    assert [d["group"] for d in out] == ["sex=F&race=W", "sex=M&race=W"]
    f, m = out
    assert f["n_selected"] == 3 and f["n_in_group"] == 3 and f["fraction_of_group"] == 1.0
    assert f["predicted_change"] == pytest.approx(-0.3) and m["predicted_change"] == pytest.approx(-0.2)
    assert f["share_of_predicted_change"] == pytest.approx(0.6) and m["share_of_predicted_change"] == pytest.approx(0.4)
    assert f["values"] == {"sex": "F", "race": "W"}
    with_labels = explain_selection(sel, groups, None, labels=np.array([1, 0, 0, 1, 0, 1]))
    assert {d["group"] for d in with_labels} == {"sex=F&race=W&label=1", "sex=F&race=W&label=0", "sex=M&race=W&label=1"}
    assert all(d["predicted_change"] is None for d in with_labels)
    with pytest.raises(InputError, match="predicted_contributions"):
        explain_selection(sel, groups, np.zeros(5))
    import json

    json.dumps(out)
