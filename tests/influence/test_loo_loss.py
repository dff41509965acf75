"""The ``loo_loss`` score of the self-influence detector against actual leave-one-out retraining.

L2 logistic regression (float64, Newton to the optimum, exact solver without damping) on iris and breast
cancer's ten mean features (:class:`ConvexProblem`); for 60 seeded training rows, each row's loss of its own
(given) label under the model retrained WITHOUT that row is measured and compared with the detector's
``loo_loss_`` (training loss + self-influence, the first-order leave-one-out loss).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from tda_clean.config import SelfInfluenceDetector, TrainConfig
from tda_clean.selection.base import FitContext
from tda_clean.selection.influence_detectors import SelfInfluenceSelector
from tests.influence.helpers import ConvexProblem, newton
from tests.unit_helpers import torch_single_thread

_single_thread = pytest.fixture(scope="module", autouse=True)(torch_single_thread)


def _actual_loo_loss(pb: ConvexProblem, i: int) -> float:
    keep = torch.ones(len(pb.y), dtype=torch.bool)
    keep[i] = False
    W = newton(pb.Xa[keep], pb.ya[keep], pb.W.clone(), pb.l2, iters=100)
    return float(torch.nn.functional.cross_entropy(pb.Xa[i:i + 1] @ W.T, pb.ya[i:i + 1]))


def _fit(pb: ConvexProblem, score: str) -> SelfInfluenceSelector:
    cfg = TrainConfig(optimizer="lbfgs", l2=pb.l2, dtype="float64", device="cpu")
    spec = SelfInfluenceDetector(score=score, max_flagged=5, damping=0.0, dtype="float64")
    ctx = FitContext(seed=0, model=pb.model, train_config=cfg, n_classes=int(pb.y.max()) + 1)
    return SelfInfluenceSelector(spec).fit(pb.X, pb.y, ctx)


@pytest.mark.parametrize("name", ["iris", "breast_cancer_mean"])
def test_loo_loss_matches_leave_one_out_retraining(name):
    pb = ConvexProblem(name, 1e-2)
    loo = _fit(pb, "loo_loss")
    plain = _fit(pb, "self_influence")
    rows = np.random.default_rng(3).choice(len(pb.y), 60, replace=False)
    actual = np.array([_actual_loo_loss(pb, int(i)) for i in rows])
    predicted = loo.loo_loss_[rows]
    with torch.no_grad():  # the training loss alone (the row's loss under the model that saw it)
        in_sample = torch.nn.functional.cross_entropy(pb.Xa[rows] @ pb.W.T, pb.ya[rows], reduction="none").numpy()
    r = float(np.corrcoef(predicted, actual)[0, 1])
    rho_plain = float(spearmanr(plain.scores_[rows], actual)[0])
    print(f"{name}: loo_loss r {r:.4f}; |error| {np.abs(predicted - actual).mean():.2e} vs training loss alone "
          f"{np.abs(in_sample - actual).mean():.2e}; self-influence alone Spearman {rho_plain:.3f}")
    assert r >= 0.99
    assert np.abs(predicted - actual).mean() < 0.5 * np.abs(in_sample - actual).mean()
    assert float(spearmanr(predicted, actual)[0]) > rho_plain  # the loss term is what ranks like the LOO loss
    # the detector ranks by it; loo_loss = training loss + the default self-influence score
    assert np.array_equal(loo.scores_, loo.loo_loss_) and np.allclose(predicted, in_sample + plain.scores_[rows])
    assert loo.info_["score"] == "loo_loss"
    assert set(loo.get_support(indices=True)) == set(np.argsort(-loo.loo_loss_, kind="stable")[:5])


def test_unknown_score_is_named_in_the_error():
    from tda_clean.config import parse_config
    from tda_clean.errors import InputError

    with pytest.raises(InputError, match=r"detector\.score: .*'loo_loss'"):
        parse_config({"data": {"kind": "digits"}, "detector": {"kind": "self_influence", "score": "bogus"}})
