"""Release gate: no regression against the before-model by default (direction per metric, tolerance); thresholds
pass/fail with reasons; a threshold on an unmeasured metric fails; a fairness threshold the test split cannot
measure (too few group cells of evaluation.min_group_size rows) is refused naming the cells."""
from __future__ import annotations

import numpy as np
import pytest

from tda_clean.config import GateConfig
from tda_clean.errors import InputError
from tda_clean.evaluation.gate import check_gate, check_gate_measurable

METRICS = {"accuracy": 0.85, "worst_group_accuracy": 0.6, "attack_success_rate": 0.05,
           "equalized_odds_difference": 0.12}


def test_no_thresholds_and_no_before_metrics_pass():
    assert check_gate(GateConfig(), {}) == (True, [])
    assert check_gate(GateConfig(), METRICS) == (True, [])


def test_default_gate_blocks_any_regression_of_a_guarded_metric():
    """No thresholds set: an after-model worse than the before-model on accuracy (higher is better) or on a
    fairness gap / attack success (lower is better) fails; per-group cells and balanced accuracy are not guarded."""
    before = dict(METRICS, balanced_accuracy=0.8, **{"accuracy_sex=F": 0.7})
    assert check_gate(GateConfig(), before, before) == (True, [])
    better = dict(before, accuracy=0.86, attack_success_rate=0.01, equalized_odds_difference=0.1)
    assert check_gate(GateConfig(), better, before) == (True, [])
    passed, reasons = check_gate(GateConfig(), dict(before, accuracy=0.839), before)
    assert passed is False
    assert reasons == ["accuracy regressed: 0.8500 -> 0.8390 (-0.0110; higher is better, gate.tolerance 0.0)"]
    passed, reasons = check_gate(GateConfig(), dict(before, equalized_odds_difference=0.197), before)
    assert passed is False
    assert reasons == ["equalized_odds_difference regressed: 0.1200 -> 0.1970 (+0.0770; lower is better, "
                       "gate.tolerance 0.0)"]
    unguarded = dict(before, balanced_accuracy=0.5, **{"accuracy_sex=F": 0.1})
    assert check_gate(GateConfig(), unguarded, before) == (True, [])


@pytest.mark.parametrize("metric, worse", [("worst_group_accuracy", 0.59), ("attack_success_rate", 0.06),
                                           ("demographic_parity_difference", 0.31)])
def test_every_guarded_metric_is_compared_in_its_direction(metric, worse):
    before = dict(METRICS, demographic_parity_difference=0.3)
    passed, reasons = check_gate(GateConfig(), dict(before, **{metric: worse}), before)
    assert passed is False and len(reasons) == 1 and reasons[0].startswith(f"{metric} regressed")


def test_regression_metrics_choose_what_is_compared():
    before = dict(METRICS, demographic_parity_difference=0.1)
    after = dict(before, demographic_parity_difference=0.177, accuracy=0.86)
    assert check_gate(GateConfig(), after, before)[0] is False
    narrowed = GateConfig(regression_metrics=["accuracy", "worst_group_accuracy", "equalized_odds_difference"])
    assert check_gate(narrowed, after, before) == (True, [])
    assert check_gate(narrowed, dict(after, accuracy=0.84), before)[0] is False


def test_unknown_regression_metric_is_a_config_error():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="regression_metrics"):
        GateConfig(regression_metrics=["accuracy_sex=F"])


def test_tolerance_and_switching_the_check_off():
    before, after = METRICS, dict(METRICS, accuracy=0.848)
    assert check_gate(GateConfig(tolerance=0.002), after, before) == (True, [])
    assert check_gate(GateConfig(tolerance=0.001), after, before)[0] is False
    assert check_gate(GateConfig(no_regression=False), after, before) == (True, [])


def test_metric_measured_on_one_side_only_or_nan_is_not_compared():
    before = {"accuracy": 0.9, "attack_success_rate": float("nan")}
    assert check_gate(GateConfig(), {"accuracy": 0.9, "attack_success_rate": 0.9}, before) == (True, [])
    assert check_gate(GateConfig(), {"accuracy": 0.9, "worst_group_accuracy": 0.1}, before) == (True, [])


def test_thresholds_and_regressions_are_both_reported():
    before = dict(METRICS)
    passed, reasons = check_gate(GateConfig(min_accuracy=0.9), dict(METRICS, accuracy=0.84), before)
    assert passed is False
    assert [r.split(" ")[0] for r in reasons] == ["accuracy", "accuracy"] and "gate.min_accuracy" in reasons[1]


