"""The automatic budget (tda_clean.selection.budget_curve): the chooser on constructed curves (including a gain
that does not hold out), the seeded validation split, the chosen k on small injected-noise problems, determinism,
and the config's bad input."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from tda_clean.config import (
    AutoBudget, CleanlabDetector, GroupSecondOrderDetector, HarmfulDetector, InfluenceRelabelDetector, TrainConfig,
)
from tda_clean.errors import InputError
from tda_clean.models.factory import LogisticRegression
from tda_clean.models.trainer import fit
from tda_clean.selection import make_detector
from tda_clean.selection.base import FitContext
from tda_clean.selection.budget_curve import (
    AutoBudgetSelector, BudgetCurve, check_budget_curve, choose_budget, split_validation,
)

K = [0, 10, 20, 40, 80]
FLAT = [0.9, 0.9, 0.9, 0.9, 0.9]


# ----------------------------------------------------------------------------------------------- the chooser
def test_chooser_takes_the_largest_decrease_where_the_gain_stops():
    validated = [0.0, -0.02, -0.05, -0.05, -0.01]  # gain stops at 20 (40 ties it: the smaller wins)
    k, reason = choose_budget(K, validated, FLAT, validated, FLAT, tolerance=0.005)
    assert k == 20 and reason.startswith("k=20: objective -0.05")


def test_chooser_takes_the_smallest_k_within_one_standard_error_of_the_best():
    rng = np.random.default_rng(0)
    validated = np.array([0.0, -0.02, -0.04, -0.045, -0.05])  # 40 and 80 add 0.005 and 0.01 over 20

    def rows(noise: float) -> np.ndarray:  # (len(K), 400) per-row losses whose means follow ``validated``
        values = 0.5 + validated[:, None] + noise * rng.normal(size=(len(K), 400))
        return values - values.mean(1, keepdims=True) + (0.5 + validated)[:, None]

    # one standard error of a difference ~0.014 (noise 0.2): 20 is within it of 80, 10 is not
    noisy = rows(0.2)
    k, reason = choose_budget(K, validated, FLAT, validated, FLAT, tolerance=0.005, row_values=noisy, rule="one_se")
    assert k == 20 and "k=80 lowers it most (-0.05), within one standard error" in reason
    assert choose_budget(K, validated, FLAT, validated, FLAT, tolerance=0.005, row_values=noisy)[0] == 80  # max
    k, _ = choose_budget(K, validated, FLAT, validated, FLAT, tolerance=0.005, row_values=rows(0.001), rule="one_se")
    assert k == 80


def test_chooser_falls_back_when_the_gain_does_not_hold_out():
    validated = [0.0, -0.02, -0.04, -0.06, -0.08]
    held_out = [0.0, -0.01, -0.03, +0.01, +0.02]  # the selection part's best (80) is worse on the held-out part
    k, reason = choose_budget(K, validated, FLAT, held_out, FLAT, tolerance=0.005)
    assert k == 20 and "k=80 did not hold out" in reason and "fell back to k=20" in reason


def test_chooser_returns_zero_when_nothing_holds_out():
    validated = [0.0, -0.02, -0.04, -0.06, -0.08]
    held_out = [0.0, 0.01, 0.02, 0.01, 0.03]
    k, reason = choose_budget(K, validated, FLAT, held_out, FLAT, tolerance=0.005)
    assert k == 0 and reason.startswith("nothing worth cleaning")
    k, reason = choose_budget(K, [0.0, 0.01, 0.02, 0.0, 0.05], FLAT, held_out, FLAT, tolerance=0.005)
    assert k == 0 and "no candidate lowers the objective" in reason


def test_chooser_skips_candidates_that_cost_accuracy_beyond_noise():
    validated = [0.0, -0.02, -0.04, -0.06, -0.08]
    accuracy = [0.90, 0.90, 0.90, 0.88, 0.87]  # 40 and 80 lose 2-3 points
    k, reason = choose_budget(K, validated, accuracy, validated, FLAT, tolerance=0.005)
    assert k == 20 and "accuracy fell past the tolerance at k=40, 80" in reason
    # the same drop within two standard errors of the paired difference is noise: not a cost
    k, _ = choose_budget(K, validated, accuracy, validated, FLAT, tolerance=0.005, accuracy_se=[0, 0, 0, 0.02, 0.02])
    assert k == 80
    # a held-out accuracy cost rejects like a held-out loss
    k, reason = choose_budget(K, validated, FLAT, validated, accuracy, tolerance=0.005)
    assert k == 20 and "held-out accuracy" in reason


def test_chooser_respects_min_gain():
    validated = [0.0, -0.001, -0.002, -0.003, -0.004]
    assert choose_budget(K, validated, FLAT, validated, FLAT, tolerance=0.005, min_gain=0.01)[0] == 0
    assert choose_budget(K, validated, FLAT, validated, FLAT, tolerance=0.005, min_gain=0.0)[0] == 80


def test_validation_split_is_seeded_stratified_and_disjoint():
    y = np.array([0] * 30 + [1] * 10)
    spec = AutoBudget()
    sel, out = split_validation(y, spec, seed=3)
    assert not set(sel) & set(out) and len(sel) + len(out) == 40
    assert np.bincount(y[sel]).tolist() == [15, 5]
    again = split_validation(y, spec, seed=3)
    assert (again[0] == sel).all()
    assert not (split_validation(y, spec, seed=4)[0] == sel).all()


# ---------------------------------------------------------------------------------------- config, bad input
def test_config_shorthand_and_conflicts():
    assert HarmfulDetector(max_flagged="auto").budget.auto == AutoBudget()
    assert CleanlabDetector.model_validate({"max_flagged": "auto"}).auto_budget == AutoBudget()
    with pytest.raises(ValidationError, match="remove max_flagged"):
        HarmfulDetector.model_validate({"max_flagged": 5, "auto_budget": {}})
    with pytest.raises(ValidationError, match="fractions must lie in"):
        AutoBudget(fractions=(0.0, 0.1))
    with pytest.raises(ValidationError, match="at least one candidate"):
        AutoBudget(fractions=())
    with pytest.raises(ValidationError):
        AutoBudget(tolerance=-0.1)


def test_a_curve_with_no_valid_point_is_refused_naming_the_key():
    detector = HarmfulDetector(auto_budget={"rows": [500, 900]})
    with pytest.raises(InputError, match=r"^detector\.auto_budget\.rows: no candidate budget lies in \[1, 399\]"):
        check_budget_curve(detector, n_train=400, n_val=100)
    with pytest.raises(InputError, match=r"^detector\.auto_budget: needs a validation split"):
        check_budget_curve(HarmfulDetector(max_flagged="auto"), n_train=400, n_val=3)
    check_budget_curve(HarmfulDetector(max_flagged=5), n_train=4, n_val=0)  # no automatic budget: nothing checked
    assert AutoBudget(rows=(500, 30)).candidates(400) == [30]


# ------------------------------------------------------------------------------ injected noise, end to end
def noisy_problem(seed: int, n: int = 800, n_val: int = 600, rate: float = 0.08, d: int = 5):
    """A logistic problem with ``rate`` of the training labels flipped; returns X, y, flipped, context."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=d) / np.sqrt(d)

    def draw(m):
        X = rng.normal(size=(m, d))
        return X, (rng.random(m) < 1 / (1 + np.exp(-4 * X @ w))).astype(np.int64)

    X, y = draw(n)
    Xv, yv = draw(n_val)
    flipped = rng.choice(n, int(rate * n), replace=False)
    y[flipped] = 1 - y[flipped]
    cfg = TrainConfig(optimizer="lbfgs", l2=1e-3, epochs=50, dtype="float64", device="cpu")
    torch.manual_seed(seed)
    model = LogisticRegression(d, 2)
    fit(model, X, y, cfg, seed=seed, progress=False)
    groups = pd.DataFrame({"g": np.where(Xv[:, 0] > 0, "a", "b")})
    context = FitContext(seed=seed, model=model, make_model=lambda s: LogisticRegression(d, 2), train_config=cfg,
                         X_val=Xv, y_val=yv, groups_val=groups, n_classes=2)
    return X, y, flipped, context


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("detector, action", [
    (HarmfulDetector(max_flagged="auto", damping=0.0, dtype="float64"), "remove"),
    (InfluenceRelabelDetector(max_flagged="auto", damping=0.0, dtype="float64"), "relabel"),
], ids=["harmful-remove", "relabel"])
def test_chosen_budget_is_near_the_number_of_flipped_labels(seed, detector, action):
    X, y, flipped, context = noisy_problem(seed)
    selector = make_detector(detector)
    assert isinstance(selector, AutoBudgetSelector)
    selection = selector.fit(X, y, replace(context, action=action)).to_selection()
    curve = BudgetCurve.from_dict(selection.info["auto_budget"])
    assert selection.detector == detector.kind and selection.n_flagged == curve.chosen == selection.info["budget"]
    assert 0.5 * len(flipped) <= curve.chosen <= 1.5 * len(flipped), curve.reason
    assert np.isin(selection.indices, flipped).mean() >= 0.6  # the chosen rows are mostly the flipped ones
    assert curve.action == action and curve.k[0] == 0 and curve.validated[0] == 0.0
    i = curve.k.index(curve.chosen)
    assert curve.validated[i] < 0 and curve.held_out[i] < 0  # a decrease on both parts
    # the detector's prediction tracks the measured change where the ranking is still clean
    assert np.sign(curve.predicted[1]) == np.sign(curve.validated[1]) == -1


