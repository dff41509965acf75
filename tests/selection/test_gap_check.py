"""The group selectors' gap check (``min_gap_confidence``, tda_clean/selection/gap_check.py): nothing flagged when
the validation split's groups do not differ, the budget selected when a gap is planted, seeded, and validated."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tda_clean.config import LogisticConfig, TrainConfig, parse_config
from tda_clean.errors import InputError
from tda_clean.models.factory import build_model
from tda_clean.models.trainer import fit as fit_model
from tda_clean.selection import FitContext, Selection, make_detector
from tda_clean.selection.gap_check import check_gap
from tests.unit_helpers import torch_single_thread

_single_thread = pytest.fixture(scope="module", autouse=True)(torch_single_thread)
TRAIN = TrainConfig(optimizer="lbfgs", l2=1e-2, epochs=30, device="cpu", dtype="float64")
KINDS = ("group_first_order", "group_second_order", "d3m")


def _rows(n: int, rng):
    X = rng.normal(size=(n, 3))
    y = (1.5 * X[:, 0] - X[:, 1] + rng.logistic(size=n) > 0).astype(np.int64)
    return X, y


def _planted(n: int, seed: int):
    """Group "b" (30%) loses positives whatever its features: a true gap in labels and predictions."""
    rng = np.random.default_rng(seed)
    X, y = _rows(n, rng)
    g = rng.choice(["a", "b"], size=n, p=[0.7, 0.3])
    y[(g == "b") & (rng.random(n) < 0.8)] = 0
    X[:, 2] += np.where(g == "b", 2.0, 0.0)  # the group is visible to the model
    return X, y, g


def _context(X, y, Xv, yv, gv, seed=0):
    model = build_model(LogisticConfig(), (3,), 2, 0)
    fit_model(model, X, y, TRAIN, 0, progress=False)
    return FitContext(seed=seed, train_config=TRAIN, model=model, X_val=Xv, y_val=yv,
                      groups_val=pd.DataFrame({"g": gv}), n_classes=2)


@pytest.fixture(scope="module")
def planted():
    X, y, g = _planted(400, 0)
    Xv, yv, gv = _planted(1000, 1)
    return X, y, g, _context(X, y, Xv, yv, gv)


@pytest.fixture(scope="module")
def no_gap(planted):
    """Validation rows whose two groups hold the SAME rows (every row twice, once per group): identical label
    and prediction distributions, so every group gap is exactly zero."""
    X, y, _, ctx = planted
    Xv, yv = _rows(150, np.random.default_rng(2))
    gv = np.array(["a"] * 150 + ["b"] * 150)
    return X, y, _context(X, y, np.vstack([Xv, Xv]), np.concatenate([yv, yv]), gv)


def _det(kind: str, **kw):
    spec = {"kind": kind, "damping": 0.0, "params": "all", "max_flagged": 12, **kw}
    if kind != "d3m":
        spec.setdefault("objective", "equalized_odds_gap")
        spec.setdefault("components", "on")
    if kind == "group_second_order":
        spec.setdefault("rounds", 1)
        spec.setdefault("iters", 5)
    return make_detector(parse_config({"data": {"kind": "digits"}, "detector": spec}).detector)


@pytest.mark.parametrize("kind", KINDS)
def test_no_gap_flags_nothing_and_says_so(kind, no_gap, tmp_path):
    X, y, ctx = no_gap
    sel = _det(kind).fit(X, y, ctx).to_selection()
    assert sel.n_flagged == 0 and sel.info["budget"] == 0
    assert sel.info["reason"].startswith("nothing worth cleaning")
    check = sel.info["gap_check"]
    assert check["observed"] == 0.0 and check["p_value"] >= 0.99 and not check["significant"]
    sel.save(tmp_path / "selection.npz")  # JSON-able, like every selection's info
    assert Selection.load(tmp_path / "selection.npz").info["gap_check"] == check


@pytest.mark.parametrize("kind", KINDS)
def test_check_off_selects_the_budget(kind, planted, no_gap):
    X, y, _, ctx = planted
    sel = _det(kind, min_gap_confidence=None).fit(X, y, ctx).to_selection()
    assert sel.n_flagged == 12 and "gap_check" not in sel.info
    X, y, ctx = no_gap  # d3m's group losses still have a gradient where the rate gaps have none
    assert _det("d3m", min_gap_confidence=0).fit(X, y, ctx).to_selection().n_flagged == 12


@pytest.mark.parametrize("kind", KINDS)
def test_planted_gap_keeps_acting(kind, planted):
    X, y, _, ctx = planted
    sel = _det(kind).fit(X, y, ctx).to_selection()
    assert sel.n_flagged == 12 and sel.info["budget"] == 12
    check = sel.info["gap_check"]
    assert check["significant"] and check["p_value"] <= 0.05 and check["observed"] > 0.05


def test_rate_gap_of_the_right_objective(planted):
    """Equalized odds compares rates within each true label; demographic parity over all rows."""
    _, _, _, ctx = planted
    prob = np.eye(2)[np.r_[np.zeros(50, int), np.ones(50, int)]]  # predictions = the labels
    y = np.r_[np.zeros(50, int), np.ones(50, int)]
    g = np.r_[["a"] * 40 + ["b"] * 10, ["a"] * 10 + ["b"] * 40]  # base rates differ by group, errors do not
    eo = check_gap("equalized_odds_gap", prob, y, g, 0.95, 0)
    dp = check_gap("demographic_parity_gap", prob, y, g, 0.95, 0)
    assert eo.observed == 0.0 and not eo.significant
    assert dp.observed == pytest.approx(0.6) and dp.significant


def test_check_is_seeded(planted):
    rng = np.random.default_rng(5)
    prob = rng.dirichlet([1, 1], size=300)
    y, g = rng.integers(0, 2, 300), rng.choice(["a", "b", "c"], 300)
    runs = [check_gap("equalized_odds_gap", prob, y, g, 0.95, seed) for seed in (3, 3, 4)]
    assert runs[0] == runs[1]
    assert runs[0].observed == runs[2].observed  # only the permutations depend on the seed
    X, y_tr, _, ctx = planted
    a, b = (_det("group_first_order").fit(X, y_tr, ctx).to_selection() for _ in range(2))
    assert np.array_equal(a.mask, b.mask) and a.info["gap_check"] == b.info["gap_check"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("value", [1.0, 1.5, -0.1, "high"])
def test_bad_confidence_names_the_key(kind, value):
    with pytest.raises(InputError, match="detector.min_gap_confidence"):
        parse_config({"data": {"kind": "digits"}, "detector": {"kind": kind, "min_gap_confidence": value}})


def test_the_automatic_budget_reports_the_gap_checks_reason(no_gap):
    """With ``max_flagged: auto`` a declined gap check is the curve's reason too (not "no candidate lowers ...")."""
    X, y, ctx = no_gap
    sel = _det("group_first_order", max_flagged="auto").fit(X, y, ctx).to_selection()
    assert sel.n_flagged == 0
    curve = sel.info["auto_budget"]
    assert curve["chosen"] == 0 and "not distinguishable from zero" in curve["reason"], curve["reason"]
