"""Backdoor-poison baselines as registered detectors (published figures: docs/methods.md).

* ``influence_threshold`` -- support of each training row for the target-class margin of poisoned queries
  (queries found like ``delta_influence``'s ``auto`` queries), averaged over queries, flagged above a robust z;
  training LOSS gradients, as in the paper's influence baseline. ``support = -influence`` (engine convention:
  positive influence = removing the row increases the objective).
* ``spectral_signature`` (Tran, Li, Madry 2018) -- per label, squared projection of the centred penultimate
  features on their top singular vector; the top ``eps_factor * expected_rate`` share of each class is flagged.
* ``activation_clustering`` (Chen et al. 2018) -- per label, 2-means on the top principal components of the
  penultimate features; the smaller cluster is flagged when it holds at most ``max_share`` of the class.

Self-influence (``self_influence``) and cleanlab (``cleanlab``) are registered elsewhere. Scores: HIGHER = more
suspicious.
"""
from __future__ import annotations

import math

import numpy as np

from tda_clean.config import DeltaInfluenceDetector, InfluenceThresholdDetector
from tda_clean.selection.base import (
    BaseSelector, FitContext, cap_flagged, influence_engine, register_selector, trained_model,
)
from tda_clean.selection.delta_influence import DeltaInfluenceSelector
from tda_clean.selection.delta_scores import penultimate, robust_z, spectral_outlier_scores


class InfluenceThresholdSelector(BaseSelector):
    name = "influence_threshold"

    def __init__(self, spec: InfluenceThresholdDetector = InfluenceThresholdDetector()):
        self.spec = spec

    def fit(self, X: np.ndarray, y: np.ndarray, context: FitContext) -> "InfluenceThresholdSelector":
        from tda_clean.influence import Margin

        X, y = np.asarray(X), np.asarray(y)
        spec = self.spec
        model = trained_model(X, y, context, self.name)
        finder = DeltaInfluenceSelector(DeltaInfluenceDetector(n_queries=spec.n_queries, target=spec.target,
                                                               scan_min_flip=spec.scan_min_flip,
                                                               no_trigger="class_outliers"))
        finder._check_settings(context.n_classes or int(y.max()) + 1)
        Xq, target, info = finder._auto_queries(model, X, y, context)
        engine = influence_engine(X, y, context, spec.influence, self.name, model=model)
        support = -engine.influence(Margin(Xq, target)).scores  # (Q, n)
        score = robust_z(support, axis=1).mean(0)
        cap = spec.budget.cap(len(y))
        self.scores_ = score
        self.support_ = cap_flagged(score > spec.z_threshold, score, cap)
        self.threshold_ = float(spec.z_threshold) if cap is None else float("nan")
        self.target_ = target
        self.info_ = {**info, **engine._info(), "target": target, "n_queries": int(len(Xq))}
        return self

    def reason(self, i: int) -> str:
        return f"mean robust z {self.scores_[i]:.3g} of support for class-{self.target_} queries > {self.spec.z_threshold}"


class _PerClassFeatureSelector(BaseSelector):
    """Scores each label's rows on the penultimate features of the trained model (``_score_class``)."""

    def fit(self, X: np.ndarray, y: np.ndarray, context: FitContext) -> "_PerClassFeatureSelector":
        X, y = np.asarray(X), np.asarray(y)
        F = penultimate(trained_model(X, y, context, self.name), X)
        self.scores_ = np.zeros(len(y))
        self.support_ = np.zeros(len(y), dtype=bool)
        for c in np.unique(y):
            rows = np.flatnonzero(y == c)
            self._score_class(F[rows], rows, context)
        self.threshold_ = float("nan")
        self.info_ = self._info()
        return self


class SpectralSignatureSelector(_PerClassFeatureSelector):
    name = "spectral_signature"

    def __init__(self, expected_rate: float = 0.05, eps_factor: float = 1.5):
        self.expected_rate = expected_rate
        self.eps_factor = eps_factor

    def _info(self) -> dict:
        return {"share_per_class": min(0.5, self.eps_factor * self.expected_rate)}

    def _score_class(self, F: np.ndarray, rows: np.ndarray, context: FitContext) -> None:
        s = spectral_outlier_scores(F)
        self.scores_[rows] = s / max(float(np.median(s)), 1e-12)   # comparable across classes
        k = int(math.floor(self._info()["share_per_class"] * len(rows)))
        if k:
            self.support_[rows[np.argsort(-s, kind="stable")[:k]]] = True

    def reason(self, i: int) -> str:
        return f"spectral signature {self.scores_[i]:.3g} x the class median (top {self.eps_factor}x expected rate)"


class ActivationClusteringSelector(_PerClassFeatureSelector):
    name = "activation_clustering"

    def __init__(self, n_components: int = 10, max_share: float = 0.35, seed: int = 0):
        self.n_components = n_components
        self.max_share = max_share
        self.seed = seed

    def _info(self) -> dict:
        return {"max_share": self.max_share}

    def _score_class(self, F: np.ndarray, rows: np.ndarray, context: FitContext) -> None:
        from sklearn.cluster import KMeans

        if len(rows) < 4:
            return
        C = F - F.mean(0)
        _, _, vt = np.linalg.svd(C, full_matrices=False)
        P = C @ vt[: min(self.n_components, vt.shape[0])].T
        labels = KMeans(2, n_init=10, random_state=self.seed + context.seed).fit_predict(P)
        small = int(np.argmin(np.bincount(labels, minlength=2)))
        share = float(np.mean(labels == small))
        # score: distance to the large cluster's centre, relative to its median distance
        big = P[labels != small]
        d = np.linalg.norm(P - big.mean(0), axis=1)
        self.scores_[rows] = d / max(float(np.median(d[labels != small])), 1e-12)
        if 0 < share <= self.max_share:
            self.support_[rows[labels == small]] = True

    def reason(self, i: int) -> str:
        return f"in the small activation cluster of its class (distance ratio {self.scores_[i]:.3g})"


register_selector("influence_threshold", InfluenceThresholdSelector)
register_selector("spectral_signature", SpectralSignatureSelector)
register_selector("activation_clustering", ActivationClusteringSelector)
