"""Influence-based detectors: self-influence label issues, rows harmful to a validation objective, and
influence-guided relabelling. Registered as ``self_influence``, ``harmful`` and ``influence_relabel``.

All three need the trained model (``FitContext.model``; trained here from ``make_model`` + ``train_config``
when absent) and the trainer's ``l2`` (``FitContext.train_config.l2``, the Hessian contains it). The two
objective-driven detectors need the validation split (``X_val``, ``y_val`` and, for group objectives,
``groups_val``). Scores follow the selection convention: HIGHER = more suspicious / more harmful.
Budget: the top ``spec.budget.rows(n)`` rows (``max_flagged`` and/or ``fraction``; 5% when neither is set); the
objective-driven detectors never flag a row with a non-positive score (a row whose removal would not help).
Each selector takes its detector config whole as ``spec`` (``spec.influence`` is the influence spec).

``self_influence`` and ``harmful`` score every row through the engine's streamed passes: the training features
are read one block at a time (``X`` may be a ``np.memmap``) and ``harmful`` reduces the (m, n) influence matrix to
its per-row sum block by block (``RowSum``), so memory does not grow with n beyond the (n,) scores.
"""
from __future__ import annotations

from functools import partial
from typing import Any, ClassVar

import numpy as np

from tda_clean.config import HarmfulDetector, InfluenceRelabelDetector, SelfInfluenceDetector
from tda_clean.errors import InputError
from tda_clean.selection.base import BaseSelector, FitContext, influence_engine, register_selector, shard_ranges, top_k_mask

OBJECTIVES = ("val_loss", "worst_group_loss", "group_loss_gap", "demographic_parity_gap", "equalized_odds_gap")


class _InfluenceSelector(BaseSelector):
    name = "influence"
    spec_type: ClassVar[type]  # the detector config class (its defaults when no spec is given)

    def __init__(self, spec: Any = None):
        self.spec = self.spec_type() if spec is None else spec

    # ------------------------------------------------------------------------------------ helpers
    def _engine_objective(self, X: np.ndarray, y: np.ndarray, context: FitContext):
        """The engine on the context's trained model and the spec's validation objective."""
        engine = influence_engine(X, y, context, self.spec.influence, self.name)
        return engine, _objective(self.spec.objective, engine.model, context, self.spec.group_column)

    def _finish(self, scores: np.ndarray, positive_only: bool, info: dict[str, Any]) -> None:
        scores = np.asarray(scores, dtype=float)
        k = self.spec.budget.rows(len(scores))
        if positive_only:
            k = min(k, int((scores > 0).sum()))
        self.scores_ = scores
        self.support_ = top_k_mask(scores, k)
        self.threshold_ = float("nan")
        self.info_ = {"budget": k, **info}

    def reason(self, i: int) -> str:
        return f"{self.name} score {self.scores_[i]:.4g} (rank within the top {int(self.support_.sum())})"


def _self_influence_shard(engine, rows: tuple[int, int]) -> np.ndarray:
    """Self-influence of training rows ``range(*rows)`` (module level: picklable for Dask workers)."""
    return engine.self_influence(rows=slice(*rows))


def _influence_shard(engine, W, rows: tuple[int, int]) -> np.ndarray:
    """Influence (len(rows),) of training rows ``range(*rows)`` for ``W = A^-1 Q``, summed over the m outputs
    (reduced block by block: exactly ``scores_for(W, rows).sum(axis=0)``)."""
    from tda_clean.influence.reducers import RowSum

    return engine.scores_for(W, rows=slice(*rows), reducer=RowSum())


def sharded(context: FitContext, fn, n: int, axis: int) -> np.ndarray:
    """Run ``fn(rows)`` over the context's shards of ``range(n)`` and join the parts along ``axis``."""
    parts = context.map(fn, shard_ranges(n, context.shard_rows))
    return np.concatenate(parts, axis=axis)


def _objective(name: str, model, context: FitContext, group_column: str | None):
    """Build the validation objective ``name`` from the context's validation split."""
    from tda_clean.influence import (
        DemographicParityGap, EqualizedOddsGap, GroupLossDifference, MeanLoss, WorstGroupLoss,
    )

    if name not in OBJECTIVES:
        raise InputError(f"detector.objective: {name!r} is not one of {', '.join(OBJECTIVES)}")
    if context.X_val is None or context.y_val is None or len(context.X_val) == 0:
        raise InputError(f"detector.objective={name}: needs a validation split (X_val, y_val)")
    Xv, yv = context.X_val, context.y_val
    if name == "val_loss":
        return MeanLoss(Xv, yv)
    groups = _group_keys(context.groups_val, group_column, len(yv))
    if name == "worst_group_loss":
        return WorstGroupLoss(Xv, yv, groups)
    if name == "demographic_parity_gap":
        return DemographicParityGap(Xv, groups)
    if name == "equalized_odds_gap":
        return EqualizedOddsGap(Xv, yv, groups)
    # group_loss_gap: loss of the worst group minus that of the best group, as measured at the trained model
    probe = WorstGroupLoss(Xv, yv, groups)
    import torch

    with torch.no_grad():
        losses = {k: float(v) for k, v in probe._group_losses(model).items()}
    worst, best = max(losses, key=losses.get), min(losses, key=losses.get)
    return GroupLossDifference(Xv, yv, groups, worst, best)


