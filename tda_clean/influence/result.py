"""The result type of an influence computation over all training rows (sign convention of
:mod:`tda_clean.influence.estimators`: POSITIVE = removing the row INCREASES the objective)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class InfluenceResult:
    """Scores of removing each training row on each objective output.

    scores: (m, n) float64, ``scores[j, i]`` = predicted change of output j of the objective when training row i
            is removed (POSITIVE = removal INCREASES f). ``m = 1`` for scalar objectives.
    """

    scores: np.ndarray
    objective: str
    method: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def per_row(self) -> np.ndarray:
        """(n,) scores summed over the objective's outputs (the only row for scalar objectives)."""
        return self.scores.sum(axis=0)
