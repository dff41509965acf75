"""The flagged rows' shared pixels as the trigger (issue 15, "poisons anywhere"): found wherever the stamp is,
matched on the rows that carry it, absent for a blend that mixes the pattern with each image; Δ-influence's
rule adds the rows that carry it and unflags flagged rows that do not; a blend is read off each pixel's distribution
instead."""
from __future__ import annotations

import numpy as np

from tda_clean.config import BlendRule, DeltaInfluenceDetector, SharedPatternRule
from tda_clean.selection import FitContext
from tda_clean.selection.delta_influence import DeltaInfluenceSelector
from tda_clean.selection.blend_pattern import estimate_blend
from tda_clean.selection.shared_pattern import pattern_flags, shared_pattern

RULE = SharedPatternRule()                                       # tol 0.05, agree 0.6, clean 0.25
RNG = np.random.default_rng(0)
STAMP = RNG.uniform(0, 1, size=(3, 3)).astype(np.float32)     # a random-pattern trigger at rows 1-3, cols 4-6


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, size=(n, 8, 8)).astype(np.float32)


def two_tone(n: int, seed: int) -> np.ndarray:
    """Images whose pixels are dark or bright (plus a little noise), like digits and clothing on a plain ground."""
    rng = np.random.default_rng(seed)
    bright = rng.uniform(size=(n, 8, 8)) < 0.4
    return np.clip(0.15 + 0.7 * bright + rng.normal(0, 0.05, size=(n, 8, 8)), 0, 1).astype(np.float32)


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
    flags = sel._pattern_flags(None, X, pool, flagged, 0, context)
    carries, lacks = flags.carries, flags.lacks
    assert (flags.kind, flags.pixels) == ("stamp", 9)
    assert (carries == (np.arange(80) < 20)).all()                          # all 20 poisons, no clean row
    assert (np.flatnonzero(lacks) == np.arange(20, 24)).all()               # the 4 clean rows flagged
    off = DeltaInfluenceSelector(DeltaInfluenceDetector(shared_pattern=None))
    off._erase = sel._erase
    none = off._pattern_flags(None, X, pool, flagged, 0, context)
    assert not none.carries.any() and not none.lacks.any() and none.kind == "none"


def test_a_blended_stamp_is_read_as_a_blend_and_scores_its_carriers_above_clean_images():
    rule = BlendRule()
    flagged = stamped(two_tone(100, 1), alpha=0.5)
    blend = estimate_blend(flagged, two_tone(500, 3), rule)
    expected = np.zeros((8, 8), dtype=bool)
    expected[1:4, 4:7] = True
    assert (blend.pixels == expected).all()
    assert abs(blend.alpha - 0.5) < 0.1
    carriers, clean = blend.score(stamped(two_tone(100, 4), alpha=0.5)), blend.score(two_tone(500, 5))
    assert (carriers > 0).all() and np.median(clean) < 0
    assert (carriers > np.quantile(clean, 0.99)).mean() > 0.9


def test_a_pure_stamp_is_no_blend():
    assert estimate_blend(stamped(two_tone(60, 1)), two_tone(500, 3), BlendRule()).size == 0


def test_pattern_flags_adds_blended_poisons_and_unflags_clean_rows_where_the_stamp_rule_cannot():
    X = np.concatenate([stamped(two_tone(120, 1), alpha=0.5), two_tone(200, 2)])  # pool: 120 poisons, 200 clean
    flagged = np.zeros(320, dtype=bool)
    flagged[:100] = True                                                          # 100 of the poisons ...
    flagged[120:126] = True                                                       # ... and 6 clean rows
    pool = np.ones(320, dtype=bool)
    X_val, y_val = two_tone(750, 3), np.repeat(np.arange(3), 250)
    flags = pattern_flags(X, pool, flagged, X_val, y_val, 0, SharedPatternRule())
    assert flags.kind == "blend" and flags.pixels >= 7
    truth = np.arange(320) < 120
    assert (flags.carries & truth).sum() >= 100 and not (flags.carries & ~truth).any()
    assert flags.lacks[120:126].sum() >= 5 and not flags.lacks[truth].any()
    stamp_only = pattern_flags(X, pool, flagged, X_val, y_val, 0, SharedPatternRule(blend=None))
    assert stamp_only.kind == "none" and not stamp_only.carries.any()


def test_unblending_gives_the_source_image_back():
    sources = two_tone(100, 1)
    blend = estimate_blend(stamped(sources, alpha=0.5), two_tone(500, 3), BlendRule())
    back = blend.unblend(stamped(sources, alpha=0.5))
    assert np.abs(back - sources)[:, 1:4, 4:7].mean() < 0.1        # the stamp's region: the source again
    assert (back[:, blend.pixels == 0] == sources[:, blend.pixels == 0]).all()   # elsewhere untouched


def test_a_blend_carrier_below_the_clean_null_is_added_when_the_model_loses_the_target_once_unblended():
    X = np.concatenate([stamped(two_tone(120, 1), alpha=0.5), two_tone(200, 2)])  # pool: 120 poisons, 200 clean
    flagged = np.zeros(320, dtype=bool)
    flagged[:100] = True
    pool = np.ones(320, dtype=bool)
    X_val = np.concatenate([two_tone(500, 3), stamped(two_tone(20, 6), alpha=0.5), two_tone(230, 7)])
    y_val = np.repeat(np.arange(3), 250)            # clean-labelled target rows that look blended: a high null
    rule = SharedPatternRule()
    data_only = pattern_flags(X, pool, flagged, X_val, y_val, 2, rule)
    lost = pattern_flags(X, pool, flagged, X_val, y_val, 2, rule, lambda images: np.full(len(images), 0.1))
    kept = pattern_flags(X, pool, flagged, X_val, y_val, 2, rule, lambda images: np.full(len(images), 0.9))
    truth = np.arange(320) < 120
    assert (data_only.carries & ~flagged).sum() < 5                       # the null hides most of the 20
    assert (lost.carries & truth & ~flagged).sum() == 20 and not (lost.carries & ~truth).any()
    assert (kept.carries == data_only.carries).all()
