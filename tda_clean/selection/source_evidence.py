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


def pixel_shares(X: np.ndarray, y: np.ndarray, rows: np.ndarray, region: np.ndarray, target: int,
                 reference: np.ndarray, k: int = 10, X_extra: np.ndarray | None = None,
                 block: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``(share (len(rows),), share_extra (len(X_extra),))``: for training ``rows`` (positions into ``X`` (n, [C,] H, W)
    / ``y`` (n,)) and for the extra images ``X_extra`` (m, [C,] H, W) (e.g. clean validation rows of the target class),
    the share of their ``k`` nearest training rows among ``reference`` (bool (n,); a row never counts itself) whose
    label is not ``target``, Euclidean on the pixels OUTSIDE the trigger ``region`` (H, W) bool -- the trigger is left
    out, so a poison's neighbours are of its source class. Zeros when ``reference`` holds fewer than ``k`` rows."""
    rows = np.asarray(rows, dtype=np.int64)
    keep = ~np.broadcast_to(region, X.shape[1:]).reshape(-1)
    parts = [np.asarray(X).reshape(len(X), -1)[:, keep]]
    n_extra = 0 if X_extra is None else len(X_extra)
    if n_extra:
        parts.append(np.asarray(X_extra).reshape(n_extra, -1)[:, keep])
    ref = np.flatnonzero(reference)
    if len(ref) < k or not len(rows) + n_extra:
        return np.zeros(len(rows)), np.zeros(n_extra)
    F = np.concatenate(parts) if n_extra else parts[0]
    queries = np.concatenate([rows, np.arange(len(X), len(X) + n_extra)])
    share = (y[nearest_rows(F, queries, ref, k, block)] != target).mean(1)
    return share[:len(rows)], share[len(rows):]


def pixel_rules(model, X: np.ndarray, y: np.ndarray, pool: np.ndarray, flagged: np.ndarray, gap_z: np.ndarray,
                erase: tuple[np.ndarray, np.ndarray], target: int, X_val_target: np.ndarray | None,
                spec) -> tuple[np.ndarray, np.ndarray]:
    """``(added (n,) bool, vetoed (n,) bool)`` from :func:`pixel_shares` of the ``pool`` rows, with the found trigger
    ``erase = (region, fill)`` and the detector's settings ``spec`` (a ``DeltaInfluenceDetector``: ``pixel_share``,
    ``pixel_min_gap_z``, ``pixel_veto_share``, ``source_neighbours`` = k; reference: every training row but the
    pool rows above ``erase_min_gap_z``, so poisons of one source class do not hide each other).

    * added: pool rows not ``flagged`` whose Δ gap (``gap_z`` (n,), robust deviations above the clean cluster) exceeds
      ``pixel_min_gap_z``, whose erased image the model gives a target probability below 0.5, and whose share is at
      least ``pixel_share`` AND above the share of every clean validation row of the target class (``X_val_target``):
      the neighbour statistic is calibrated per class, so a target class whose clean images neighbour other classes
      (coats and pullovers) adds nothing. ``pixel_share=None``: nothing added.
    * vetoed: pool rows whose share is at most ``pixel_veto_share`` (every pixel neighbour is of the target class: a
      clean image of the target). ``pixel_veto_share=None``: nothing vetoed.
    """
    region, fill = erase
    min_share, min_gap_z, veto_share = spec.pixel_share, spec.pixel_min_gap_z, spec.pixel_veto_share
    k, suspect_gap_z = spec.source_neighbours, spec.erase_min_gap_z
    n = len(y)
    added, vetoed = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    rows = np.flatnonzero(pool)
    if not len(rows) or (min_share is None and veto_share is None):
        return added, vetoed
    reference = ~(pool & (gap_z > suspect_gap_z))
    share, val_share = pixel_shares(X, y, rows, region, target, reference, k, X_val_target)
    if veto_share is not None:
        vetoed[rows[share <= veto_share + 1e-9]] = True
    if min_share is not None:
        need = max(min_share - 1e-9, float(val_share.max()) + 1e-9) if len(val_share) else min_share - 1e-9
        cand = rows[~flagged[rows] & (gap_z[rows] > min_gap_z) & (share >= need)]
        if len(cand):
            from tda_clean.selection.trigger_search import erase_probs

            _, after = erase_probs(model, X[cand], region, fill, target)
            added[cand[after < 0.5]] = True
    return added, vetoed
