"""Score arithmetic of Δ-influence poison detection (:mod:`tda_clean.selection.delta_influence`): robust
normalisation of support changes, votes over query copies, spectral outlier scores, diverse query choice.

Shapes: ``S`` (Q, N + 1, n) supports of n training rows for Q queries, copy 0 the query itself; scores are
"higher = more suspicious" throughout."""
from __future__ import annotations

import numpy as np


def predict(model, X: np.ndarray) -> np.ndarray:
    from tda_clean.models.trainer import predict_proba

    return predict_proba(model, X)


def robust_z(D: np.ndarray, axis: int = -1) -> np.ndarray:
    """``(D - median) / (1.4826 MAD)`` along ``axis``; the scale is floored so constant rows give 0."""
    med = np.median(D, axis=axis, keepdims=True)
    mad = 1.4826 * np.median(np.abs(D - med), axis=axis, keepdims=True)
    floor = 1e-12 + 1e-9 * np.abs(D).max(axis=axis, keepdims=True)
    return (D - med) / np.maximum(mad, floor)


def penultimate(model, X: np.ndarray) -> np.ndarray:
    """``model.features(X)`` when the model has it, else the flattened inputs (float64)."""
    if hasattr(model, "features"):
        from tda_clean.influence.dualda import model_features

        return model_features(model, X)
    return np.asarray(X, dtype=np.float64).reshape(len(X), -1)


def spectral_outlier_scores(F: np.ndarray) -> np.ndarray:
    """Squared projection of centred rows on their top right-singular vector (Tran et al. 2018)."""
    if len(F) < 2:
        return np.zeros(len(F))
    C = F - F.mean(0, keepdims=True)
    _, _, vt = np.linalg.svd(C, full_matrices=False)
    return (C @ vt[0]) ** 2


def spread_top(candidates: np.ndarray, confidence: np.ndarray, groups: np.ndarray, k: int) -> np.ndarray:
    """Up to ``k`` candidates, most confident first, taken round-robin over ``groups`` (diverse queries)."""
    order = candidates[np.argsort(-confidence[candidates], kind="stable")]
    buckets: dict[int, list[int]] = {}
    for i in order:
        buckets.setdefault(int(groups[i]), []).append(int(i))
    keys = sorted(buckets, key=lambda g: -confidence[buckets[g][0]])
    out: list[int] = []
    while len(out) < k and any(buckets[g] for g in keys):
        for g in keys:
            if buckets[g] and len(out) < k:
                out.append(buckets[g].pop(0))
    return np.array(out, dtype=np.int64)


def delta_votes(S: np.ndarray, z_threshold: float, tol: int) -> tuple[np.ndarray, np.ndarray]:
    """Votes and continuous scores from supports ``S`` (Q, N + 1, n): copy 0 is the query itself.

    Returns ``votes`` (n,) = number of queries in which the row's normalised support change is below
    ``-z_threshold`` in at least ``N - tol`` copies, and ``score`` (n,) = mean over queries of the median over
    copies of ``-z`` (higher = stronger, more consistent collapse).
    """
    n_copies = S.shape[1] - 1
    D = S[:, 1:, :] - S[:, :1, :]                       # (Q, N, n) change of support
    Z = robust_z(D, axis=2)
    drops = (Z < -z_threshold).sum(1)                   # (Q, n) copies in which the row's support dropped
    votes = (drops >= n_copies - tol).sum(0)
    return votes, np.median(-Z, axis=1).mean(0)
