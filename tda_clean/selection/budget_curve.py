"""The automatic budget: how many rows a detector flags, chosen from a predicted-and-validated curve.

A detector config with ``auto_budget`` (``max_flagged: auto``; :class:`~tda_clean.config.influence.AutoBudget`) is
built as :class:`AutoBudgetSelector` around the detector (``make_detector``). Its ``fit``:

1. splits the validation split (seeded, stratified by label) into a SELECTION part and a HELD-OUT part;
2. fits the detector at the largest candidate budget with the selection part as its validation split, which gives
   a ranking of the training rows (most suspicious first; a candidate budget k takes its first k rows);
3. for k = 0 and every candidate k, applies the run's action to the top-k rows (``relabel`` to the detector's
   suggested labels when it has them; every other action is simulated as removal) and refits the trained model
   (warm start, the run's training config, early stopping on the selection part), then measures the detector's
   objective (``val_loss`` for detectors without one; the error rate with ``criterion: accuracy``) and the
   accuracy on both parts;
4. chooses k with :func:`choose_budget` (the largest selection-part decrease -- or the smallest k within one
   standard error of it -- among the candidates that cost no accuracy past the tolerance; confirmed on the
   held-out part, else a smaller candidate that holds, else 0).

Sign convention: ``predicted``, ``validated`` and ``held_out`` are CHANGES of the objective against the k = 0
refit (negative = the objective decreased = better). ``predicted`` is the detector's own first-order prediction
(the sum of its per-row ``contributions_`` over the top k, or minus the summed predicted decreases of
``influence_relabel``) on the selection part; NaN where the detector predicts no objective change (cleanlab,
self-influence, the group selectors' component path).
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from tda_clean.config.influence import AutoBudget
from tda_clean.errors import InputError
from tda_clean.selection.base import DETECTORS, BaseSelector, FitContext, trained_model

logger = logging.getLogger(__name__)
KEY = "detector.auto_budget"


@dataclass(frozen=True)
class BudgetCurve:
    """The evidence for the chosen budget. Per candidate, aligned, ``k[0] == 0`` (the refitted unchanged data):

    k:           candidate budgets (rows acted on), ascending.
    predicted:   the detector's predicted change of ``objective`` on the selection part (NaN when none).
    validated:   measured change of ``objective`` on the selection part after the refit.
    held_out:    measured change of ``objective`` on the held-out part after the refit.
    accuracy / accuracy_held_out: accuracy on the selection / held-out part after the refit (fraction).
    accuracy_se / accuracy_held_out_se: standard error of the paired accuracy difference to k = 0 (same rows).
    chosen:      the chosen budget (one of ``k``); ``reason`` says why in one sentence.
    """

    k: tuple[int, ...]
    predicted: tuple[float, ...]
    validated: tuple[float, ...]
    held_out: tuple[float, ...]
    accuracy: tuple[float, ...]
    accuracy_held_out: tuple[float, ...]
    accuracy_se: tuple[float, ...]
    accuracy_held_out_se: tuple[float, ...]
    chosen: int
    reason: str
    objective: str = "val_loss"
    action: str = "remove"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (NaN predicted values as None)."""
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        out["predicted"] = [None if math.isnan(v) else v for v in self.predicted]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BudgetCurve":
        data = dict(data)
        data["predicted"] = [float("nan") if v is None else v for v in data["predicted"]]
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def choose_budget(k, validated, accuracy, held_out, accuracy_held_out, tolerance: float, min_gain: float = 0.0,
                  accuracy_se=None, accuracy_held_out_se=None, row_values=None, rule: str = "max") -> tuple[int, str]:
    """The chosen budget and why, from curves of the same length with the k = 0 reference first.

    ``validated`` / ``held_out``: objective changes (negative = decrease); ``accuracy*``: fractions; ``*_se``:
    standard errors of the paired accuracy differences to k = 0 (default 0). A candidate COSTS accuracy when its
    accuracy is more than ``tolerance`` + 2 standard errors below ``accuracy[0]`` (a drop the evaluation rows
    cannot tell from noise does not count). Candidates are the ks that do not cost accuracy and whose decrease
    exceeds ``min_gain``; the one with the largest decrease is chosen (the smallest k on ties): the choice stops
    where the validated gain stops. ``rule="one_se"``: the smallest candidate whose decrease is within one
    standard error of the largest instead (standard error of the paired per-row difference; ``row_values``
    (len(k), m) gives the objective row by row on the selection part, for a mean objective such as ``val_loss``). It must hold out: held-out decrease > ``min_gain`` and no held-out accuracy cost; else
    the largest smaller candidate that holds (and decreases on the selection part);
    else 0.
    """
    k = [int(v) for v in k]
    gain, gain_out = -np.asarray(validated, float), -np.asarray(held_out, float)
    acc, acc_out = np.asarray(accuracy, float), np.asarray(accuracy_held_out, float)
    se = np.zeros(len(k)) if accuracy_se is None else np.asarray(accuracy_se, float)
    se_out = np.zeros(len(k)) if accuracy_held_out_se is None else np.asarray(accuracy_held_out_se, float)
    costly = [i for i in range(1, len(k)) if acc[i] < acc[0] - tolerance - 2 * se[i]]
    admissible = [i for i in range(1, len(k)) if gain[i] > min_gain and i not in costly]
    dropped = f"; accuracy fell past the tolerance at k={', '.join(str(k[i]) for i in costly)}" if costly else ""
    if not admissible:
        return 0, f"nothing worth cleaning: no candidate lowers the objective on the selection part{dropped}"
    top = max(admissible, key=lambda i: (gain[i], -i))
    best = top
    for i in admissible:  # the one-standard-error rule: the smallest k whose gain is within noise of the largest
        if i >= top or rule != "one_se":
            break
        noise = 0.0
        if row_values is not None:
            diff = np.asarray(row_values[i], float) - np.asarray(row_values[top], float)
            noise = float(diff.std()) / np.sqrt(max(1, len(diff) - 1))
        if gain[top] - gain[i] <= noise:
            best = i
            break
    stopped = (f"; k={k[top]} lowers it most ({-gain[top]:+.4g}), within one standard error" if best != top else "")
    dropped = stopped + dropped

    def holds(i: int) -> bool:
        return bool(gain_out[i] > min_gain and acc_out[i] >= acc_out[0] - tolerance - 2 * se_out[i])

    if holds(best):
        return k[best], (f"k={k[best]}: objective {-gain[best]:+.4g} on the selection part, held out "
                         f"({-gain_out[best]:+.4g}){dropped}")
    why = (f"held-out change {-gain_out[best]:+.4g}" if gain_out[best] <= min_gain else
           f"held-out accuracy {acc_out[best]:.4f} < {acc_out[0]:.4f} - {tolerance:g}")
    for i in sorted((i for i in admissible if i < best), reverse=True):
        if holds(i):
            return k[i], (f"k={k[best]} did not hold out ({why}); fell back to k={k[i]} "
                          f"(held-out change {-gain_out[i]:+.4g})")
    return 0, (f"nothing worth cleaning: k={k[best]} lowered the objective on the selection part "
               f"({-gain[best]:+.4g}) but did not hold out ({why}), nor did any smaller candidate")


