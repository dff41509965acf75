import numpy as np
import pandas as pd
import pytest
import torch

from tda_clean.config import HarmfulDetector, InfluenceRelabelDetector, SelfInfluenceDetector, TrainConfig
from tda_clean.errors import InputError
from tda_clean.models.factory import LogisticRegression
from tda_clean.models.trainer import fit
from tda_clean.selection.base import DETECTORS, FitContext, Selection
from tda_clean.selection.influence_detectors import (  # noqa: F401  (registers the detectors)
    HarmfulSelector, InfluenceRelabelSelector, SelfInfluenceSelector,
)


@pytest.fixture(scope="module")
def noisy():
    rng = np.random.default_rng(0)
    n = 150
    X = rng.normal(size=(n, 3))
    y_clean = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int64)
    flipped = rng.choice(n, 12, replace=False)
    y = y_clean.copy()
    y[flipped] = 1 - y[flipped]
    Xv = rng.normal(size=(60, 3))
    yv = (Xv[:, 0] + 0.5 * Xv[:, 1] > 0).astype(np.int64)
    gv = pd.DataFrame({"sex": np.where(Xv[:, 2] > 0, "F", "M")})
    cfg = TrainConfig(optimizer="lbfgs", l2=1e-2, epochs=50, dtype="float64", device="cpu")
    torch.manual_seed(0)
    model = LogisticRegression(3, 2)
    fit(model, X, y, cfg, seed=0, progress=False)
    ctx = FitContext(seed=0, model=model, train_config=cfg, X_val=Xv, y_val=yv, groups_val=gv, n_classes=2)
    return X, y, flipped, ctx


def test_registered_from_config():
    for cfg, cls in ((SelfInfluenceDetector(max_flagged=3), SelfInfluenceSelector),
                     (HarmfulDetector(objective="worst_group_loss"), HarmfulSelector),
                     (InfluenceRelabelDetector(fraction=0.1), InfluenceRelabelSelector)):
        sel = DETECTORS[cfg.kind](cfg)
        assert isinstance(sel, cls) and sel.get_params(deep=False) == {"spec": cfg}


def test_self_influence_finds_flipped_labels(noisy):
    X, y, flipped, ctx = noisy
    sel = SelfInfluenceSelector(SelfInfluenceDetector(max_flagged=12, damping=0.0, dtype="float64")).fit(X, y, ctx)
    s = sel.to_selection()
    assert isinstance(s, Selection) and s.n_flagged == 12 and s.detector == "self_influence"
    assert len(set(s.indices) & set(flipped)) >= 8  # precision >= 2/3 at the true budget
    assert s.suggested_labels is not None and (s.suggested_labels[flipped] != y[flipped]).mean() > 0.6
    assert list(s.indices) == list(np.argsort(-s.scores)[:12])


@pytest.mark.parametrize("objective", ["val_loss", "worst_group_loss", "group_loss_gap",
                                       "demographic_parity_gap", "equalized_odds_gap"])
def test_harmful_flags_only_helpful_removals(noisy, objective):
    X, y, flipped, ctx = noisy
    sel = HarmfulSelector(HarmfulDetector(objective=objective, fraction=0.1, damping=0.0, dtype="float64")).fit(X, y, ctx)
    mask = sel.get_support()
    assert mask.sum() <= 15 and (sel.scores_[mask] > 0).all()
    if objective == "val_loss":
        assert len(set(np.flatnonzero(mask)) & set(flipped)) >= 6


def test_relabel_suggests_the_clean_label(noisy):
    X, y, flipped, ctx = noisy
    sel = InfluenceRelabelSelector(InfluenceRelabelDetector(max_flagged=12, damping=0.0, dtype="float64")).fit(X, y, ctx)
    s = sel.to_selection()
    hits = [i for i in s.indices if i in set(flipped)]
    assert len(hits) >= 6
    assert (s.suggested_labels[hits] == 1 - y[hits]).all()
    unflagged = ~s.mask
    assert ((s.suggested_labels[unflagged] == y[unflagged]) | (s.scores[unflagged] > 0)).all()


def test_missing_context_is_explained(noisy):
    X, y, _, ctx = noisy
    with pytest.raises(InputError, match="validation split"):
        HarmfulSelector().fit(X, y, FitContext(seed=0, model=ctx.model, train_config=ctx.train_config))
    with pytest.raises(InputError, match="group_column"):
        HarmfulSelector(HarmfulDetector(objective="worst_group_loss", group_column="race")).fit(X, y, ctx)
