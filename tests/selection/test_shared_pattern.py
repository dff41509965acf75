"""The flagged rows' shared pixels as the trigger (issue 15, "poisons anywhere"): found wherever the stamp is,
matched on the rows that carry it, absent for a blend that mixes the pattern with each image; Δ-influence's
rule adds the rows that carry it and unflags flagged rows that do not."""
from __future__ import annotations

import numpy as np

from tda_clean.config import DeltaInfluenceDetector, SharedPatternRule
from tda_clean.selection import FitContext
from tda_clean.selection.delta_influence import DeltaInfluenceSelector
from tda_clean.selection.shared_pattern import shared_pattern

RULE = SharedPatternRule()                                       # tol 0.05, agree 0.6, clean 0.25
RNG = np.random.default_rng(0)
STAMP = RNG.uniform(0, 1, size=(3, 3)).astype(np.float32)     # a random-pattern trigger at rows 1-3, cols 4-6


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, size=(n, 8, 8)).astype(np.float32)


def stamped(X: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    out = X.copy()
    out[:, 1:4, 4:7] = (1 - alpha) * out[:, 1:4, 4:7] + alpha * STAMP
    return out


def test_the_shared_pixels_are_the_stamp_and_match_only_its_carriers():
    flagged = np.concatenate([stamped(images(18, 1)), images(4, 2)])       # 18 poisons, 4 clean rows flagged
    pattern = shared_pattern(flagged, images(200, 3), RULE)
    expected = np.zeros((8, 8), dtype=bool)
    expected[1:4, 4:7] = True
    assert (pattern.pixels == expected).all()
    assert np.allclose(pattern.values[expected], STAMP.reshape(-1))
    assert (pattern.match(stamped(images(50, 4))) == 1.0).all()
    clean = pattern.match(images(200, 5))           # each element within 0.05 by chance with probability ~0.1
    assert clean.max() < 0.9 and clean.mean() < 0.2


def test_a_blended_stamp_leaves_no_shared_pixels():
    flagged = stamped(images(30, 1), alpha=0.3)
    assert shared_pattern(flagged, images(200, 3), RULE).size == 0


def test_delta_influence_adds_carriers_and_unflags_rows_without_the_stamp():
    X = np.concatenate([stamped(images(20, 1)), images(60, 2)])            # pool: 20 poisons, 60 clean rows
    flagged = np.zeros(80, dtype=bool)
    flagged[:15] = True                                                      # 15 of the poisons ...
    flagged[20:24] = True                                                    # ... and 4 clean rows
    pool = np.ones(80, dtype=bool)
    sel = DeltaInfluenceSelector(DeltaInfluenceDetector())
    sel._erase = (np.zeros((8, 8), dtype=bool), np.zeros((8, 8), dtype=np.float32))   # a found trigger
    context = FitContext(seed=0, X_val=images(200, 3), y_val=np.zeros(200, dtype=int))
    carries, lacks, n_pixels = sel._pattern_flags(X, pool, flagged, context)
    assert n_pixels == 9
    assert (carries == (np.arange(80) < 20)).all()                          # all 20 poisons, no clean row
    assert (np.flatnonzero(lacks) == np.arange(20, 24)).all()               # the 4 clean rows flagged
    off = DeltaInfluenceSelector(DeltaInfluenceDetector(shared_pattern=None))
    off._erase = sel._erase
    none_c, none_l, _ = off._pattern_flags(X, pool, flagged, context)
    assert not none_c.any() and not none_l.any()
