"""The gap check and the selector share one trained model: with only a model factory in the context
(``FitContext.make_model``, no ``model``), a gap-checked group selector trains the model once, whether the check
lets it select, declines, or is off."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tda_clean.config import LogisticConfig, TrainConfig, parse_config
from tda_clean.models.factory import build_model
from tda_clean.selection import FitContext, make_detector
from tests.unit_helpers import torch_single_thread

_single_thread = pytest.fixture(scope="module", autouse=True)(torch_single_thread)
TRAIN = TrainConfig(optimizer="lbfgs", l2=1e-2, epochs=30, device="cpu", dtype="float64")
KINDS = ("group_first_order", "group_second_order", "d3m")


def _planted(n: int, seed: int, gap: bool = True):
    """Group "b" (30%) loses positives whatever its features when ``gap``; else the group is a coin flip."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    y = (1.5 * X[:, 0] - X[:, 1] + rng.logistic(size=n) > 0).astype(np.int64)
    g = rng.choice(["a", "b"], size=n, p=[0.7, 0.3])
    if gap:  # the group is not in the features: the model cannot learn it, its loss and errors differ by group
        y[(g == "b") & (rng.random(n) < 0.8)] = 0
    return X, y, g


class CountingFactory:
    """``make_model(seed)`` that counts the models it builds (each trained model starts as one)."""

    def __init__(self):
        self.built = 0

    def __call__(self, seed: int):
        self.built += 1
        return build_model(LogisticConfig(), (3,), 2, seed)


def _det(kind: str, **kw):
    spec = {"kind": kind, "damping": 0.0, "params": "all", "max_flagged": 12, **kw}
    if kind != "d3m":
        spec.setdefault("objective", "equalized_odds_gap")
        spec.setdefault("components", "off" if kind == "group_first_order" else "on")
    if kind == "group_second_order":
        spec.update(rounds=1, iters=5)
    return make_detector(parse_config({"data": {"kind": "digits"}, "detector": spec}).detector)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", ["selects", "declines", "check_off"])
def test_one_training_per_fit(kind, case):
    X, y, _ = _planted(300, 0)
    Xv, yv, gv = _planted(1000, 1, gap=case != "declines")
    factory = CountingFactory()
    ctx = FitContext(seed=0, make_model=factory, train_config=TRAIN, X_val=Xv, y_val=yv,
                     groups_val=pd.DataFrame({"g": gv}), n_classes=2)
    extra = {"min_gap_confidence": None} if case == "check_off" else {}
    sel = _det(kind, **extra).fit(X, y, ctx).to_selection()
    assert factory.built == 1
    if case == "selects":
        assert sel.info["gap_check"]["significant"] and sel.n_flagged == 12
    elif case == "declines":
        assert not sel.info["gap_check"]["significant"] and sel.n_flagged == 0
    else:
        assert "gap_check" not in sel.info and sel.n_flagged == 12
