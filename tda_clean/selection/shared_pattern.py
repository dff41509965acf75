"""The trigger as the flagged rows' shared pixels: a data-side estimate that needs no model.

A dirty-label backdoor stamps ONE pattern on every poison. Once Δ-influence has flagged a set of rows that are
mostly poisons, the pixels where those rows agree with each other (their median, within ``tol``) but where
clean images rarely take that value are the trigger's pixels -- whatever its place, shape or pattern, and
whether or not the model's reconstruction covered all of it. A training row that shows the same values on
(nearly) all of those pixels carries the trigger. A blended trigger mixes the pattern with each image, so its
pixels seldom agree and few or none are found; its mark is on each pixel's distribution instead
(:mod:`~tda_clean.selection.blend_pattern`), and :func:`pattern_flags` takes the estimate under which more of the
flagged rows carry the trigger (a blend over a plain background agrees on a few of its pixels, and so does a
flagged set drawn unevenly from the source classes where their images are plain: a "stamp" that most poisons
do not match).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from tda_clean.config import SharedPatternRule
from tda_clean.selection.blend_pattern import estimate_blend

_MIN_REFERENCE = 10     # fewer validation rows outside the target class: the whole validation split is the reference
_VETO_QUANTILE = 0.9    # a flagged row scoring at most this quantile of the clean target-class rows is unflagged


@dataclass(frozen=True)
class SharedPattern:
    """``pixels``: bool of one image's shape ([C,] H, W), the trigger's estimated elements; ``values``: the
    flagged rows' per-element median (same shape; meaningful where ``pixels``); ``tol``: the match tolerance."""

    pixels: np.ndarray
    values: np.ndarray
    tol: float

    @property
    def size(self) -> int:
        return int(self.pixels.sum())

    def match(self, X: np.ndarray) -> np.ndarray:
        """(n,) share of the pattern's elements on which each image of ``X`` (n, [C,] H, W) is within ``tol``
        of the pattern (0.0 for an empty pattern)."""
        if not self.size:
            return np.zeros(len(X))
        F = np.asarray(X).reshape(len(X), -1)[:, self.pixels.reshape(-1)]
        return (np.abs(F - self.values.reshape(-1)[self.pixels.reshape(-1)]) <= self.tol).mean(1)


