"""Release gate: thresholds on the after-model's metrics."""
from __future__ import annotations

from tda_clean.config import GateConfig

# config field -> (metric name, direction); "min" means the metric must be >= the threshold.
_RULES = {
    "min_accuracy": ("accuracy", "min"),
    "min_worst_group_accuracy": ("worst_group_accuracy", "min"),
    "max_attack_success_rate": ("attack_success_rate", "max"),
    "max_equalized_odds_difference": ("equalized_odds_difference", "max"),
}


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
