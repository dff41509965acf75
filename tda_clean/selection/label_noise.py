"""``label_noise``: one detector for label noise of unknown kind, choosing between two influence detectors.

``self_influence`` with ``score: loo_loss`` (the first-order leave-one-out loss of the given label) finds flips the
model could not fit -- uniform noise; ``harmful`` on the validation loss finds rows whose removal lowers the loss
of clean validation rows -- also flips the model has learned as a pattern (class- or group-targeted), which
self-confidence ranks as ordinary rows. Under uniform noise both rank the same flipped rows first; under a
systematic flip ``loo_loss``'s top rows are hard but correctly labelled and ``harmful``'s are the flips, so the two
top-k sets barely overlap. The selector fits both, measures the Jaccard overlap of their top-k sets at the
budget k (``harmful``: only rows with a positive score) and keeps ``loo_loss`` when it is at least
``spec.min_agreement``, else ``harmful``.

With ``max_flagged: auto`` (``spec.auto_budget``) the budget comes from
:class:`~tda_clean.selection.budget_curve.AutoBudgetSelector`: ``loo_loss``'s automatic budget k_loo is the k of the
overlap (``harmful`` ranked on the whole validation split; k_loo = 0 gives overlap 0, so ``harmful``), and the
chosen detector's own automatic budget curve gives the flagged rows (``loo_loss``'s is the one already fitted).

Fitted state: ``scores_`` (n,) of the chosen detector (higher = more suspicious), ``support_`` its top-k,
``suggested_labels_`` (n,) the trained model's argmax (for ``relabel``), ``recommended_action_`` what to do with the
flagged rows (``relabel`` for ``loo_loss``'s, ``remove`` for ``harmful``'s; ``action.kind: recommended``, the
default action of ``label_noise``, applies it), ``loo_loss_`` and ``harmful_`` (n,) both detectors' scores,
``contributions_`` (n,) ``harmful``'s first-order change of the validation loss per removed row (negative = lower
loss), and ``info_`` with
``chosen``, ``agreement`` and ``budget`` (automatic budget: also ``agreement_budget`` = k_loo and the chosen
detector's curve ``auto_budget``; ``curve_`` is that :class:`~tda_clean.selection.budget_curve.BudgetCurve`).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from tda_clean.config import HarmfulDetector, LabelNoiseDetector, SelfInfluenceDetector
from tda_clean.errors import InputError
from tda_clean.selection.base import register_selector, trained_model
from tda_clean.selection.budget_curve import AutoBudgetSelector, check_budget_curve
from tda_clean.selection.influence_detectors import HarmfulSelector, SelfInfluenceSelector, _InfluenceSelector


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard overlap |a & b| / |a | b| of two sets of row positions (0 when both are empty)."""
    sa, sb = set(np.asarray(a).tolist()), set(np.asarray(b).tolist())
    union = len(sa | sb)
    return len(sa & sb) / union if union else 0.0


def choose(overlap: float, min_agreement: float = LabelNoiseDetector().min_agreement) -> str:
    """``loo_loss`` when the top-k sets agree at least ``min_agreement`` (Jaccard), else ``harmful``."""
    return "loo_loss" if overlap >= min_agreement else "harmful"


#: What each detector's rows should get: relabelled to the model's label (not fitted: the given label is the
#: outlier), or removed (``harmful``: the row's removal lowers the clean validation loss).
ACTION = {"loo_loss": "relabel", "harmful": "remove"}


def top_rows(scores: np.ndarray, k: int | None, positive_only: bool) -> np.ndarray:
    """Positions of the ``k`` highest of ``scores`` (n,) (all when ``k`` is None), highest first, ties by position;
    only positive scores when ``positive_only``."""
    scores = np.asarray(scores, dtype=float)
    order = np.argsort(-scores, kind="stable")
    if positive_only:
        order = order[scores[order] > 0]
    return order[:k]


class LabelNoiseSelector(_InfluenceSelector):
    """``loo_loss`` or ``harmful`` (validation loss), chosen by the agreement of their top-k sets (module doc)."""

    name = "label_noise"
    spec_type = LabelNoiseDetector
    own_auto_budget = True  # make_detector does not wrap it in AutoBudgetSelector: it runs the curves itself

    def fit(self, X: np.ndarray, y: np.ndarray, context) -> "LabelNoiseSelector":
        if context.X_val is None or context.y_val is None or len(context.X_val) == 0:
            raise InputError("detector.kind=label_noise: needs a validation split (X_val, y_val) for its harmful "
                             "scores")
        check_budget_curve(self.spec, len(y), len(context.y_val))  # an automatic budget's refusals, before any fit
        context = replace(context, model=trained_model(X, y, context, self.name))  # one model for every fit
        shared = self.spec.model_dump(include=set(SelfInfluenceDetector.model_fields) - {"kind", "score"})
        loo_spec = SelfInfluenceDetector(**shared, score="loo_loss")
        harm_spec = HarmfulDetector(**shared, objective="val_loss")
        # the budget curves simulate the action each detector's rows get: the configured one, or the recommended
        recommended = context.action == "recommended"
        loo_context = replace(context, action="relabel") if recommended else context
        harm_context = replace(context, action="remove") if recommended else context
        harm = HarmfulSelector(harm_spec.model_copy(update={"auto_budget": None})).fit(X, y, context)
        auto = self.spec.auto_budget is not None
        loo = (AutoBudgetSelector(loo_spec) if auto else SelfInfluenceSelector(loo_spec)).fit(X, y, loo_context)
        k = loo.curve_.chosen if auto else self.spec.budget.rows(len(y))
        overlap = agreement(top_rows(loo.scores_, k, False), top_rows(harm.scores_, k, True))
        chosen = choose(overlap, self.spec.min_agreement)
        picked = loo if chosen == "loo_loss" else (AutoBudgetSelector(harm_spec).fit(X, y, harm_context) if auto
                                                   else harm)
        self.recommended_action_ = ACTION[chosen]
        self.loo_loss_, self.harmful_ = loo.scores_, harm.scores_
        self.contributions_ = harm.contributions_
        self.suggested_labels_ = (loo.detector_ if auto else loo).suggested_labels_
        self.scores_ = picked.scores_
        self.support_ = picked.support_.copy()
        self.threshold_ = float("nan")
        info = (picked.detector_ if auto else picked).info_
        self.info_ = {**info, "chosen": chosen, "agreement": overlap, "min_agreement": self.spec.min_agreement}
        if auto:
            self.curve_ = picked.curve_
            self.info_["agreement_budget"] = int(k)
        return self

    def reason(self, i: int) -> str:
        chosen, overlap = self.info_["chosen"], self.info_["agreement"]
        why = (f"top-k overlap with harmful {overlap:.2f} >= {self.spec.min_agreement:g}" if chosen == "loo_loss"
               else f"top-k overlap with loo_loss {overlap:.2f} < {self.spec.min_agreement:g}")
        if chosen == "loo_loss":
            return f"leave-one-out loss of the given label {self.scores_[i]:.4g} ({why})"
        return f"removing the row is predicted to lower val_loss by {self.scores_[i]:.4g} ({why})"


register_selector("label_noise", LabelNoiseSelector)