def test_curve_is_deterministic_given_the_seed():
    X, y, _, context = noisy_problem(3, n=400, n_val=300)
    spec = HarmfulDetector(max_flagged="auto", damping=0.0, dtype="float64")
    first = make_detector(spec).fit(X, y, context).to_selection()
    second = make_detector(spec).fit(X, y, context).to_selection()
    assert first.info["auto_budget"] == second.info["auto_budget"]
    assert (first.indices == second.indices).all()


def test_accuracy_criterion_measures_the_error_rate():
    X, y, flipped, context = noisy_problem(1)
    spec = HarmfulDetector(auto_budget={"criterion": "accuracy"}, damping=0.0, dtype="float64")
    curve = make_detector(spec).fit(X, y, context).to_selection().info["auto_budget"]
    assert curve["objective"] == "error_rate" and curve["predicted"][1:] == [None] * (len(curve["k"]) - 1)
    assert np.allclose(curve["validated"], np.array(curve["accuracy"][0]) - curve["accuracy"])
    assert curve["chosen"] in curve["k"] and curve["reason"]  # accuracy moves in steps of one row: coarse


def test_group_selector_and_cleanlab_take_the_automatic_budget():
    X, y, flipped, context = noisy_problem(2, n=400, n_val=300)
    grid = {"rows": [8, 16, 24, 32, 48]}
    for spec, action in ((GroupSecondOrderDetector(auto_budget=grid, objective="val_loss", damping=0.0,
                                                   method="greedy", steps=8), "remove"),
                         (CleanlabDetector(auto_budget=grid, folds=3), "relabel")):
        selection = make_detector(spec).fit(X, y, replace(context, action=action)).to_selection()
        curve = selection.info["auto_budget"]
        # candidates beyond the detector's own flags are capped to them (cleanlab: its label issues)
        assert curve["k"][:5] == [0, 8, 16, 24, 32] and curve["k"][-1] <= 48, curve["k"]
        assert selection.n_flagged == curve["chosen"] > 0, curve["reason"]
        assert np.isin(selection.indices, flipped).mean() >= 0.25, (spec.kind, curve["chosen"])  # 3x the 8% base rate


