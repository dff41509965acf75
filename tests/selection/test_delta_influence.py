"""Δ-influence on the digits BadNets scenario: recall / precision floors, query and transform errors."""
from __future__ import annotations

import numpy as np
import pytest

from tda_clean.config import DeltaInfluenceDetector, parse_config
from tda_clean.errors import InputError
from tda_clean.evaluation.metrics import detection_metrics
from tda_clean.models.trainer import predict_proba
from tda_clean.selection import make_detector
from tda_clean.selection.delta_influence import DeltaInfluenceSelector
from tda_clean.selection.delta_scores import robust_z
from tda_clean.selection.score_cuts import split_high_cluster
from tests.unit_helpers import digits_cnn_config, torch_single_thread, trained_digits_cnn

_single_thread = pytest.fixture(scope="module", autouse=True)(torch_single_thread)


def digits_backdoor(rate: float = 0.05, seed: int = 0):
    """configs/digits_backdoor.yaml settings (CNN, Adam, BadNets 2x2 patch -> class 0)."""
    return digits_cnn_config({"kind": "badnets", "target": 0, "rate": rate, "patch_size": 2, "patch_value": 1.0},
                             seed=seed)


@pytest.fixture(scope="module")
def poisoned():
    return trained_digits_cnn(digits_backdoor())


@pytest.fixture(scope="module")
def detected(poisoned):
    bundle, _, context = poisoned
    det = make_detector(DeltaInfluenceDetector()).fit(
            bundle.train.X, bundle.train.y, context)
    return det


def test_backdoor_is_learned(poisoned):
    bundle, model, _ = poisoned
    asr = float(np.mean(predict_proba(model, bundle.triggered_test.X).argmax(1) == bundle.attack_target))
    assert asr > 0.9


def test_default_delta_influence_recall_and_precision_floors(detected, poisoned):
    bundle = poisoned[0]
    quality = detection_metrics(detected.get_support(), bundle.corrupted_mask)
    # measured with the defaults (16 queries x 32 copies, EK-FAC all params, margin gradients): 1.00 / 0.98-1.0
    assert quality["recall"] >= 0.9, quality
    assert quality["precision"] >= 0.9, quality
    assert detected.info_["query_source"] == "trigger_scan"
    assert detected.info_["trigger"] == {"corner": "br", "size": 2, "value": 1.0}
    assert detected.target_ == bundle.attack_target
    # the continuous score ranks poisons first almost perfectly
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(bundle.corrupted_mask, detected.delta_scores_) >= 0.99
    sel = detected.to_selection()
    assert sel.n_flagged == int(detected.get_support().sum()) and all("collapsed" in r for r in sel.reasons)


def test_given_query_rows_are_used(poisoned, detected):
    bundle, _, context = poisoned
    rows = np.flatnonzero(bundle.corrupted_mask)[:6]
    det = DeltaInfluenceSelector(DeltaInfluenceDetector(queries="rows", query_rows=tuple(int(r) for r in rows),
                                                        n_copies=16, tol=6))
    det.fit(bundle.train.X, bundle.train.y, context)
    assert det.info_["query_source"] == "rows" and det.target_ == 0 and len(det.queries_) == 6
    quality = detection_metrics(det.get_support(), bundle.corrupted_mask)
    assert quality["precision"] >= 0.8, quality


def test_queries_not_predicted_as_one_class_are_refused(poisoned):
    bundle, model, context = poisoned
    pred = predict_proba(model, bundle.train.X).argmax(1)
    rows = (int(np.flatnonzero(pred == 1)[0]), int(np.flatnonzero(pred == 2)[0]))
    with pytest.raises(InputError, match="not predicted as one single class"):
        DeltaInfluenceSelector(DeltaInfluenceDetector(queries="rows", query_rows=rows)).fit(
            bundle.train.X, bundle.train.y, context)
    with pytest.raises(InputError, match="query_rows: position 99999"):
        DeltaInfluenceSelector(DeltaInfluenceDetector(queries="rows", query_rows=(99999,))).fit(
            bundle.train.X, bundle.train.y, context)


def test_transform_that_does_not_apply_is_refused(poisoned):
    bundle, _, context = poisoned
    with pytest.raises(InputError, match="'feature_mask' does not apply to image data"):
        DeltaInfluenceSelector(DeltaInfluenceDetector(transforms=("hflip", "feature_mask"))).fit(
            bundle.train.X, bundle.train.y, context)
    with pytest.raises(InputError, match="'channel_swap' needs images with at least two channels"):
        DeltaInfluenceSelector(DeltaInfluenceDetector(transforms=("channel_swap",))).fit(
            bundle.train.X, bundle.train.y, context)
    X = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    with pytest.raises(InputError, match="'blur' does not apply to tabular data"):
        DeltaInfluenceSelector(DeltaInfluenceDetector(transforms=("blur",))).fit(X, np.arange(30) % 2, context)


def test_poison_rate_of_half_or_more_is_refused():
    with pytest.raises(InputError, match=r"scenario.rate: Input should be less than 0.5"):
        parse_config({"data": {"kind": "digits"}, "scenario": {"kind": "badnets", "rate": 0.5}})
    with pytest.raises(InputError, match=r"detector: tol=32 must be below n_copies=32"):
        parse_config({"data": {"kind": "digits"}, "detector": {"kind": "delta_influence", "tol": 32}})


def test_split_and_robust_z_are_scale_free():
    rng = np.random.default_rng(0)
    clean, poison = rng.normal(0, 1, 200), rng.normal(12, 1, 10)
    score = np.concatenate([clean, poison])
    pool = np.ones(210, dtype=bool)
    for scale in (1e-6, 1.0, 1e6):
        cut, z = split_high_cluster(score * scale, pool)
        flagged = (score * scale > cut) & (z > 3)
        assert flagged[200:].all() and not flagged[:200].any()
    np.testing.assert_allclose(robust_z(score * 1e6), robust_z(score), rtol=1e-9)


def test_separated_high_group_cuts_two_groups_and_leaves_one_tail_alone():
    from tda_clean.selection.score_cuts import separated_high_group

    rng = np.random.default_rng(0)
    tail = np.exp(rng.uniform(0.0, 0.5, 20))            # clean rows just above the clean cluster
    poisons = np.exp(rng.uniform(2.0, 2.4, 60))         # a poison cluster far above them
    score = np.concatenate([tail, poisons, [-1.0, 0.0]])  # non-positive scores are left out
    rows = np.ones(len(score), dtype=bool)
    for scale in (1e-6, 1.0, 1e6):
        log_cut, eta = separated_high_group(score * scale, rows)
        upper = np.log(np.maximum(score * scale, 1e-300)) > log_cut
        assert eta > 0.9 and upper[20:80].all() and not upper[:20].any() and not upper[80:].any()
    # one group spread evenly on a log scale (a skewed clean tail): between-group share 0.75, below the default 0.9
    _, eta = separated_high_group(np.exp(np.linspace(0.0, 3.0, 80)), np.ones(80, dtype=bool))
    assert eta == pytest.approx(0.75, abs=0.01)
    assert eta < DeltaInfluenceDetector().separation
    assert separated_high_group(np.array([1.0, 2.0, 0.0]), np.ones(3, dtype=bool)) == (float("-inf"), 0.0)
