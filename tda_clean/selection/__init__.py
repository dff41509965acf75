"""Detectors/selectors. Importing this package registers the built-in detectors."""
from __future__ import annotations

from tda_clean.selection import confident_learning, influence_detectors  # noqa: F401  (register detectors)
from tda_clean.selection import group_selectors  # noqa: F401  (registers group_first_order, group_second_order, d3m, random)
from tda_clean.selection import delta_influence, label_noise, poison_baselines  # noqa: F401  (+ label_noise, poison baselines)
from tda_clean.selection.base import DETECTORS, BaseSelector, FitContext, NotFittedError, Selection, register_detector, register_selector


def make_detector(cfg) -> BaseSelector:
    """Build the detector registered under ``cfg.kind``; with ``auto_budget`` set, wrapped in
    :class:`~tda_clean.selection.budget_curve.AutoBudgetSelector` (the budget chosen on the validation split), unless
    the detector chooses its budget itself (``own_auto_budget``: ``label_noise``)."""
    if getattr(cfg, "auto_budget", None) is not None and not getattr(DETECTORS[cfg.kind], "own_auto_budget", False):
        from tda_clean.selection.budget_curve import AutoBudgetSelector

        return AutoBudgetSelector(cfg)
    return DETECTORS[cfg.kind](cfg)


__all__ = ["BaseSelector", "DETECTORS", "FitContext", "NotFittedError", "Selection", "make_detector", "register_detector", "register_selector"]
