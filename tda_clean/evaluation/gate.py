"""Release gate on the after-model: no regression against the before-model, then optional thresholds.

1. No regression (``gate.no_regression``, on by default): for every metric of ``gate.regression_metrics``
   (default: accuracy, worst-group accuracy, both fairness gaps, attack success) measured (not NaN) on both
   models, the after-model may not be worse than the before-model by more than ``gate.tolerance`` (absolute, in
   metric units; 0.0 by default, so any worsening fails). Better/worse per metric comes from
   :mod:`tda_clean.evaluation.directions`.
2. Thresholds (``gate.min_accuracy`` ...): each one set must hold on the after-model; a threshold on a metric
   the run did not measure fails.
3. A fairness threshold the test split cannot measure is refused when the data is loaded, before any training
   (:func:`check_gate_measurable`).
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping

import numpy as np

from tda_clean.config import GateConfig
from tda_clean.errors import InputError
from tda_clean.evaluation.directions import direction, improvement

# config field -> (metric name, direction); "min" means the metric must be >= the threshold.
_RULES = {
    "min_accuracy": ("accuracy", "min"),
    "min_worst_group_accuracy": ("worst_group_accuracy", "min"),
    "max_attack_success_rate": ("attack_success_rate", "max"),
    "max_equalized_odds_difference": ("equalized_odds_difference", "max"),
}
# fairness fields -> how many test group cells of at least evaluation.min_group_size rows their metric needs
_CELLS_NEEDED = {"min_worst_group_accuracy": 1, "max_equalized_odds_difference": 2}


def regressions(before: Mapping[str, float], after: Mapping[str, float], tolerance: float,
                metrics: Iterable[str]) -> list[str]:
    """One reason per metric of ``metrics`` whose after-value is worse than its before-value by more than
    ``tolerance``; metrics missing or NaN on either side are not compared."""
    reasons = []
    for metric in metrics:
        if metric not in before or metric not in after:
            continue
        gain = improvement(metric, float(before[metric]), float(after[metric]))
        if gain is not None and gain < -tolerance - 1e-12:  # 1e-12: float noise of the subtraction
            reasons.append(f"{metric} regressed: {before[metric]:.4f} -> {after[metric]:.4f} "
                           f"({after[metric] - before[metric]:+.4f}; {direction(metric)} is better, "
                           f"gate.tolerance {tolerance})")
    return reasons


def check_gate(config: GateConfig, after: Mapping[str, float],
               before: Mapping[str, float] | None = None) -> tuple[bool, list[str]]:
    """``(passed, reasons)`` for the after-model's metrics ``after``; ``before`` (the before-model's metrics)
    is needed for the no-regression check, which is skipped when it is ``None``."""
    guard = config.no_regression and before is not None
    reasons = regressions(before, after, config.tolerance, config.regression_metrics) if guard else []
    for field, (metric, way) in _RULES.items():
        threshold = getattr(config, field)
        if threshold is None:
            continue
        value = after.get(metric)
        if value is None or math.isnan(value):
            reasons.append(f"gate.{field}: metric {metric!r} was not measured in this run")
        elif (way == "min" and value < threshold) or (way == "max" and value > threshold):
            sign = "<" if way == "min" else ">"
            reasons.append(f"{metric} = {value:.4f} {sign} {threshold} (gate.{field})")
    return not reasons, reasons


def check_gate_measurable(config: GateConfig, test_keys: np.ndarray, min_group_size: int, n_classes: int) -> None:
    """Refuse a fairness threshold the test split cannot measure (:class:`InputError` naming the gate key and the
    cells that are too small): ``worst_group_accuracy`` needs one group cell with at least ``min_group_size`` test
    rows, the equalized-odds difference two, and binary labels. ``test_keys`` (n_test,) str: the test rows'
    intersectional group keys (``''`` without group columns). Small cells alone are no error: without such a
    threshold they are left out of the aggregates and listed in ``report.json`` (``dataset.small_groups``)."""
    cells, counts = np.unique(np.asarray(test_keys, dtype=str), return_counts=True)
    for field, needed in _CELLS_NEEDED.items():
        if getattr(config, field) is None:
            continue
        metric = _RULES[field][0]
        if needed > 1 and n_classes != 2:
            raise InputError(f"gate.{field}: {metric} needs binary labels; the data has {n_classes} classes")
        if not len(cells) or (len(cells) == 1 and cells[0] == ""):
            raise InputError(f"gate.{field}: {metric} needs group columns (data.groups); the data has none")
        kept = int((counts >= min_group_size).sum())
        if kept < needed:
            small = [f"{str(c)!r} ({int(k)})" for c, k in zip(cells, counts) if k < min_group_size]
            listed = ", ".join(small[:5]) + (f" and {len(small) - 5} more" if len(small) > 5 else "")
            raise InputError(
                f"gate.{field}: {metric} needs {needed} test group cell{'s' if needed > 1 else ''} with at least "
                f"evaluation.min_group_size={min_group_size} rows; the test split has {kept}, too small (test rows): "
                f"{listed}; "
                f"lower evaluation.min_group_size or unset gate.{field}")