def _group_keys(groups_val: Any, column: str | None, n: int) -> np.ndarray:
    if groups_val is None:
        raise InputError("detector.objective: group objectives need validation group columns (groups_val)")
    if hasattr(groups_val, "columns"):
        if column is not None:
            if column not in groups_val.columns:
                raise InputError(f"detector.group_column: {column!r} not in the group columns "
                                 f"({', '.join(map(str, groups_val.columns)) or 'none'})")
            keys = groups_val[column].astype(str).to_numpy(dtype=object)
        elif groups_val.shape[1] == 0:
            raise InputError("detector.objective: group objectives need at least one group column")
        else:
            keys = groups_val.astype(str).apply(lambda r: "&".join(f"{c}={v}" for c, v in r.items()), axis=1)
            keys = keys.to_numpy(dtype=object)
    else:
        keys = np.asarray(groups_val, dtype=object)
    if len(keys) != n:
        raise InputError(f"detector.objective: {n} validation rows but {len(keys)} group values")
    return keys


class SelfInfluenceSelector(_InfluenceSelector):
    """Self-influence ``g_i^T A^-1 (g_i + l2 theta*) / (n - 1)``, the predicted rise of the row's own loss when it is
    removed (high = the model had to bend to fit the row: likely label issue). With ``spec.score == "loo_loss"``
    the score is the row's training loss (cross-entropy of the given label, unregularised) plus that rise: the
    first-order leave-one-out loss of the given label (high = the label is improbable under a model that did not
    see the row), reported as ``loo_loss_`` (n,).

    ``suggested_labels_`` = the trained model's argmax prediction.
    """

    name = "self_influence"
    spec_type = SelfInfluenceDetector

    def fit(self, X: np.ndarray, y: np.ndarray, context: FitContext) -> "SelfInfluenceSelector":
        engine = influence_engine(X, y, context, self.spec.influence, self.name)
        engine.solver  # fit the curvature once, before the shards are sent out
        scores = sharded(context, partial(_self_influence_shard, engine), len(y), axis=0)
        self.suggested_labels_ = engine.predicted_labels()
        if getattr(self.spec, "score", "self_influence") == "loo_loss":
            from tda_clean.models.trainer import predict_proba

            own = predict_proba(engine.model, X)[np.arange(len(y)), np.asarray(y)]
            self.loo_loss_ = -np.log(np.clip(own, np.finfo(np.float64).tiny, None)) + scores
            scores = self.loo_loss_
        self._finish(scores, positive_only=False, info={**engine._info(), "score": self.spec.score})
        return self


class HarmfulSelector(_InfluenceSelector):
    """Rows whose removal most DECREASES the validation ``objective``: score = -influence (positive = harmful), the
    removal influence ``q^T A^-1 (g_i + l2 theta*) / (n - 1)`` (docs/methods.md#influence-functions)."""

    name = "harmful"
    spec_type = HarmfulDetector

    def fit(self, X: np.ndarray, y: np.ndarray, context: FitContext) -> "HarmfulSelector":
        engine, objective = self._engine_objective(X, y, context)
        W = engine.inverse_hvp(objective)
        influence = sharded(context, partial(_influence_shard, engine, W), len(y), axis=0)
        self._finish(-influence, positive_only=True, info={**engine._info(), "objective": self.spec.objective})
        self.contributions_ = influence  # (n,) first-order change of the objective when the row is removed
        return self

    def reason(self, i: int) -> str:
        return f"removing the row is predicted to lower {self.spec.objective} by {self.scores_[i]:.4g}"


class InfluenceRelabelSelector(HarmfulSelector):
    """Rows whose label flip most decreases the validation ``objective``; ``suggested_labels_`` = that label
    (the given label where no flip helps). score = predicted decrease of the objective for the best flip."""

    name = "influence_relabel"
    spec_type = InfluenceRelabelDetector

    def fit(self, X: np.ndarray, y: np.ndarray, context: FitContext) -> "InfluenceRelabelSelector":
        engine, objective = self._engine_objective(X, y, context)
        n_classes = context.n_classes or int(engine.model.head.out_features)
        gain = -engine.flip_influence(objective, n_classes)  # (n, C) predicted decrease; 0 at the given label
        gain[np.arange(len(y)), np.asarray(y)] = -np.inf
        best = gain.argmax(1)
        scores = gain[np.arange(len(y)), best]
        self.suggested_labels_ = np.where(scores > 0, best, np.asarray(y)).astype(np.int64)
        self._finish(scores, positive_only=True, info={**engine._info(), "objective": self.spec.objective})
        return self

    def reason(self, i: int) -> str:
        return (f"relabelling to {int(self.suggested_labels_[i])} is predicted to lower {self.spec.objective} "
                f"by {self.scores_[i]:.4g}")


register_selector("self_influence", SelfInfluenceSelector)
register_selector("harmful", HarmfulSelector)
register_selector("influence_relabel", InfluenceRelabelSelector)
