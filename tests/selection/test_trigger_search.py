"""Δ-influence finds poisons of a trigger it cannot guess: a seeded random-pattern 3x3 patch inside 8x8 digits
(not a corner, not a square of one value), target class 5, 5% poisons; quality floors, and the reconstruction's
own output (target, anomaly, mask near the trigger)."""
from __future__ import annotations

import numpy as np
import pytest

from tda_clean.config import DeltaInfluenceDetector
from tda_clean.data.scenarios import trigger_mask
from tda_clean.evaluation.metrics import detection_metrics
from tda_clean.models.trainer import predict_proba
from tda_clean.selection import make_detector
from tda_clean.selection.trigger_search import reconstruct_trigger
from tests.unit_helpers import digits_cnn_config, torch_single_thread, trained_digits_cnn

_single_thread = pytest.fixture(scope="module", autouse=True)(torch_single_thread)

SCENARIO = {"kind": "badnets", "target": 5, "rate": 0.05, "patch_size": 3, "position": [4, 1], "pattern": "random"}


@pytest.fixture(scope="module")
def poisoned():
    cfg = digits_cnn_config(SCENARIO)
    return (cfg, *trained_digits_cnn(cfg))


def test_attack_is_learned_and_no_corner_patch_reproduces_it(poisoned):
    _, bundle, model, context = poisoned
    assert np.mean(predict_proba(model, bundle.triggered_test.X).argmax(1) == 5) > 0.9
    corners = make_detector(DeltaInfluenceDetector(trigger_search="corners", n_queries=2, n_copies=2, tol=1))
    assert corners._find_trigger(model, bundle.val.X, context) is None


def test_reconstruction_finds_the_target_and_the_trigger_area(poisoned):
    cfg, bundle, model, _ = poisoned
    found = reconstruct_trigger(model, bundle.val.X, seed=0)
    assert found is not None and found["target"] == 5 and found["anomaly"] > 2, found and found["norms"]
    assert found["flip_rate"] > 0.8
    # the mask's largest pixels sit on (or next to) the true trigger
    near = np.zeros((8, 8), dtype=bool)
    near[3:8, 0:5] = True                               # the 3x3 trigger at [4, 1] grown by one pixel
    assert near[trigger_mask(cfg.scenario, (8, 8))].all()
    top = np.argsort(found["mask"].ravel())[-3:]
    assert near.ravel()[top].sum() >= 2, found["mask"].round(2)


def test_default_delta_influence_quality_floor_on_an_unguessed_trigger(poisoned):
    _, bundle, _, context = poisoned
    det = make_detector(DeltaInfluenceDetector()).fit(bundle.train.X, bundle.train.y, context)
    quality = detection_metrics(det.get_support(), bundle.corrupted_mask)
    # measured: recall 1.00, precision 0.98 (seed 0)
    assert det.target_ == 5 and det.info_["query_source"].startswith("trigger_reconstruction"), det.info_
    assert quality["recall"] >= 0.95, quality
    assert quality["precision"] >= 0.85, quality
