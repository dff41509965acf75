"""Release gate: thresholds on the after-model's metrics, and the refusal of a fairness threshold the test split
cannot measure (checked when the data is loaded, before any training)."""
from __future__ import annotations

import numpy as np

from tda_clean.config import GateConfig
from tda_clean.errors import InputError

# config field -> (metric name, direction); "min" means the metric must be >= the threshold.
_RULES = {
    "min_accuracy": ("accuracy", "min"),
    "min_worst_group_accuracy": ("worst_group_accuracy", "min"),
    "max_attack_success_rate": ("attack_success_rate", "max"),
    "max_equalized_odds_difference": ("equalized_odds_difference", "max"),
}
# fairness fields -> how many test group cells of at least evaluation.min_group_size rows their metric needs
_CELLS_NEEDED = {"min_worst_group_accuracy": 1, "max_equalized_odds_difference": 2}


def check_gate(config: GateConfig, metrics: dict[str, float]) -> tuple[bool, list[str]]:
    """``(passed, reasons)``; a threshold on a metric the run did not measure fails the gate."""
    reasons = []
    for field, (metric, direction) in _RULES.items():
        threshold = getattr(config, field)
        if threshold is None:
            continue
        value = metrics.get(metric)
        if value is None:
            reasons.append(f"gate.{field}: metric {metric!r} was not measured in this run")
        elif (direction == "min" and value < threshold) or (direction == "max" and value > threshold):
            sign = "<" if direction == "min" else ">"
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
