"""Each detector's reason for flagging a row, in plain words for a reviewer.

The selectors (``tda_clean/selection``) write a technical reason per flagged row (``Selection.reasons``);
:func:`plain_reason` rewrites it from the detector's name, the row's label and suggested label (class names)
and the numbers the technical text carries. An unknown detector keeps its own text.
"""
from __future__ import annotations

import re

_NUMBER = r"([-+]?\d*\.?\d+(?:e[-+]?\d+)?)"
_OBJECTIVE = {"val_loss": "the validation loss", "worst_group_loss": "the loss of the worst-off group",
              "group_loss_gap": "the loss gap between groups",
              "demographic_parity_gap": "the gap in positive-prediction rates between groups",
              "equalized_odds_gap": "the gap in error rates between groups"}
_GROUP = ("group", "group_first_order", "group_second_order", "group_mean_losses")


def _objective(technical: str) -> str:
    found = re.search(r"(?:change|lower) (\w+) by", technical)
    name = found.group(1) if found else "val_loss"
    return _OBJECTIVE.get(name, f"the validation {name.replace('_', ' ')}")


def _number(pattern: str, technical: str) -> str | None:
    found = re.search(pattern, technical)
    return found.group(1) if found else None


def plain_reason(detector: str, technical: str, label: str, suggested: str | None) -> str:
    """One or two sentences: why ``detector`` flagged a row labelled ``label`` (``suggested``: its suggested
    class name or None)."""
    other = f" It looks more like “{suggested}”." if suggested is not None and suggested != label else ""
    if detector == "cleanlab":
        given = _number(r"p\(given label\)=" + _NUMBER, technical)
        chance = "a low" if given is None else "less than 1%" if float(given) < 0.01 else f"only {float(given):.0%}"
        return (f"A model that never saw this row gives its label “{label}” {chance} probability.{other} "
                "Likely a wrong label.")
    if detector == "delta_influence":
        votes = _number(r"support of (\d+/\d+)", technical)
        target = _number(r"class-(\S+) queries", technical)
        share = f" ({votes.replace('/', ' of ')} test cases)" if votes else ""
        return (f"This row pushes the model towards class {target or '?'}, and that push disappears when the input "
                f"is slightly altered{share}: the pattern of a hidden trigger (backdoor).")
    if detector in ("influence", "harmful"):
        return f"Removing this row is predicted to lower {_objective(technical)}: the model is better off without it."
    if detector == "influence_relabel":
        return (f"Changing its label from “{label}” to “{suggested}” is predicted to lower {_objective(technical)}."
                if suggested is not None else f"A different label is predicted to lower {_objective(technical)}.")
    if detector == "label_noise":   # the reason names the detector it chose: loo_loss or harmful
        if "leave-one-out loss" in technical:
            return ("A model fitted without this row gives its label a high loss: likely a wrong label." + other)
        return (f"Removing this row is predicted to lower {_objective(technical)}: the model is better off without it "
                "(its label follows a pattern the clean validation rows do not share).")
    if detector == "self_influence":
        return ("The model leans unusually hard on this row to fit it (it is unlike the other rows of its class): "
                "often a wrong label or an odd example." + other)
    if detector in _GROUP:
        return (f"Removing the flagged rows together is predicted to improve {_objective(technical)}; this row is one "
                "of those that contribute most.")
    if detector == "d3m":
        return "This row pulls the model away from what helps the worst-off group on validation data."
    if detector == "random":
        return "Picked at random as a baseline for comparison, not because anything looks wrong."
    if detector == "influence_threshold":
        target = _number(r"class-(\S+) queries", technical)
        return (f"This row supports predictions of class {target or '?'} far more than typical rows do: "
                "a sign of a planted (poisoned) example.")
    if detector == "spectral_signature":
        return (f"The model's internal features for this row stand out from the rest of class “{label}”: "
                "a sign of a planted (poisoned) example.")
    if detector == "activation_clustering":
        return (f"The model groups this row into a small separate cluster within class “{label}”: "
                "a sign of a planted (poisoned) example.")
    return technical