def split_validation(y_val: np.ndarray, spec: AutoBudget, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(selection, held-out) positions of the validation rows: per label a seeded shuffle, ``selection_share``
    of each label's rows (rounded, at least one when it has two) to the selection part."""
    rng = np.random.default_rng([spec.seed, seed])
    sel, out = [], []
    for label in np.unique(y_val):
        rows = rng.permutation(np.flatnonzero(y_val == label))
        cut = min(len(rows) - 1, max(1, int(round(spec.selection_share * len(rows))))) if len(rows) > 1 else len(rows)
        sel.append(rows[:cut])
        out.append(rows[cut:])
    return np.sort(np.concatenate(sel)), np.sort(np.concatenate(out))


def check_budget_curve(detector, n_train: int, n_val: int) -> None:
    """Refuse, at data load, an automatic budget with no valid point: no candidate in ``[1, n_train - 1]``, or a
    validation split too small to split in two (:class:`InputError` naming the key)."""
    spec = getattr(detector, "auto_budget", None)
    if spec is None:
        return
    if not spec.candidates(n_train):
        key = "rows" if spec.rows is not None else "fractions"
        values = spec.rows if spec.rows is not None else spec.fractions
        raise InputError(f"{KEY}.{key}: no candidate budget lies in [1, {n_train - 1}] for {n_train} training rows "
                         f"({', '.join(map(str, values))}); give candidates below the training-set size")
    if n_val < 4:
        raise InputError(f"{KEY}: needs a validation split of at least 4 rows to split into a selection and a "
                         f"held-out part; it has {n_val} (raise split.val_fraction)")


class AutoBudgetSelector(BaseSelector):
    """The detector of ``spec`` (its config, with ``auto_budget`` set) with its budget chosen from the curve
    (module docstring). ``curve_`` is the :class:`BudgetCurve`; ``detector_`` the fitted inner detector."""

    def __init__(self, spec: Any):
        self.spec = spec

    @property
    def name(self) -> str:  # the inner detector's registered name
        return self.spec.kind

    def fit(self, X: np.ndarray, y: np.ndarray, context: FitContext) -> "AutoBudgetSelector":
        from tda_clean.progress import progress_bar

        auto: AutoBudget = self.spec.auto_budget
        check_budget_curve(self.spec, len(y), 0 if context.y_val is None else len(context.y_val))
        ks = auto.candidates(len(y))
        sel, out = split_validation(np.asarray(context.y_val), auto, context.seed)
        part_sel, part_out = _part(context, sel), _part(context, out)
        fixed = {"max_flagged": ks[-1], "fraction": None} if "fraction" in type(self.spec).model_fields else {
            "max_flagged": ks[-1]}
        inner = DETECTORS[self.spec.kind](self.spec.model_copy(update={"auto_budget": None, **fixed}))
        base = trained_model(X, y, context, self.spec.kind)   # one model for the detector and the refits
        inner.fit(X, y, replace(part_sel, model=base))
        ranking = inner.get_support(indices=True)
        ks = [0] + sorted({min(k, len(ranking)) for k in ks} - {0})
        relabel = context.action == "relabel" and getattr(inner, "suggested_labels_", None) is not None
        action = "relabel" if relabel else "remove"
        name, measure = _measures(self.spec, base, part_sel, part_out)
        objective, correct, row_values = [], [], []
        for k in progress_bar(len(ks), "budget curve", "refits", iterable=ks):
            model = _refit(base, X, y, ranking[:k], inner if relabel else None, context, part_sel)
            values, hits, losses = measure(model)
            objective.append(values)
            correct.append(hits)
            row_values.append(losses)
        objective = np.array(objective)  # (len(ks), 2): on the selection and held-out parts
        validated, held = objective[:, 0] - objective[0, 0], objective[:, 1] - objective[0, 1]
        (acc, se), (acc_out, se_out) = (_paired([c[part] for c in correct]) for part in (0, 1))
        if auto.criterion == "accuracy":  # the curve is the error rate's change
            name, validated, held = "error_rate", acc[0] - acc, acc_out[0] - acc_out
            row_values = [~c[0] for c in correct]
        chosen, reason = choose_budget(ks, validated, acc, held, acc_out, auto.tolerance, auto.min_gain, se, se_out,
                                       None if row_values[0] is None else row_values, auto.rule)
        if not len(ranking) and "reason" in getattr(inner, "info_", {}):  # the detector declined (e.g. gap check)
            reason = inner.info_["reason"]
        logger.info("automatic budget (%s): %s", self.spec.kind, reason)
        floats = lambda a: tuple(map(float, a))  # noqa: E731
        self.curve_ = BudgetCurve(
            k=tuple(ks), predicted=tuple(_predicted(inner, ranking, ks, relabel, name)), validated=floats(validated),
            held_out=floats(held), accuracy=floats(acc), accuracy_held_out=floats(acc_out), accuracy_se=floats(se),
            accuracy_held_out_se=floats(se_out), chosen=int(chosen), reason=reason, objective=name, action=action)
        mask = np.zeros(len(y), dtype=bool)
        mask[ranking[:chosen]] = True
        inner.support_ = mask
        inner.info_ = {**getattr(inner, "info_", {}), "budget": int(chosen), "auto_budget": self.curve_.to_dict()}
        self.detector_ = inner
        self.support_, self.scores_, self.threshold_ = mask, inner.scores_, inner.threshold_
        return self

    def reason(self, i: int) -> str:
        return self.detector_.reason(i)

    def to_selection(self):
        self._check_fitted()
        return self.detector_.to_selection()


def _part(context: FitContext, rows: np.ndarray) -> FitContext:
    """The context with its validation split restricted to ``rows``."""
    groups = context.groups_val
    if groups is not None:
        groups = groups.iloc[rows].reset_index(drop=True) if hasattr(groups, "iloc") else np.asarray(groups)[rows]
    return replace(context, X_val=context.X_val[rows], y_val=context.y_val[rows], groups_val=groups)


def _measures(spec, model, part_sel: FitContext, part_out: FitContext):
    """The objective's name and ``measure(model) -> ((objective_sel, objective_out), (correct_sel, correct_out),
    losses_sel)``: ``correct_*`` (m,) bool, the part's rows the model predicts right; ``losses_sel`` (m,) the
    selection part's per-row cross-entropy when the objective is ``val_loss`` (their mean), else None."""
    from tda_clean.models.trainer import predict_proba
    from tda_clean.selection.influence_detectors import _objective

    name = getattr(spec, "objective", "val_loss")
    column = getattr(spec, "group_column", None)
    objectives = [_objective(name, model, part, column) for part in (part_sel, part_out)]

    def measure(fitted):
        values = tuple(float(np.sum(o.values(fitted))) for o in objectives)
        probs = [predict_proba(fitted, p.X_val) for p in (part_sel, part_out)]
        hits = tuple(pr.argmax(1) == p.y_val for pr, p in zip(probs, (part_sel, part_out)))
        rows = np.arange(len(part_sel.y_val))
        losses = -np.log(np.clip(probs[0][rows, part_sel.y_val], 1e-300, None)) if name == "val_loss" else None
        return values, hits, losses

    return name, measure


def _paired(correct: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy per refit and the standard error of its paired difference to the first (same rows)."""
    hits = np.array(correct, dtype=float)  # (len(ks), m)
    diff = hits - hits[0]
    return hits.mean(1), diff.std(1) / np.sqrt(max(1, hits.shape[1] - 1))


def _refit(base, X, y, rows: np.ndarray, relabeller, context: FitContext, part_sel: FitContext):
    """``base`` refitted (warm start, the run's training config and seed) after the action on ``rows``."""
    from tda_clean.models.trainer import fit

    if relabeller is not None:
        y = y.copy()
        y[rows] = relabeller.suggested_labels_[rows]
    else:
        keep = np.ones(len(y), dtype=bool)
        keep[rows] = False
        X, y = X[keep], y[keep]
    model = copy.deepcopy(base)
    fit(model, X, y, context.train_config, context.seed, X_val=part_sel.X_val, y_val=part_sel.y_val, progress=False)
    return model


def _predicted(inner, ranking: np.ndarray, ks: list[int], relabel: bool, name: str) -> list[float]:
    """The detector's predicted objective change for each k (module docstring), NaN when it predicts none."""
    from tda_clean.selection.influence_detectors import InfluenceRelabelSelector

    if name == "error_rate":
        return [0.0] + [float("nan")] * (len(ks) - 1)
    if isinstance(inner, InfluenceRelabelSelector) and relabel:
        per_row = -np.asarray(inner.scores_, float)[ranking]
    elif getattr(inner, "contributions_", None) is not None and not relabel:
        per_row = np.asarray(inner.contributions_, float)[ranking]
    else:
        return [0.0] + [float("nan")] * (len(ks) - 1)
    total = np.concatenate([[0.0], np.cumsum(per_row)])
    return [float(total[k]) for k in ks]
