"""Source evidence of Δ-influence (issue 15, "poisons anywhere"): once the trigger region is erased, a dirty-label
poison is no longer given the target and its feature-space neighbours carry other labels; a pool row the other rules
leave out is flagged on that evidence only above ``source_min_gap_z``, and never without a found trigger."""
from __future__ import annotations

import numpy as np
import pytest

from tda_clean.config import DeltaInfluenceDetector
from tda_clean.selection.delta_influence import DeltaInfluenceSelector
from tda_clean.selection.source_evidence import other_class_share
from tda_clean.selection.trigger_search import erase_region
from tests.selection.test_trigger_confirmation import REGION, RegionModel
from tests.unit_helpers import torch_single_thread

_single_thread = pytest.fixture(scope="module", autouse=True)(torch_single_thread)


def pool_with_poisons(seed: int = 0):
    """30 class-0 rows (left half bright below the top rows), 30 class-1 rows (right half), 30 clean class-2 rows
    (top-left corner bright: class 2 without the region) and 10 poisons: class-0 images with the REGION bright,
    labelled 2."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 0.1, size=(100, 8, 8)).astype(np.float32)
    X[:30, 2:, :4] += 0.6
    X[30:60, 2:, 4:] += 0.6
    X[60:90, :2, :2] = 1.0
    X[90:, 2:, :4] += 0.6
    X[90:, 3:5, 3:5] = 1.0
    y = np.repeat([0, 1, 2, 2], [30, 30, 30, 10])
    return X, y


def selector(**kw) -> DeltaInfluenceSelector:
    sel = DeltaInfluenceSelector(DeltaInfluenceDetector(**kw))
    sel._erase = (REGION, np.zeros((8, 8), dtype=np.float32))
    return sel


def test_erase_region_sets_only_the_region_to_the_fill():
    X = np.ones((2, 8, 8), dtype=np.float32)
    out = erase_region(X, REGION, np.full((8, 8), 0.25, dtype=np.float32))
    assert (out[:, REGION] == 0.25).all() and (out[:, ~REGION] == 1.0).all() and (X == 1.0).all()


def test_other_class_share_counts_other_labels_among_the_reference_neighbours():
    rng = np.random.default_rng(0)
    F = np.concatenate([rng.normal(0, 0.1, (20, 2)), rng.normal(5, 0.1, (20, 2)), rng.normal(5, 0.01, (6, 2))])
    y = np.repeat([2, 0, 2], [20, 20, 6])                  # rows 40-45: class-0 features labelled 2, close together
    everyone = np.ones(len(y), dtype=bool)
    assert other_class_share(F, y, np.arange(20), 2, everyone, k=5).max() == 0.0
    # with the suspects in the reference, the 6 relabelled rows are each other's nearest neighbours
    assert other_class_share(F, y, np.arange(40, 46), 2, everyone, k=5).max() < 0.5
    without = everyone.copy()
    without[40:] = False
    assert (other_class_share(F, y, np.arange(40, 46), 2, without, k=5) == 1.0).all()
    assert (other_class_share(F, y, np.arange(3), 2, np.zeros(len(y), dtype=bool), k=5) == 0.0).all()


def test_source_flags_take_the_relabelled_images_and_leave_the_clean_target_rows():
    X, y = pool_with_poisons()
    model, sel = RegionModel(corner_content=True), selector()
    gap_z = np.full(len(y), 1.0)                           # clean rows just above the clean cluster
    gap_z[90:] = 2.0                                       # poisons above erase_min_gap_z: out of the neighbours
    flags = sel._source_flags(model, X, y, y == 2, 2, gap_z)
    assert flags[90:].all() and not flags[:90].any()
    # with the poisons among the neighbours, the 10 relabelled images hide each other (k = 10)
    assert not sel._source_flags(model, X, y, y == 2, 2, np.full(len(y), 1.0))[90:].all()


def test_source_flags_need_the_gap_a_found_trigger_and_the_setting():
    X, y = pool_with_poisons()
    model = RegionModel(corner_content=True)
    low = np.zeros(len(y))                                 # inside the clean cluster: below source_min_gap_z = 0.5
    assert not selector()._source_flags(model, X, y, y == 2, 2, low).any()
    high = np.full(len(y), 1.0)
    high[90:] = 2.0
    assert not selector(source_share=None)._source_flags(model, X, y, y == 2, 2, high).any()
    no_trigger = selector()
    no_trigger._erase = None
    assert not no_trigger._source_flags(model, X, y, y == 2, 2, high).any()
    # rows left out as candidates (already flagged by the other rules) are not returned again
    candidates = (y == 2) & (np.arange(len(y)) < 95)
    assert selector()._source_flags(model, X, y, candidates, 2, high).sum() == 5
