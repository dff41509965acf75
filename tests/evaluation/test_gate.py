"""Release gate: thresholds pass/fail with reasons; a threshold on an unmeasured metric fails; a fairness threshold
the test split cannot measure (too few group cells of evaluation.min_group_size rows) is refused naming the cells."""
from __future__ import annotations

import numpy as np
import pytest

from tda_clean.config import GateConfig
from tda_clean.errors import InputError
from tda_clean.evaluation.gate import check_gate, check_gate_measurable

METRICS = {"accuracy": 0.85, "worst_group_accuracy": 0.6, "attack_success_rate": 0.05,
           "equalized_odds_difference": 0.12}


def test_no_thresholds_always_passes():
    assert check_gate(GateConfig(), {}) == (True, [])
    assert check_gate(GateConfig(), METRICS) == (True, [])


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
