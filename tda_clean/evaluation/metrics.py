"""Metrics as pure functions on arrays. Names are identical before and after (same test set, same code).

Shapes: ``y_true``, ``y_pred`` (n,) int; ``groups`` a DataFrame (n, g) of strings; masks (n,) bool.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from tda_clean.data.dataset import GROUP_SEP, intersection_keys


def group_accuracies(y_true: np.ndarray, y_pred: np.ndarray, groups: pd.DataFrame) -> dict[str, float]:
    """``accuracy_<col>=<value>`` for every value of every group column, and for every intersectional cell
    (``accuracy_sex=Female&race=White``) when there are several columns."""
    out: dict[str, float] = {}
    correct = y_true == y_pred
    for column in groups.columns:
        values = groups[column].to_numpy(dtype=str)
        for value in sorted(set(values)):
            out[f"accuracy_{column}={value}"] = float(correct[values == value].mean())
    if groups.shape[1] > 1:
        keys = intersection_keys(groups)
        for key in sorted(set(keys)):
            out[f"accuracy_{key}"] = float(correct[keys == key].mean())
    return out


def fairness_gaps(y_true: np.ndarray, y_pred: np.ndarray, groups: pd.DataFrame) -> dict[str, float]:
    """Demographic-parity and equalized-odds differences (fairlearn) over intersectional groups.

    Defined for binary labels (positive class 1) only; returns {} otherwise.
    """
    if groups.shape[1] == 0 or len(np.unique(np.concatenate([y_true, y_pred]))) > 2:
        return {}
    from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

    sensitive = intersection_keys(groups)
    return {
        "demographic_parity_difference": float(demographic_parity_difference(y_true, y_pred, sensitive_features=sensitive)),
        "equalized_odds_difference": float(equalized_odds_difference(y_true, y_pred, sensitive_features=sensitive)),
    }


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, groups: pd.DataFrame,
                           exclude: tuple[str, ...] | list[str] = ()) -> dict[str, float]:
    """accuracy, balanced_accuracy, per-group accuracy, worst_group_accuracy and fairness gaps; cells
    (``intersection_keys``) in ``exclude`` count only in their own ``accuracy_<cell>`` (worst-group needs one
    kept cell, the gaps two)."""
    out = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
    }
    if groups.shape[1]:
        per_group = group_accuracies(y_true, y_pred, groups)
        cells = {k: v for k, v in per_group.items()
                 if (GROUP_SEP in k) == (groups.shape[1] > 1) and k.removeprefix("accuracy_") not in exclude}
        out.update(per_group)
        if cells:
            out["worst_group_accuracy"] = min(cells.values())
        keep = ~np.isin(intersection_keys(groups), list(exclude))
        if len(cells) > 1:
            out.update(fairness_gaps(y_true[keep], y_pred[keep], groups[keep]))
    return out


def attack_success_rate(pred_on_triggered: np.ndarray, target: int) -> float:
    """Share of triggered inputs (all from non-target classes) classified as ``target``."""
    return float(np.mean(pred_on_triggered == target)) if len(pred_on_triggered) else float("nan")


def detection_metrics(flagged: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 of a flagged mask against the ground-truth mask (both (n,) bool)."""
    tp = int(np.sum(flagged & truth))
    n_flagged, n_true = int(flagged.sum()), int(truth.sum())
    precision = tp / n_flagged if n_flagged else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "true_positives": tp, "n_true": n_true}
