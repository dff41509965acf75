"""``label_noise``: the agreement rule picks ``loo_loss`` under uniform flips and ``harmful`` under a class-targeted
flip (digits, logistic regression), and its selection is exactly the chosen detector's."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tda_clean.config import HarmfulDetector, LabelNoiseDetector, SelfInfluenceDetector, parse_config
from tda_clean.data import load_bundle
from tda_clean.models.factory import build_model
from tda_clean.models.trainer import fit
from tda_clean.selection import FitContext, make_detector
from tda_clean.selection.label_noise import agreement, choose, top_rows
from tests.unit_helpers import torch_single_thread

_single_thread = pytest.fixture(scope="module", autouse=True)(torch_single_thread)
SCENARIOS = {"uniform": {"kind": "uniform_flip", "rate": 0.1},
             "class": {"kind": "class_flip", "source": 1, "target": 7, "rate": 0.4}}


def _digits(scenario: str):
    cfg = parse_config({"seed": 0, "data": {"kind": "digits"}, "scenario": SCENARIOS[scenario],
                        "model": {"kind": "logistic"}, "train": {"optimizer": "lbfgs", "l2": 1e-3, "epochs": 50,
                                                                  "device": "cpu"},
                        "tracking": {"enabled": False}})
    bundle = load_bundle(cfg)
    train = bundle.train
    model = build_model(cfg.model, train.feature_shape, train.n_classes, 0)
    fit(model, train.X, train.y, cfg.train, 0, X_val=bundle.val.X, y_val=bundle.val.y, progress=False)
    context = FitContext(seed=0, model=model, train_config=cfg.train, X_val=bundle.val.X, y_val=bundle.val.y,
                         n_classes=train.n_classes)
    return train.X, train.y, bundle.corrupted_mask, context


@pytest.mark.parametrize("scenario, expected", [("uniform", "loo_loss"), ("class", "harmful")])
def test_agreement_picks_the_detector_suited_to_the_flip(scenario, expected):
    X, y, truth, context = _digits(scenario)
    k = int(truth.sum())
    det = make_detector(LabelNoiseDetector(max_flagged=k, damping=0.0)).fit(X, y, context)
    assert det.info_["chosen"] == expected
    loo = make_detector(SelfInfluenceDetector(max_flagged=k, damping=0.0, score="loo_loss")).fit(X, y, context)
    harm = make_detector(HarmfulDetector(max_flagged=k, damping=0.0)).fit(X, y, context)
    overlap = agreement(top_rows(loo.scores_, k, False), top_rows(harm.scores_, k, True))
    assert det.info_["agreement"] == pytest.approx(overlap)
    picked = loo if expected == "loo_loss" else harm
    assert list(det.get_support(indices=True)) == list(picked.get_support(indices=True))
    np.testing.assert_allclose(det.scores_, picked.scores_)
    # the chosen detector finds the flips better than the other one does at the same budget
    other = harm if expected == "loo_loss" else loo
    assert truth[det.get_support()].sum() > truth[other.get_support()].sum()
    selection = det.to_selection()
    assert selection.detector == "label_noise" and selection.n_flagged <= k
    # what to do with the rows follows the choice: relabel loo_loss's (misfit labels), remove harmful's
    assert selection.recommended_action == ("relabel" if expected == "loo_loss" else "remove")
    wording = "leave-one-out loss" if expected == "loo_loss" else "lower val_loss"
    assert all(wording in reason for reason in selection.reasons)


def test_choose_and_agreement():
    assert agreement(np.array([1, 2, 3]), np.array([2, 3, 4])) == pytest.approx(0.5)
    assert agreement(np.array([], dtype=int), np.array([], dtype=int)) == 0.0   # an automatic budget of 0: harmful
    assert choose(0.5, 0.42) == "loo_loss" and choose(0.3, 0.42) == "harmful" and choose(0.42, 0.42) == "loo_loss"
    assert list(top_rows(np.array([0.5, -1.0, 2.0, 0.0]), 3, True)) == [2, 0]


@pytest.mark.parametrize("budget", [{"max_flagged": "auto"}, {"auto_budget": {}}])
def test_automatic_budget_is_accepted_and_not_wrapped(budget):
    from tda_clean.selection.label_noise import LabelNoiseSelector

    cfg = parse_config({"data": {"kind": "digits"}, "detector": {"kind": "label_noise", **budget}})
    assert cfg.detector.auto_budget is not None and cfg.detector.max_flagged is None
    assert type(make_detector(cfg.detector)) is LabelNoiseSelector   # it runs the budget curves itself


@pytest.mark.parametrize("scenario, expected", [("uniform", "loo_loss"), ("class", "harmful")])
def test_automatic_budget_decides_at_loo_loss_budget_and_takes_the_chosen_curve(scenario, expected):
    """The overlap is taken at loo_loss's automatic k (harmful ranked on the whole validation split); the flagged
    rows are exactly the chosen detector's own automatic-budget selection."""
    X, y, truth, context = _digits(scenario)
    context = replace(context, action="recommended")   # label_noise's default: loo_loss relabels, harmful removes
    det = make_detector(LabelNoiseDetector(max_flagged="auto", damping=0.0)).fit(X, y, context)
    loo = make_detector(SelfInfluenceDetector(max_flagged="auto", damping=0.0, score="loo_loss")).fit(
        X, y, replace(context, action="relabel"))
    harm = make_detector(HarmfulDetector(max_flagged=10, damping=0.0)).fit(X, y, context)   # whole validation split
    k = loo.curve_.chosen
    assert det.info_["agreement_budget"] == k > 0
    assert det.info_["agreement"] == pytest.approx(agreement(top_rows(loo.scores_, k, False),
                                                             top_rows(harm.scores_, k, True)))
    assert det.info_["chosen"] == expected
    picked = loo if expected == "loo_loss" else make_detector(HarmfulDetector(max_flagged="auto", damping=0.0)).fit(
        X, y, replace(context, action="remove"))
    assert list(det.get_support(indices=True)) == list(picked.get_support(indices=True))
    assert det.curve_.to_dict() == det.info_["auto_budget"] == picked.curve_.to_dict()   # NaN-free form
    assert det.info_["budget"] == det.curve_.chosen == det.get_support().sum()
    assert det.curve_.action == det.recommended_action_ == ("relabel" if expected == "loo_loss" else "remove")
    if expected == "loo_loss":          # uniform flips: a budget near the flips, mostly flips
        assert 0.5 * truth.sum() <= k <= 2 * truth.sum() and truth[det.get_support()].mean() > 0.5
    selection = det.to_selection()
    assert selection.detector == "label_noise" and selection.info["chosen"] == expected
    assert selection.info["auto_budget"]["chosen"] == selection.n_flagged


