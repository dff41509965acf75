"""Pixel-space evidence of Δ-influence (issue 15, "poisons anywhere", round 5): on the pixels outside the found trigger
region, a dirty-label poison's nearest training rows are of its source class and a clean target-class row's are of
the target. Rows are added on that evidence only when the share beats every clean validation row of the target class
(a class whose clean images neighbour other classes adds nothing), and flagged rows whose pixel neighbours are all of
the target class are unflagged."""
from __future__ import annotations

import numpy as np
import pytest

from tda_clean.config.detectors import DeltaInfluenceDetector
from tda_clean.selection.base import FitContext
from tda_clean.selection.source_evidence import pixel_rules, pixel_shares
from tests.selection.test_source_evidence import pool_with_poisons, selector
from tests.selection.test_trigger_confirmation import REGION, RegionModel
from tests.unit_helpers import torch_single_thread

_single_thread = pytest.fixture(scope="module", autouse=True)(torch_single_thread)

FILL = np.zeros((8, 8), dtype=np.float32)


def clean_class2(n: int, seed: int = 1) -> np.ndarray:
    """Clean class-2 validation images like rows 60-89 of :func:`pool_with_poisons` (top-left corner bright)."""
    X = np.random.default_rng(seed).uniform(0, 0.1, size=(n, 8, 8)).astype(np.float32)
    X[:, :2, :2] = 1.0
    return X


def test_pixel_shares_see_the_source_class_of_the_poisons_outside_the_region():
    X, y = pool_with_poisons()
    reference = np.arange(len(y)) < 90                     # the suspects left out of the neighbours
    share, val = pixel_shares(X, y, np.arange(60, 100), REGION, 2, reference, k=5, X_extra=clean_class2(6))
    assert (share[:30] == 0.0).all() and (share[30:] == 1.0).all() and (val == 0.0).all()
    none, _ = pixel_shares(X, y, np.arange(3), REGION, 2, np.zeros(len(y), dtype=bool), k=5)
    assert (none == 0.0).all()


def rules(X, y, flagged, gap_z, X_val_t, **kw):
    spec = DeltaInfluenceDetector(**{"pixel_share": 0.9, "pixel_min_gap_z": -1.0, "pixel_veto_share": 0.0,
                                     "source_neighbours": 5} | kw)
    return pixel_rules(RegionModel(corner_content=True), X, y, y == 2, flagged, gap_z, (REGION, FILL), 2, X_val_t,
                       spec)


def test_pixel_rules_add_unflagged_poisons_and_veto_flagged_clean_rows():
    X, y = pool_with_poisons()
    gap_z = np.zeros(len(y))
    gap_z[90:] = 2.0                                       # poisons above the suspect gap: out of the neighbours
    flagged = np.zeros(len(y), dtype=bool)
    flagged[60:63] = True                                  # three clean class-2 rows flagged by the other rules
    added, vetoed = rules(X, y, flagged, gap_z, clean_class2(10))
    assert added[90:].all() and not added[:90].any()
    assert vetoed[60:90].all() and not vetoed[90:].any() and not vetoed[:60].any()
    # below the gap condition nothing is added; switched off, nothing is added or vetoed
    assert not rules(X, y, flagged, np.full(len(y), -2.0), clean_class2(10))[0].any()
    off_added, off_vetoed = rules(X, y, flagged, gap_z, clean_class2(10), pixel_share=None, pixel_veto_share=None)
    assert not off_added.any() and not off_vetoed.any()


def test_pixel_rules_are_calibrated_on_the_clean_validation_rows_of_the_target_class():
    X, y = pool_with_poisons()
    gap_z = np.zeros(len(y))
    gap_z[90:] = 2.0
    flagged = np.zeros(len(y), dtype=bool)
    # clean validation images of the target that look like class 0 outside the region: share 1.0 is no evidence
    like_class0 = X[:10].copy()
    added, _ = rules(X, y, flagged, gap_z, like_class0)
    assert not added.any()
    assert rules(X, y, flagged, gap_z, None)[0][90:].all()  # no validation rows: the fixed share only


def test_detector_applies_the_pixel_rules_only_with_a_found_trigger():
    X, y = pool_with_poisons()
    gap_z = np.zeros(len(y))
    gap_z[90:] = 2.0
    context = FitContext(seed=0, X_val=clean_class2(10), y_val=np.full(10, 2))
    sel = selector()
    added, vetoed = sel._pixel_flags(RegionModel(corner_content=True), X, y, y == 2, np.zeros(len(y), dtype=bool), 2,
                                     gap_z, context)
    assert added[90:].all() and vetoed[60:90].all()
    sel._erase = None
    added, vetoed = sel._pixel_flags(RegionModel(corner_content=True), X, y, y == 2, np.zeros(len(y), dtype=bool), 2,
                                     gap_z, context)
    assert not added.any() and not vetoed.any()
