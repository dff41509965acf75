"""Trigger confirmation and erasure evidence of Δ-influence (issue 15, "poisons anywhere"): a reconstructed
trigger counts only when the target class's TRAINING rows depend on its region far more often than clean
validation rows do; the erasure check may flag alone only when it is specific on clean validation rows; a clean
model yields "no trigger found" and no flagged row; reconstruction restarts take the median norm per class."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tda_clean.config import DeltaInfluenceDetector
from tda_clean.selection import FitContext, make_detector
from tda_clean.selection.delta_influence import DeltaInfluenceSelector
from tda_clean.selection.trigger_search import dilate
from tda_clean.selection.trigger_search import reconstruct_trigger, stamped_candidate
from tests.unit_helpers import digits_cnn_config, torch_single_thread, trained_digits_cnn

_single_thread = pytest.fixture(scope="module", autouse=True)(torch_single_thread)

REGION = np.zeros((8, 8), dtype=bool)
REGION[3:5, 3:5] = True                                   # the "trigger" region the tests erase


class RegionModel(nn.Module):
    """Three classes on 8x8 images: class 2 when the REGION is bright or (``corner_content``) the top-left 2x2
    corner is bright; classes 0 / 1 otherwise (left / right half brighter)."""

    def __init__(self, corner_content: bool):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.corner_content = corner_content

    def forward(self, x):
        x = x.reshape(len(x), 8, 8)
        region = x[:, 3:5, 3:5].mean((1, 2))
        corner = x[:, :2, :2].mean((1, 2)) if self.corner_content else torch.zeros_like(region)
        z2 = 20 * (torch.maximum(region, corner) - 0.5)
        z0 = 5 * (x[:, :, :4].mean((1, 2)) - x[:, :, 4:].mean((1, 2)))
        return self.scale * torch.stack([z0, -z0, z2], 1)


def class2_rows(n: int, rng, corner: bool) -> np.ndarray:
    """Class-2 images: the top-left corner bright (content outside the region) or the region bright."""
    X = rng.uniform(0, 0.2, size=(n, 8, 8)).astype(np.float32)
    if corner:
        X[:, :2, :2] = 1.0
    else:
        X[:, 3:5, 3:5] = 1.0
    return X


def evidence_for(corner_content: bool, n_poison_like: int, seed: int = 0) -> dict:
    """Erasure evidence of a pool of 60 clean class-2 rows plus ``n_poison_like`` rows that are class 2 only
    through the region, against 40 clean class-2 validation rows."""
    rng = np.random.default_rng(seed)
    model = RegionModel(corner_content)
    X_val = class2_rows(40, rng, corner=corner_content)
    clean = class2_rows(60, rng, corner=corner_content)
    poisons = class2_rows(n_poison_like, rng, corner=False)
    X = np.concatenate([clean, poisons])
    y = np.full(len(X), 2)
    sel = DeltaInfluenceSelector(DeltaInfluenceDetector())
    sel._erase = (REGION, np.zeros((8, 8), dtype=np.float32))
    erased = sel._erased(model, X, y == 2, 2)
    context = FitContext(seed=0, X_val=X_val, y_val=np.full(len(X_val), 2))
    return {"erased": erased, **sel._erasure_evidence(model, context, 2, erased)}


def test_erasure_is_trusted_when_clean_rows_keep_the_target():
    ev = evidence_for(corner_content=True, n_poison_like=20)
    # the 20 region-only rows lose class 2 once the region is erased; the 60 clean rows (corner content) do not
    assert int(ev["erased"].sum()) == 20 and ev["erased"][60:].all()
    assert ev["erase_val_lost"] == 0 and ev["erase_val_rows"] == 40
    assert ev["erase_expected_false"] == pytest.approx(80 / 42)
    assert ev["erasure_trusted"] and ev["erase_p_value"] < 1e-6


def test_erasure_is_not_trusted_when_clean_rows_live_in_the_region():
    ev = evidence_for(corner_content=False, n_poison_like=20)
    # every class-2 row (clean or not) lives in the region: erasure says nothing about poisons
    assert ev["erase_val_lost"] == 40
    assert not ev["erasure_trusted"] and ev["erase_p_value"] > 0.05


def test_dilate_grows_a_region_by_whole_pixels_and_zero_keeps_it():
    r = np.zeros((6, 6), dtype=bool)
    r[0, 0] = r[4, 3] = True
    assert (dilate(r, 0) == r).all()
    grown = dilate(r, 1)
    assert grown.sum() == 4 + 9 and grown[1, 1] and grown[5, 4] and not grown[2, 2]
    assert dilate(r, 2)[2, 2]


@pytest.fixture(scope="module")
def clean_digits():
    return trained_digits_cnn(digits_cnn_config())


def test_clean_model_no_trigger_found_and_nothing_flagged(clean_digits):
    bundle, _, context = clean_digits
    det = make_detector(DeltaInfluenceDetector()).fit(bundle.train.X, bundle.train.y, context)
    assert det.info_["query_source"] == "no_trigger_found", det.info_
    assert det.target_ is None and not det.get_support().any()
    # the old fallback still gives queries when asked for
    det = make_detector(DeltaInfluenceDetector(no_trigger="class_outliers", n_queries=2, n_copies=2, tol=1))
    Xq, target, info = det._auto_queries(context.model, bundle.train.X, bundle.train.y, context)
    assert info["query_source"] == "class_outliers" and len(Xq) == 2 and 0 <= target < 10


def test_restarts_take_the_median_norm_per_class(clean_digits):
    bundle, model, _ = clean_digits
    found = reconstruct_trigger(model, bundle.val.X, seed=0, steps=30, restarts=3, min_anomaly=-np.inf)
    assert found is not None
    assert all(len(v) == 3 for v in found["restart_norms"].values())
    for c, runs in found["restart_norms"].items():
        assert found["norms"][c] == pytest.approx(float(np.median(runs)))
    assert found["target"] == min(found["norms"], key=found["norms"].get)
    assert 0.0 <= found["agreement"] <= 1.0


def test_neighbour_share_tells_relabelled_images_of_other_classes_from_target_images():
    from tda_clean.selection.trigger_search import neighbour_other_share

    rng = np.random.default_rng(0)
    means = rng.uniform(0, 1, size=(3, 8, 8))
    y = np.repeat([0, 1, 2], 30)
    X = (means[y] + rng.normal(0, 0.05, size=(90, 8, 8))).astype(np.float32)
    X[:, 3:5, 3:5] = 0.0
    poison_rows = np.arange(80, 90)                       # images of class 0 with a bright region, labelled 2
    X[poison_rows] = (means[0] + rng.normal(0, 0.05, size=(10, 8, 8))).astype(np.float32)
    X[poison_rows, 3:5, 3:5] = 1.0
    assert neighbour_other_share(X, y, poison_rows, REGION, 2) == 1.0
    assert neighbour_other_share(X, y, np.arange(60, 70), REGION, 2) == 0.0      # clean class-2 rows
    assert neighbour_other_share(X, y, np.array([], dtype=int), REGION, 2) == 0.0


def test_neighbour_evidence_confirms_only_below_the_loose_p_with_other_class_neighbours():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 2], [40, 20])
    X = np.where(y[:, None, None] == 0, 0.9, 0.1) + rng.normal(0, 0.02, size=(60, 8, 8))
    erased = np.zeros(60, dtype=bool)
    sel = DeltaInfluenceSelector(DeltaInfluenceDetector())
    erased[40:50] = True                                  # class-2 rows that look like class 2: not poisons
    assert sel._neighbour_evidence(X, y, erased, REGION, 2, {"erase_p_value": 0.1}) == {
        "erase_neighbour_share": 0.0, "erase_confirmed": False}
    y_poisoned = y.copy()
    y_poisoned[:5] = 2                                    # class-0 images labelled 2 (a few among many), erased
    erased[:] = False
    erased[:5] = True
    ev = sel._neighbour_evidence(X, y_poisoned, erased, REGION, 2, {"erase_p_value": 0.1})
    assert ev == {"erase_neighbour_share": 1.0, "erase_confirmed": True}
    # above the loose p-value the neighbours are not even asked
    assert sel._neighbour_evidence(X, y_poisoned, erased, REGION, 2, {"erase_p_value": 0.3}) == {"erase_confirmed": False}


def test_an_unconfirmed_smallest_restart_falls_back_to_the_targets_other_restarts(monkeypatch):
    """The smallest mask of the target's restarts can be a natural feature of the class (here the bright corner
    every clean class-2 image has: erasing it takes the class from clean validation rows too, so it is not
    confirmed); the detector then tries the target's other restarts, and the one on the trigger region (which
    only the poison-like rows depend on) is confirmed."""
    from tda_clean.models.trainer import predict_proba
    from tda_clean.selection import trigger_search

    rng = np.random.default_rng(0)
    model = RegionModel(corner_content=True)

    def others(n: int) -> tuple[np.ndarray, np.ndarray]:
        X = rng.uniform(0, 0.2, size=(n, 8, 8)).astype(np.float32)
        y = np.arange(n) % 2
        X[y == 0, 5:, :4] += 0.6            # brighter bottom-left / bottom-right: away from the corner and region
        X[y == 1, 5:, 4:] += 0.6
        return X, y

    Xo, yo = others(80)
    X = np.concatenate([Xo, class2_rows(60, rng, corner=True), class2_rows(20, rng, corner=False)])
    y = np.concatenate([yo, np.full(80, 2)])
    Xv, yv = others(60)
    X_val = np.concatenate([Xv, class2_rows(40, rng, corner=True)])
    y_val = np.concatenate([yv, np.full(40, 2)])
    corner = np.zeros((8, 8), dtype=np.float32)
    corner[:2, :2] = 1.0
    bright = np.ones((8, 8), dtype=np.float32)

    def found_with(alternates: list) -> dict:
        found = {"target": 2, "base": predict_proba(model, X_val).argmax(1), "anomaly": 5.0, "agreement": 1 / 3}
        found.update(stamped_candidate(model, X_val, found["base"], 2, corner, bright))
        return {**found, "alternates": alternates}

    context = FitContext(seed=0, X_val=X_val, y_val=y_val)
    spec = DeltaInfluenceDetector(trigger_search="optimise")
    monkeypatch.setattr(trigger_search, "reconstruct_trigger", lambda *a, **k: found_with([]))
    _, target, info = DeltaInfluenceSelector(spec)._auto_queries(model, X, y, context)
    assert target is None and info["query_source"] == "no_trigger_found" and info["erase_val_lost"] == 40

    alternate = {"norm": 4.0, "mask": REGION.astype(np.float32), "pattern": bright}
    monkeypatch.setattr(trigger_search, "reconstruct_trigger", lambda *a, **k: found_with([alternate]))
    sel = DeltaInfluenceSelector(spec)
    Xq, target, info = sel._auto_queries(model, X, y, context)
    assert target == 2 and info["query_source"] == "trigger_reconstruction_rows"
    assert info["trigger_restart_rank"] == 1 and info["erase_val_lost"] == 0 and info["erase_p_value"] < 1e-6
    assert (sel._erase[0] == REGION).all() and len(Xq) >= 4
    assert (Xq[:, 3:5, 3:5] == 1.0).all()      # the queries are the poison-like rows
