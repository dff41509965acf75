"""Unlearning: Newton-step removal matches retraining on a convex model; every method runs and is timed."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from tda_clean.actions.unlearn import unlearn, unlearn_action
from tda_clean.config import LogisticConfig, TrainConfig, parse_config, unlearn_spec
from tda_clean.errors import InputError
from tda_clean.models.factory import build_model
from tda_clean.models.trainer import fit
from tests.unit_helpers import torch_single_thread

_single_thread = pytest.fixture(scope="module", autouse=True)(torch_single_thread)
TRAIN = TrainConfig(optimizer="lbfgs", l2=1e-2, epochs=200, device="cpu", dtype="float64")


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.fixture(scope="module")
def convex():
    d = load_digits()
    X, y = (d.data[:400] / 16.0), d.target[:400]
    model = build_model(LogisticConfig(), (64,), 10, 0)
    fit(model, X, y, TRAIN, 0, progress=False)
    forget = np.zeros(len(y), dtype=bool)
    forget[np.random.default_rng(0).choice(len(y), 20, replace=False)] = True
    retrained, info = unlearn(unlearn_spec(method="retrain"), model, X, y, forget, TRAIN, 0)
    return X, y, model, forget, retrained, info


@pytest.mark.parametrize("order, steps, bound", [(1, 1, 0.15), (2, 1, 0.03), (2, 2, 1e-3)])
def test_newton_matches_retraining_on_convex_model(convex, order, steps, bound):
    X, y, model, forget, retrained, _ = convex
    before = flat(model).clone()
    cfg = unlearn_spec(method="newton", params="all", solver="exact", damping=0.0, order=order, steps=steps)
    unlearned, info = unlearn(cfg, model, X, y, forget, TRAIN, 0)
    moved = float((flat(retrained) - before).norm())
    distance = float((flat(unlearned) - flat(retrained)).norm())
    # measured: order 1 -> 0.069, order 2 -> 0.0094, order 2 + 1 Newton step -> 1.5e-4 (relative distance)
    print(f"order={order} steps={steps}: |newton - retrain| / |retrain - before| = {distance / moved:.2e}")
    assert distance / moved < bound
    np.testing.assert_array_equal(flat(model), before)  # the before-model is untouched
    assert info["method"] == "newton" and info["seconds"] > 0 and len(info["step_norms"]) == steps


def test_second_order_beats_first_order(convex):
    X, y, model, forget, retrained, _ = convex
    dist = {}
    for order in (1, 2):
        cfg = unlearn_spec(method="newton", params="all", damping=0.0, order=order, steps=1)
        dist[order] = float((flat(unlearn(cfg, model, X, y, forget, TRAIN, 0)[0]) - flat(retrained)).norm())
    assert dist[2] < 0.5 * dist[1]


@pytest.mark.parametrize("method", ["retrain", "newton", "finetune", "ascent"])
def test_every_method_runs_records_time_and_keeps_accuracy(convex, method):
    X, y, model, forget, _, _ = convex
    gradient = {"epochs": 5, "lr": 1e-2, "reinit_head": False} if method in ("finetune", "ascent") else {}
    out, info = unlearn(unlearn_spec(method=method, **gradient), model, X, y, forget, TRAIN, 0)
    assert info["method"] == method and info["seconds"] >= 0
    assert info["n_forget"] == 20 and info["n_retain"] == 380
    with torch.no_grad():
        acc = float((out(torch.as_tensor(X)).argmax(1).numpy() == y).mean())
    assert acc > 0.8, (method, acc)


def test_bad_inputs(convex):
    X, y, model, forget, _, _ = convex
    with pytest.raises(InputError, match="forget_mask must be a boolean array"):
        unlearn(unlearn_spec(), model, X, y, forget.astype(int), TRAIN, 0)
    with pytest.raises(InputError, match="the forget set is the whole training set"):
        unlearn(unlearn_spec(), model, X, y, np.ones(len(y), dtype=bool), TRAIN, 0)
    with pytest.raises(InputError, match=r"action.method: Input should be 'retrain', 'newton'"):
        parse_config({"data": {"kind": "digits"}, "action": {"kind": "unlearn", "method": "scrub"}})
    out, info = unlearn(unlearn_spec(), model, X, y, np.zeros(len(y), dtype=bool), TRAIN, 0)
    np.testing.assert_array_equal(flat(out), flat(model))


def test_unlearn_action_audits_removed_rows():
    from tda_clean.actions import replay_audit
    from tda_clean.selection import Selection
    from tests.unit_helpers import toy_dataset

    train = toy_dataset(12)
    mask = np.zeros(12, dtype=bool)
    mask[[2, 5]] = True
    sel = Selection(mask=mask, indices=np.array([5, 2]), scores=mask.astype(float), threshold=float("nan"),
                    detector="delta_influence", reasons=("a", "b"))
    result = unlearn_action(train, sel, unlearn_spec(method="newton"))
    assert result.counts == {"unlearned": 2} and len(result.train) == 10
    assert all(r.startswith("unlearn (newton); ") for r in result.audit["reason"])
    rebuilt = replay_audit(train, result.audit)
    np.testing.assert_array_equal(rebuilt.row_id, result.train.row_id)