def _blobs_context(built: list, **extra) -> tuple[np.ndarray, np.ndarray, FitContext]:
    from tda_clean.config import LogisticConfig, TrainConfig
    from tests.unit_helpers import blobs

    X, y, _, _ = blobs(120, seed=3, n_flip=6)
    Xv, yv, _, _ = blobs(60, seed=4, n_flip=0)

    def factory(seed: int):
        built.append(seed)
        return build_model(LogisticConfig(), (2,), 2, seed)

    train = TrainConfig(optimizer="lbfgs", l2=1e-2, epochs=20, device="cpu", dtype="float64")
    return X, y, FitContext(seed=0, make_model=factory, train_config=train, X_val=Xv, y_val=yv, n_classes=2,
                            **extra)


def test_factory_only_context_trains_one_model_for_both_detectors():
    built: list = []
    X, y, context = _blobs_context(built)
    det = make_detector(LabelNoiseDetector(max_flagged=6, damping=0.0)).fit(X, y, context)
    assert built == [0] and det.info_["chosen"] in ("loo_loss", "harmful")


def test_factory_only_context_trains_the_model_once_with_the_automatic_budget():
    """Both detectors, both budget curves and their refits start from one trained model."""
    built: list = []
    X, y, context = _blobs_context(built)
    det = make_detector(LabelNoiseDetector(auto_budget={"rows": [3, 6, 12]}, damping=0.0)).fit(X, y, context)
    assert built == [0] and det.info_["auto_budget"]["k"] == [0, 3, 6, 12]


def test_automatic_budget_without_a_valid_candidate_is_refused_before_any_work():
    from tda_clean.errors import InputError

    built: list = []
    X, y, context = _blobs_context(built)
    with pytest.raises(InputError, match="detector.auto_budget.rows: no candidate budget"):
        make_detector(LabelNoiseDetector(auto_budget={"rows": [500]})).fit(X, y, context)
    assert built == []


@pytest.mark.parametrize("X_val", [None, np.zeros((0, 2))])
def test_no_validation_split_is_refused_before_any_work(X_val):
    from tda_clean.errors import InputError

    built: list = []
    X, y, context = _blobs_context(built)
    context = replace(context, X_val=X_val, y_val=None if X_val is None else np.zeros(0, int))
    with pytest.raises(InputError, match="detector.kind=label_noise: needs a validation split"):
        make_detector(LabelNoiseDetector(max_flagged=6)).fit(X, y, context)
    assert built == []                  # refused before a model was trained or a detector fitted


def test_the_printed_table_says_which_detector_the_rule_chose():
    from tda_clean.cli import format_table

    report = {"before": {"accuracy": 0.9}, "after": {"accuracy": 0.92}, "actions": {"relabel": 5}, "mlflow": {},
              "run_dir": "r", "gate": {"passed": True, "reasons": []},
              "selection": {"detector": "label_noise", "n_flagged": 5, "chosen": "loo_loss", "agreement": 0.58,
                            "min_agreement": 0.42, "agreement_budget": 162}}
    lines = format_table(report).splitlines()
    assert "label-noise rule: loo_loss (top-k overlap 0.58 at k = 162; loo_loss from 0.42)" in lines
    assert lines.index("detector label_noise: flagged 5") < lines.index("actions: relabel 5")
    assert not any(line.startswith("action:") for line in lines)   # no recommendation in the report: no line
    report["action"] = {"kind": "remove", "configured": "remove", "recommended": "relabel",
                        "reason": "as configured in action.kind; label_noise recommends relabel for loo_loss's rows"}
    with_action = format_table(report).splitlines()
    assert with_action[with_action.index("actions: relabel 5") + 1] == (
        "action: remove (as configured in action.kind; label_noise recommends relabel for loo_loss's rows)")
    del report["selection"]["agreement_budget"]
    assert "label-noise rule: loo_loss (top-k overlap 0.58; loo_loss from 0.42)" in format_table(report)
