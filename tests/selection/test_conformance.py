"""Conformance of every registered detector with the selector conventions (docs/architecture.md rule 2), plus
cleanlab's detection quality floor on an easy problem with known flipped labels."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tda_clean.config import CleanlabDetector, LogisticConfig, TrainConfig, parse_config
from tda_clean.errors import InputError
from tda_clean.evaluation.metrics import detection_metrics
from tda_clean.models.factory import build_model
from tda_clean.models.trainer import fit as fit_model
from tda_clean.selection import DETECTORS, BaseSelector, FitContext, NotFittedError, Selection, make_detector
from tests.unit_helpers import blobs, torch_single_thread

make_detector(CleanlabDetector())  # imports every built-in detector module, filling the registry
KINDS = sorted(DETECTORS)
TRAIN = TrainConfig(optimizer="lbfgs", l2=1e-2, epochs=20, device="cpu")

_single_thread = pytest.fixture(scope="module", autouse=True)(torch_single_thread)


def default_config(kind: str):
    """The detector config of ``kind`` with every default, exactly as a YAML file would produce it."""
    try:
        return parse_config({"data": {"kind": "digits"}, "detector": {"kind": kind}}).detector
    except InputError as exc:
        pytest.fail(f"registered detector {kind!r} has no config that validates with defaults: {exc}")


def _context(X: np.ndarray, y: np.ndarray, seed: int = 0) -> FitContext:
    def make_model(s: int):
        return build_model(LogisticConfig(), (X.shape[1],), 2, s)

    model = make_model(seed)
    fit_model(model, X, y, TRAIN, seed, progress=False)
    Xv, yv, _, _ = blobs(60, seed=99, n_flip=0)
    groups_val = pd.DataFrame({"g": np.where(Xv[:, 0] > 0, "right", "left")})
    return FitContext(seed=seed, make_model=make_model, train_config=TRAIN, model=model, X_val=Xv, y_val=yv,
                      groups_val=groups_val, n_classes=2)


@pytest.fixture(scope="module")
def problem():
    X, y, y_clean, flipped = blobs(200, seed=1, n_flip=10)
    return X, y, y_clean, flipped, _context(X, y)


@pytest.fixture(scope="module")
def fitted(problem):
    """kind -> (detector, X copy before fit, y copy before fit), each fitted once."""
    X, y, _, _, context = problem
    out = {}
    for kind in KINDS:
        X0, y0 = X.copy(), y.copy()
        det = make_detector(default_config(kind))
        returned = det.fit(X, y, context)
        out[kind] = (det, returned, X0, y0)
    return out


def _learned_attrs(obj) -> list[str]:
    return sorted(k for k in vars(obj) if k.endswith("_") and not k.startswith("__"))


def test_registry_is_not_empty():
    assert "cleanlab" in KINDS
    assert all(callable(factory) for factory in DETECTORS.values())


@pytest.mark.parametrize("kind", KINDS)
def test_init_stores_params_only(kind):
    cfg = default_config(kind)
    det = make_detector(cfg)
    assert isinstance(det, BaseSelector)
    assert _learned_attrs(det) == [], f"{kind}: learned state set in __init__"
    params = det.get_params(deep=False)
    assert params, f"{kind}: get_params() is empty"
    clone = type(det)(**params)
    assert clone.get_params(deep=False) == params
    assert _learned_attrs(clone) == []
    # parameters that mirror config fields carry the configured values
    for name, value in params.items():
        if name in type(cfg).model_fields:
            assert value == getattr(cfg, name), (kind, name)


@pytest.mark.parametrize("kind", KINDS)
def test_selector_is_a_scikit_learn_estimator(kind, fitted):
    """``sklearn.base.clone`` round-trips (unfitted, same parameters); ``set_params`` of a spec field validates."""
    from sklearn.base import BaseEstimator, clone

    det = fitted[kind][0]
    assert isinstance(det, BaseEstimator)
    copy = clone(det)
    assert type(copy) is type(det) and _learned_attrs(copy) == []
    assert copy.get_params(deep=True) == det.get_params(deep=True)
    shallow = det.get_params(deep=False)
    if "spec" not in shallow:
        name, value = next(iter(shallow.items()))
        assert copy.set_params(**{name: value}) is copy and copy.get_params()[name] == value
        return
    deep = det.get_params(deep=True)
    assert {f"spec__{f}" for f in type(shallow["spec"]).model_fields if f != "kind"} <= set(deep)
    field = sorted(k for k in deep if k.startswith("spec__"))[0]
    if "spec__max_flagged" in deep:
        copy.set_params(spec__max_flagged=7)
        assert copy.spec.max_flagged == 7 and copy.get_params()["spec__max_flagged"] == 7
        assert det.spec.max_flagged != 7  # the original is untouched
        with pytest.raises(InputError, match="^detector.max_flagged: "):
            copy.set_params(spec__max_flagged=-1)
    assert copy.set_params(**{field: deep[field]}).get_params()[field] == deep[field]


@pytest.mark.parametrize("kind", KINDS)
def test_unfitted_selector_raises(kind):
    det = make_detector(default_config(kind))
    with pytest.raises(NotFittedError, match="not fitted"):
        det.get_support()
    with pytest.raises(NotFittedError):
        det.get_support(indices=True)
    with pytest.raises(NotFittedError):
        det.to_selection()


@pytest.mark.parametrize("kind", KINDS)
def test_fit_returns_self_and_leaves_inputs_alone(kind, fitted, problem):
    det, returned, X0, y0 = fitted[kind]
    X, y = problem[0], problem[1]
    assert returned is det
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(y, y0)
    learned = _learned_attrs(det)
    assert {"scores_", "support_", "threshold_"} <= set(learned)
    assert det.name == kind


@pytest.mark.parametrize("kind", KINDS)
def test_support_mask_and_indices(kind, fitted):
    det = fitted[kind][0]
    n = 200
    mask = det.get_support()
    assert isinstance(mask, np.ndarray) and mask.shape == (n,) and mask.dtype == bool
    scores = np.asarray(det.scores_, dtype=float)
    assert scores.shape == (n,) and np.isfinite(scores).all()
    idx = det.get_support(indices=True)
    assert idx.dtype.kind == "i" and len(idx) == mask.sum()
    np.testing.assert_array_equal(np.sort(idx), np.flatnonzero(mask))
    assert np.all(np.diff(scores[idx]) <= 0), "indices must be ordered by descending score"
    if np.isfinite(det.threshold_):
        assert np.all(scores[mask] > det.threshold_)


@pytest.mark.parametrize("kind", KINDS)
def test_to_selection_is_consistent(kind, fitted, tmp_path):
    det = fitted[kind][0]
    sel = det.to_selection()
    assert isinstance(sel, Selection)
    np.testing.assert_array_equal(sel.mask, det.get_support())
    np.testing.assert_array_equal(sel.indices, det.get_support(indices=True))
    assert sel.n_flagged == len(sel.indices) == len(sel.reasons) == int(det.get_support().sum())
    assert all(isinstance(r, str) and r for r in sel.reasons)
    np.testing.assert_allclose(sel.scores, det.scores_)
    assert sel.detector == kind
    assert isinstance(sel.threshold, float)
    if sel.suggested_labels is not None:
        assert sel.suggested_labels.shape == (200,) and set(np.unique(sel.suggested_labels)) <= {0, 1}
    # the Selection is a copy: changing it does not change the fitted selector
    sel.mask[:] = ~sel.mask
    assert not np.array_equal(sel.mask, det.get_support())
    # save / load round trip
    sel = det.to_selection()
    sel.save(tmp_path / "sel.npz")
    back = Selection.load(tmp_path / "sel.npz")
    np.testing.assert_array_equal(back.mask, sel.mask)
    np.testing.assert_array_equal(back.indices, sel.indices)
    np.testing.assert_array_equal(back.scores, sel.scores)
    assert back.reasons == sel.reasons and back.detector == sel.detector
    assert (back.suggested_labels is None) == (sel.suggested_labels is None)


@pytest.mark.parametrize("kind", KINDS)
def test_fit_is_deterministic(kind, fitted, problem):
    X, y, _, _, context = problem
    first = fitted[kind][0]
    again = make_detector(default_config(kind)).fit(X, y, context)
    np.testing.assert_array_equal(again.get_support(), first.get_support())
    np.testing.assert_allclose(again.scores_, first.scores_, rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------------------------------- cleanlab
def test_cleanlab_recall_floor_on_easy_problem(fitted, problem):
    _, _, y_clean, flipped, _ = problem
    det = fitted["cleanlab"][0]
    quality = detection_metrics(det.get_support(), flipped)
    assert quality["recall"] >= 0.8, quality
    assert quality["precision"] >= 0.7, quality
    caught = det.get_support() & flipped
    # the suggested label of a caught flip is the clean label
    np.testing.assert_array_equal(det.suggested_labels_[caught], y_clean[caught])
    assert det.info_["out_of_sample_accuracy"] == pytest.approx(float((det.suggested_labels_ == problem[1]).mean()))
    assert det.pred_probs_.shape == (200, 2)
    np.testing.assert_allclose(det.pred_probs_.sum(axis=1), 1.0, atol=1e-6)


def test_cleanlab_max_flagged_keeps_top_scores(problem, fitted):
    X, y, _, _, context = problem
    full = fitted["cleanlab"][0]
    capped = make_detector(CleanlabDetector(max_flagged=3)).fit(X, y, context)
    assert capped.get_support().sum() == 3
    np.testing.assert_array_equal(capped.get_support(indices=True), full.get_support(indices=True)[:3])


def test_cleanlab_needs_model_factory_and_enough_rows(problem):
    X, y = problem[0], problem[1]
    with pytest.raises(InputError, match="needs the run's model factory"):
        make_detector(CleanlabDetector()).fit(X, y, FitContext(seed=0))
    y_rare = y.copy()
    y_rare[:] = 0
    y_rare[:2] = 1
    with pytest.raises(InputError, match="detector.folds=5: a class has fewer training rows than folds"):
        make_detector(CleanlabDetector(folds=5)).fit(X, y_rare, problem[4])


def test_cleanlab_from_given_probabilities(problem, fitted, tmp_path):
    """The user's out-of-sample probabilities (a .npy file) give the same flags as computing them; no model is
    trained; a wrong shape or non-probabilities are refused in one line."""
    X, y = problem[0], problem[1]
    full = fitted["cleanlab"][0]
    np.save(tmp_path / "probs.npy", full.pred_probs_)
    given = make_detector(CleanlabDetector(pred_probs_path=tmp_path / "probs.npy")).fit(X, y, FitContext(seed=0))
    np.testing.assert_array_equal(given.get_support(), full.get_support())
    np.save(tmp_path / "short.npy", full.pred_probs_[:-1])
    with pytest.raises(InputError, match=r"^detector.pred_probs_path: \S+short.npy has shape \(199, 2\); expected "
                                         r"\(n_train, n_classes\) = \(200, 2\)$"):
        make_detector(CleanlabDetector(pred_probs_path=tmp_path / "short.npy")).fit(X, y, FitContext(seed=0))
    np.save(tmp_path / "bad.npy", full.pred_probs_ * 2)
    with pytest.raises(InputError, match="each row must be probabilities"):
        make_detector(CleanlabDetector(pred_probs_path=tmp_path / "bad.npy")).fit(X, y, FitContext(seed=0))


def test_pred_probs_path_resolves_against_the_config_folder(tmp_path, monkeypatch):
    from tda_clean.config import load_config

    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "run.yaml").write_text("data: {kind: digits}\ndetector: {kind: cleanlab, pred_probs_path: p.npy}\n")
    monkeypatch.chdir(tmp_path)
    assert load_config("cfg/run.yaml").detector.pred_probs_path.resolve() == tmp_path / "cfg" / "p.npy"