def test_all_thresholds_met():
    cfg = GateConfig(min_accuracy=0.8, min_worst_group_accuracy=0.6, max_attack_success_rate=0.1,
                     max_equalized_odds_difference=0.12)
    assert check_gate(cfg, METRICS) == (True, [])  # boundaries are inclusive


@pytest.mark.parametrize("field, value, reason", [
    ("min_accuracy", 0.9, "accuracy = 0.8500 < 0.9 (gate.min_accuracy)"),
    ("min_worst_group_accuracy", 0.65, "worst_group_accuracy = 0.6000 < 0.65 (gate.min_worst_group_accuracy)"),
    ("max_attack_success_rate", 0.01, "attack_success_rate = 0.0500 > 0.01 (gate.max_attack_success_rate)"),
    ("max_equalized_odds_difference", 0.1,
     "equalized_odds_difference = 0.1200 > 0.1 (gate.max_equalized_odds_difference)"),
])
def test_each_threshold_fails_with_reason(field, value, reason):
    passed, reasons = check_gate(GateConfig(**{field: value}), METRICS)
    assert passed is False
    assert reasons == [reason]


def test_several_failures_are_all_listed():
    cfg = GateConfig(min_accuracy=0.9, max_attack_success_rate=0.01, min_worst_group_accuracy=0.5)
    passed, reasons = check_gate(cfg, METRICS)
    assert not passed
    assert len(reasons) == 2
    assert any(r.startswith("accuracy = ") for r in reasons)
    assert any(r.startswith("attack_success_rate = ") for r in reasons)


def test_missing_metric_fails():
    passed, reasons = check_gate(GateConfig(max_attack_success_rate=0.1), {"accuracy": 0.99})
    assert passed is False
    assert reasons == ["gate.max_attack_success_rate: metric 'attack_success_rate' was not measured in this run"]


def test_zero_valued_metric_is_measured_not_missing():
    assert check_gate(GateConfig(max_attack_success_rate=0.0), {"attack_success_rate": 0.0}) == (True, [])
    passed, reasons = check_gate(GateConfig(min_accuracy=0.1), {"accuracy": 0.0})
    assert not passed and reasons == ["accuracy = 0.0000 < 0.1 (gate.min_accuracy)"]


KEYS = np.array(["sex=F"] * 30 + ["sex=M"] * 25 + ["sex=X"] * 3)


def test_fairness_gate_on_measurable_cells_is_accepted():
    check_gate_measurable(GateConfig(min_worst_group_accuracy=0.5, max_equalized_odds_difference=0.1), KEYS, 20, 2)
    check_gate_measurable(GateConfig(min_accuracy=0.9), np.full(10, ""), 20, 3)  # no fairness threshold: no check


@pytest.mark.parametrize("gate, keys, min_size, classes, message", [
    ({"max_equalized_odds_difference": 0.1}, KEYS, 26, 2,
     "gate.max_equalized_odds_difference: equalized_odds_difference needs 2 test group cells with at least "
     "evaluation.min_group_size=26 rows; the test split has 1, too small (test rows): 'sex=M' (25), 'sex=X' (3); "
     "lower evaluation.min_group_size or unset gate.max_equalized_odds_difference"),
    ({"min_worst_group_accuracy": 0.5}, KEYS, 31, 2,
     "gate.min_worst_group_accuracy: worst_group_accuracy needs 1 test group cell with at least "
     "evaluation.min_group_size=31 rows; the test split has 0, too small (test rows): 'sex=F' (30), 'sex=M' (25), "
     "'sex=X' (3); lower evaluation.min_group_size or unset gate.min_worst_group_accuracy"),
    ({"max_equalized_odds_difference": 0.1}, KEYS, 20, 3,
     "gate.max_equalized_odds_difference: equalized_odds_difference needs binary labels; the data has 3 classes"),
    ({"min_worst_group_accuracy": 0.5}, np.full(10, ""), 20, 2,
     "gate.min_worst_group_accuracy: worst_group_accuracy needs group columns (data.groups); the data has none"),
])
def test_fairness_gate_the_test_split_cannot_measure_is_refused(gate, keys, min_size, classes, message):
    with pytest.raises(InputError) as err:
        check_gate_measurable(GateConfig(**gate), keys, min_size, classes)
    assert str(err.value) == message
