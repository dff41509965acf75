"""Confident learning (cleanlab) on out-of-sample predicted probabilities."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold

from tda_clean.data.sources import MEMORY
from tda_clean.errors import InputError, one_line
from tda_clean.models.trainer import fit as fit_model
from tda_clean.models.trainer import predict_proba
from tda_clean.progress import progress_bar
from tda_clean.selection.base import BaseSelector, FitContext, cap_flagged, register_selector


def out_of_sample_probs(X: np.ndarray, y: np.ndarray, context: FitContext, folds: int) -> np.ndarray:
    """(n, n_classes) probabilities, each row predicted by a model (same family and training) not trained on it."""
    if context.make_model is None or context.train_config is None:
        raise InputError("detector.kind=cleanlab needs the run's model factory and training config")
    n_classes = context.n_classes or int(y.max()) + 1
    if np.bincount(y, minlength=n_classes).min() < folds:
        raise InputError(f"detector.folds={folds}: a class has fewer training rows than folds")
    probs = np.zeros((len(y), n_classes))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=context.seed)
    for k, (fit_idx, held_idx) in enumerate(progress_bar(folds, "cleanlab folds", "folds",
                                                         iterable=list(splitter.split(X, y)))):
        model = context.make_model(context.seed + k)
        fit_model(model, X[fit_idx], y[fit_idx], context.train_config, context.seed + k,
                  X_val=context.X_val, y_val=context.y_val, progress=False)
        probs[held_idx] = predict_proba(model, X[held_idx])
    return probs


def given_probs(path, n: int, n_classes: int) -> np.ndarray:
    """The user's out-of-sample probabilities (n, n_classes): a ``.npy`` file or held by ``clean()``; checked."""
    try:
        probs = MEMORY[str(path)] if str(path) in MEMORY else np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"detector.pred_probs_path: cannot read {path} as a .npy array: {one_line(exc)}") from None
    if probs.shape != (n, n_classes):
        raise InputError(f"detector.pred_probs_path: {path} has shape {probs.shape}; expected (n_train, n_classes) = "
                         f"({n}, {n_classes})")
    probs = probs.astype(np.float64)
    if not (np.isfinite(probs).all() and (probs >= 0).all() and np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)):
        raise InputError(f"detector.pred_probs_path: {path}: each row must be probabilities (>= 0, summing to 1)")
    return probs


class ConfidentLearningSelector(BaseSelector):
    """Flags label issues with ``cleanlab.filter.find_label_issues`` and suggests the out-of-sample argmax.

    ``scores_`` = 1 − cleanlab's self-confidence label quality (higher = more likely mislabeled).
    ``max_flagged`` keeps only the highest-scoring issues. ``pred_probs_path``: the user's own out-of-sample
    probabilities (:func:`given_probs`) instead of cross-validation (no model is trained).
    """

    name = "cleanlab"

    def __init__(self, folds: int = 5, filter_by: str = "prune_by_noise_rate", max_flagged: int | None = None,
                 pred_probs_path: Path | None = None):
        self.folds = folds
        self.filter_by = filter_by
        self.max_flagged = max_flagged
        self.pred_probs_path = pred_probs_path

    def fit(self, X: np.ndarray, y: np.ndarray, context: FitContext) -> "ConfidentLearningSelector":
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores

        probs = (out_of_sample_probs(X, y, context, self.folds) if self.pred_probs_path is None else
                 given_probs(self.pred_probs_path, len(y), context.n_classes or int(y.max()) + 1))
        # n_jobs=1: forked pool workers would be killed at exit under Prefect (noisy TerminationSignal traces)
        issues = find_label_issues(labels=y, pred_probs=probs, filter_by=self.filter_by, n_jobs=1)
        self.scores_ = 1.0 - get_label_quality_scores(y, probs, method="self_confidence")
        self.support_ = cap_flagged(issues, self.scores_, self.max_flagged)
        self.threshold_ = float("nan")
        self.pred_probs_ = probs
        self.suggested_labels_ = probs.argmax(axis=1)
        source = {"folds": self.folds} if self.pred_probs_path is None else {"pred_probs_path": str(self.pred_probs_path)}
        self.info_ = {**source, "filter_by": self.filter_by,
                      "out_of_sample_accuracy": float((self.suggested_labels_ == y).mean())}
        return self

    def reason(self, i: int) -> str:
        given = 1.0 - self.scores_[i]
        return (f"cleanlab: out-of-sample p(given label)={given:.3f}; suggested label {self.suggested_labels_[i]} "
                f"(p={self.pred_probs_[i].max():.3f})")


register_selector("cleanlab", ConfidentLearningSelector)
