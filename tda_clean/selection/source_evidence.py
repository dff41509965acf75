"""Second evidence of Δ-influence (:mod:`tda_clean.selection.delta_influence`) inside the target class, once a
trigger region is found: a dirty-label poison is an image of ANOTHER class labelled as the target, so with the
trigger region erased (set to a fill image, e.g. the validation inputs' per-pixel median)

* the model no longer predicts the target for it (``p_target_after`` small), and
* in the model's penultimate feature space its nearest training rows carry other labels (``other_class_share``).

Clean rows of the target class keep the target and have target-class neighbours. Shapes: images ``X`` (n, [C,] H, W),
``region`` (H, W) bool, features ``F`` (n, d); shares in [0, 1], higher = more suspicious.
"""
from __future__ import annotations

import numpy as np

from tda_clean.selection.trigger_search import erase_region, nearest_rows


def other_class_share(F: np.ndarray, y: np.ndarray, rows: np.ndarray, target: int, reference: np.ndarray,
                      k: int = 10, block: int = 256) -> np.ndarray:
    """(len(rows),): for each training row in ``rows`` (positions into ``F`` (n, d) / ``y`` (n,)), the share of its
    ``k`` nearest rows (Euclidean on ``F``) among ``reference`` (bool (n,); the row itself never counts) whose label
    is not ``target``. ``reference`` should leave out rows suspected of carrying the trigger: poisons of one source
    class are each other's neighbours and would hide each other. Zeros when ``reference`` holds fewer than ``k``
    rows."""
    ref = np.flatnonzero(reference)
    if len(ref) < k or not len(rows):
        return np.zeros(len(rows))
    return (y[nearest_rows(F, rows, ref, k, block)] != target).mean(1)


def source_evidence(model, X: np.ndarray, y: np.ndarray, rows: np.ndarray, region: np.ndarray, fill: np.ndarray,
                    target: int, reference: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """``(p_target_after (len(rows),), other_share (len(rows),))`` for training ``rows`` with the trigger ``region``
    erased: the model's target probability on the erased image, and :func:`other_class_share` of the erased image's
    penultimate features among the erased ``reference`` rows (features of every training row are computed with the
    region erased, so the trigger does not pull poisons towards the target class)."""
    from tda_clean.selection.delta_scores import penultimate, predict

    rows = np.asarray(rows, dtype=np.int64)
    Xe = erase_region(X, region, fill)
    p_after = predict(model, Xe[rows])[:, target]
    F = penultimate(model, Xe)
    return p_after, other_class_share(F, y, rows, target, reference, k)
