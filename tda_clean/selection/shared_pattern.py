"""The trigger as the flagged rows' shared pixels: a data-side estimate that needs no model.

A dirty-label backdoor stamps ONE pattern on every poison. Once Δ-influence has flagged a set of rows that are
mostly poisons, the pixels where those rows agree with each other (their median, within ``tol``) but where
clean images rarely take that value are the trigger's pixels -- whatever its place, shape or pattern, and
whether or not the model's reconstruction covered all of it. A training row that shows the same values on
(nearly) all of those pixels carries the trigger. A blended trigger mixes the pattern with each image, so its
pixels seldom agree and few or none are found; then nothing is concluded.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tda_clean.config import SharedPatternRule


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