@pytest.mark.parametrize("predicted", [[0.0, -0.01, -0.02], [0.0, None, None]], ids=["predicted", "none"])
def test_curve_plot_is_written(tmp_path, predicted):
    from tda_clean.evaluation.plots import plot_budget_curve

    curve = BudgetCurve(k=(0, 5, 10), predicted=tuple(np.nan if v is None else v for v in predicted),
                        validated=(0.0, -0.01, -0.015), held_out=(0.0, -0.008, -0.01), accuracy=(0.9, 0.91, 0.91),
                        accuracy_held_out=(0.9, 0.9, 0.91), accuracy_se=(0.0, 0.01, 0.01),
                        accuracy_held_out_se=(0.0, 0.01, 0.01), chosen=10, reason="k=10: test").to_dict()
    assert curve["predicted"][1:] == ([-0.01, -0.02] if predicted[1] is not None else [None, None])
    path = plot_budget_curve(curve, tmp_path / "curve.png", title="t")
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert BudgetCurve.from_dict(curve).chosen == 10


def test_factory_only_context_trains_the_model_once():
    """With only a model factory in the context, the detector and the budget curve's refits start from the same
    trained model: the factory builds one model (the refits are warm-started copies of it)."""
    X, y, _, context = noisy_problem(1, n=400, n_val=300)
    built = []

    def factory(seed: int):
        built.append(seed)
        return LogisticRegression(X.shape[1], 2)

    spec = HarmfulDetector(auto_budget={"rows": [8, 16, 32]}, damping=0.0, dtype="float64")
    selection = make_detector(spec).fit(X, y, replace(context, model=None, make_model=factory)).to_selection()
    assert len(built) == 1 and selection.info["auto_budget"]["k"] == [0, 8, 16, 32]