def shared_pattern(flagged: np.ndarray, reference: np.ndarray, rule: SharedPatternRule) -> SharedPattern:
    """Elements where at least ``rule.agree`` of the ``flagged`` images (m, [C,] H, W) lie within ``rule.tol`` of
    their median, and at most ``rule.clean`` of the ``reference`` images (clean ones, e.g. the validation split) do."""
    flagged, reference = np.asarray(flagged, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    values = np.median(flagged, axis=0)
    agree = (np.abs(flagged - values) <= rule.tol).mean(0)
    clean = (np.abs(reference - values) <= rule.tol).mean(0)
    return SharedPattern(pixels=(agree >= rule.agree) & (clean <= rule.clean), values=values, tol=rule.tol)


@dataclass(frozen=True)
class PatternFlags:
    """Result of :func:`pattern_flags`. ``carries``: bool (n,) pool rows that carry the estimated trigger;
    ``lacks``: bool (n,) flagged rows to unflag (they do not carry it; all False with the veto off); ``kind``:
    ``stamp``, ``blend`` or ``none``; ``pixels``: the estimate's element count; ``alpha``: the blend weight (1.0
    for a stamp); ``unexplained``: how many flagged rows do not carry it (whether or not they are unflagged)."""

    carries: np.ndarray
    lacks: np.ndarray
    kind: str
    pixels: int
    alpha: float
    unexplained: int = 0

    @classmethod
    def nothing(cls, n: int, kind: str = "none", pixels: int = 0) -> "PatternFlags":
        """No row carries or lacks a trigger (no usable estimate)."""
        return cls(np.zeros(n, dtype=bool), np.zeros(n, dtype=bool), kind, pixels, 1.0)

    def info(self) -> dict[str, float | int | str]:
        return {"pattern_kind": self.kind, "pattern_pixels": self.pixels, "pattern_alpha": self.alpha}


def pattern_flags(X: np.ndarray, pool: np.ndarray, flagged: np.ndarray, X_val: np.ndarray, y_val: np.ndarray | None,
                  target: int, rule: SharedPatternRule,
                  target_probability: Callable[[np.ndarray], np.ndarray] | None = None) -> PatternFlags:
    """The trigger read off the ``flagged`` rows of images ``X`` (n, [C,] H, W), as a stamp
    (:func:`shared_pattern`) or a blend, whichever leaves fewer flagged rows without it
    (:func:`~tda_clean.selection.blend_pattern.estimate_blend`, clean reference: the validation rows not of the
    ``target``). Stamp: pool rows matching at least ``rule.add`` of its elements carry it, flagged rows matching
    fewer than ``rule.veto`` lack it. Blend: pool rows scoring above 0 and above every clean validation row of the
    target class (the pool's own class; all validation rows when it has fewer than 10) carry it, and so do pool
    rows scoring above 0 whose un-blended image ``target_probability`` (images -> (n,) the model's probability of
    the target) puts below 0.5 -- the poison's source image comes back; flagged rows scoring at most 0 (better
    explained as clean images) do not carry it, and those scoring no higher than 90% of the target class's clean
    validation rows are unflagged. Nothing with fewer than ``rule.min_pixels`` elements."""
    X_val = np.asarray(X_val)
    y_val = None if y_val is None else np.asarray(y_val)
    own = np.zeros(len(X_val), dtype=bool) if y_val is None else y_val == target
    candidates = [_stamp_flags(X, pool, flagged, X_val, rule)]
    if rule.blend is not None:
        candidates.append(_blend_flags(X, pool, flagged, X_val, own, rule, target_probability))
    usable = [c for c in candidates if c.pixels >= rule.min_pixels]
    if not usable:
        return PatternFlags.nothing(len(X), pixels=candidates[0].pixels)
    # the estimate under which more of the flagged rows carry the trigger (the stamp on a tie)
    return min(usable, key=lambda c: c.unexplained)


def _stamp_flags(X, pool, flagged, X_val, rule: SharedPatternRule) -> PatternFlags:
    stamp = shared_pattern(X[flagged], X_val, rule)
    rows = pool | flagged
    match = np.zeros(len(X))
    if stamp.size:
        match[rows] = stamp.match(X[rows])
    carries = pool & (match >= rule.add - 1e-9)
    lacks = flagged & (match < (0.5 if rule.veto is None else rule.veto) - 1e-9)
    vetoed = lacks & ~carries if rule.veto is not None else np.zeros(len(X), dtype=bool)   # veto > add: carried wins
    return PatternFlags(carries, vetoed, "stamp", stamp.size, 1.0, int(lacks.sum()))


def _blend_flags(X, pool, flagged, X_val, own, rule: SharedPatternRule, target_probability) -> PatternFlags:
    """``own``: bool, the validation rows of the target class (the pool's class; the rest are the reference)."""
    reference = X_val[~own] if (~own).sum() >= _MIN_REFERENCE else X_val
    blend = estimate_blend(X[flagged], reference, rule.blend)
    if not blend.size:
        return PatternFlags.nothing(len(X), kind="blend")
    score = np.full(len(X), -np.inf)
    rows = pool | flagged
    score[rows] = blend.score(X[rows])
    null = blend.score(X_val[own] if own.sum() >= _MIN_REFERENCE else X_val)
    carries = pool & (score > max(0.0, null.max()))
    maybe = np.flatnonzero(pool & ~carries & ~flagged & (score > 0))
    if target_probability is not None and len(maybe):
        carries[maybe] = target_probability(blend.unblend(X[maybe])) < 0.5
    unexplained = int((flagged & (score <= 0)).sum())
    # unflag only rows that look like the target class's clean images (a blend's score is noisy near 0)
    clean_like = flagged & (score <= min(0.0, float(np.quantile(null, _VETO_QUANTILE))))   # disjoint from carries
    return PatternFlags(carries, clean_like if rule.blend.veto else np.zeros(len(X), dtype=bool), "blend",
                        blend.size, blend.alpha, unexplained)
