"""Scale-free cuts of Δ-influence's continuous scores (:mod:`tda_clean.selection.delta_influence`).

Two 1-D splits, both Otsu's (the optimal 2-means split of sorted values):

* :func:`split_high_cluster` locates the CLEAN rows: the low cluster of the pool's scores, and every row's robust z
  against it (``(s - median_low) / (1.4826 MAD_low)``);
* :func:`separated_high_group` decides, among the rows above that clean cluster, whether their log-scores fall into
  two well separated groups (a poison cluster above a tail of clean rows), by the share of the variance that lies
  BETWEEN the two groups (``eta`` in [0, 1]: 1 = two tight groups far apart, ~0.6-0.75 = one skewed tail).
"""
from __future__ import annotations

import numpy as np


def _otsu(v: np.ndarray) -> tuple[int, float]:
    """Sorted values ``v`` (k >= 2,): split position ``j`` (groups ``v[:j+1]`` / ``v[j+1:]``) of the optimal 2-means
    split and its between-group share of the total variance ``eta`` (0 when all values are equal)."""
    c1, c2 = np.cumsum(v), np.cumsum(v * v)
    i = np.arange(1, len(v))
    left = c2[:-1] - c1[:-1] ** 2 / i
    right = (c2[-1] - c2[:-1]) - (c1[-1] - c1[:-1]) ** 2 / (len(v) - i)
    j = int(np.argmin(left + right))
    total = c2[-1] - c1[-1] ** 2 / len(v)
    return j, float(1.0 - (left + right)[j] / total) if total > 1e-12 * max(1.0, float(c2[-1])) else 0.0


def split_high_cluster(score: np.ndarray, pool: np.ndarray) -> tuple[float, np.ndarray]:
    """Scale-free cut of ``score`` within ``pool`` (bool (n,)): the optimal 1-D 2-means split (Otsu) of the pooled
    scores, and every row's robust z against the LOW cluster (``(s - median_low) / (1.4826 MAD_low)``)."""
    v = np.sort(score[pool])
    if len(v) < 3:
        return float("inf"), np.zeros(len(score))
    k, _ = _otsu(v)                                     # split after position k
    cut = 0.5 * (v[k] + v[k + 1])
    low = v[: k + 1]
    med = np.median(low)
    mad = max(1.4826 * np.median(np.abs(low - med)), 1e-12 + 1e-9 * float(np.abs(v).max()))
    return float(cut), (score - med) / mad


def separated_high_group(score: np.ndarray, rows: np.ndarray) -> tuple[float, float]:
    """Otsu split of ``log(score)`` over ``rows`` (bool (n,); rows with a non-positive score are left out):
    ``(log_cut, eta)``. ``log_cut`` = midpoint between the two groups (``-inf`` and ``eta = 0`` with fewer than 3
    such rows); a row is in the upper group when ``log(score) > log_cut``. Scale-free: multiplying every score by
    a constant moves ``log_cut`` by its log and leaves ``eta`` unchanged."""
    sel = rows & (score > 0)
    if sel.sum() < 3:
        return float("-inf"), 0.0
    v = np.sort(np.log(score[sel]))
    j, eta = _otsu(v)
    return float(0.5 * (v[j] + v[j + 1])), eta
