"""Which way is better for each reported metric: the one table the release gate and the chart both read.

``"higher"``: accuracy, balanced accuracy, worst-group accuracy and every per-group ``accuracy_<cell>``.
``"lower"``: the fairness gaps (``demographic_parity_difference``, ``equalized_odds_difference``, 0 = parity)
and ``attack_success_rate`` (share of triggered inputs sent to the attacker's class).
Any other name has no direction (``None``).
"""
from __future__ import annotations

import math
from typing import Literal

Direction = Literal["higher", "lower"]

HIGHER_IS_BETTER = ("accuracy", "balanced_accuracy", "worst_group_accuracy")
LOWER_IS_BETTER = ("attack_success_rate", "demographic_parity_difference", "equalized_odds_difference")


def direction(metric: str) -> Direction | None:
    """``"higher"``/``"lower"`` is better for ``metric``; ``None`` when it has no direction."""
    if metric in HIGHER_IS_BETTER or metric.startswith("accuracy_"):
        return "higher"
    if metric in LOWER_IS_BETTER:
        return "lower"
    return None


def improvement(metric: str, before: float, after: float) -> float | None:
    """``after - before`` signed so that positive means better (``before - after`` for lower-is-better);
    ``None`` when ``metric`` has no direction or either value is NaN."""
    way = direction(metric)
    if way is None or math.isnan(before) or math.isnan(after):
        return None
    return after - before if way == "higher" else before - after
