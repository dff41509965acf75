"""Removal influence vs actual retraining on small convex problems (docs/methods.md#influence-functions).

L2 logistic regression (weights and bias), float64, exact solver without damping, on two scikit-learn data sets
standardised with the training split's statistics: iris (105 training rows, 4 features, 3 classes) and breast
cancer's ten "mean" features (398 rows, 2 classes). The base model and every retrained model minimise
``mean CE + l2/2 ||theta||^2`` with Newton's method to a step below 1e-10, warm-started at theta*. Objective: the
mean test loss. Single rows: 100 seeded rows, first order (the engine's scores) and Basu's second order on
one-row groups; groups: 30 seeded random groups of 5-10% of the rows, second order. Each predicted change is
compared with the change measured by retraining: the share of equal signs and Pearson's r.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tda_clean.influence import InfluenceEngine, TrainingObjective
from tda_clean.influence.group import GroupInfluence
from tests.influence.helpers import EXACT0, ConvexProblem
from tests.unit_helpers import torch_single_thread

_single_thread = pytest.fixture(scope="module", autouse=True)(torch_single_thread)


def _agreement(predicted, actual) -> tuple[float, float]:
    predicted, actual = np.asarray(predicted), np.asarray(actual)
    return float(np.mean(np.sign(predicted) == np.sign(actual))), float(np.corrcoef(predicted, actual)[0, 1])


@pytest.mark.parametrize("l2", [1e-3, 1e-2])
@pytest.mark.parametrize("name", ["iris", "breast_cancer_mean"])
def test_removal_influence_matches_retraining(name, l2):
    pb = ConvexProblem(name, l2)
    n = len(pb.y)
    engine = InfluenceEngine(pb.model, (pb.X, pb.y), EXACT0, TrainingObjective(l2))
    gi = GroupInfluence(engine)
    rows = np.random.default_rng(1).choice(n, 100, replace=False)
    actual = [pb.actual(np.array([i])) for i in rows]

    first = engine.influence(pb.objective).per_row[rows]
    second = gi.objective_change([[int(i)] for i in rows], pb.objective).second[:, 0]
    sign1, r1 = _agreement(first, actual)
    sign2, r2 = _agreement(second, actual)
    # the textbook form (1/n) a^T g_i, without the regulariser's re-weighting: same ranking, wrong sign
    a = engine.inverse_hvp(pb.objective)[0]
    textbook = (first * (n - 1) - float(a @ engine.regulariser_gradient())) / n
    sign0, r0 = _agreement(textbook, actual)
    print(f"{name} l2={l2} single rows: textbook sign {sign0:.2f} r {r0:.3f} | first order sign {sign1:.2f} "
          f"r {r1:.3f} | second order sign {sign2:.2f} r {r2:.3f}")
    assert sign1 >= 0.95 and sign2 >= 0.95
    assert r2 >= 0.95 and r1 >= 0.9
    assert sign0 < 0.9  # the re-weighting term is what fixes the sign on these problems

    rng = np.random.default_rng(2)
    groups = [rng.choice(n, size=int(rng.integers(int(0.05 * n), int(0.1 * n) + 1)), replace=False)
              for _ in range(30)]
    actual_g = [pb.actual(g) for g in groups]
    res = gi.objective_change(groups, pb.objective)
    sign_g, r_g = _agreement(res.second[:, 0], actual_g)
    textbook_g = GroupInfluence(engine, regularized_rows=False).objective_change(groups, pb.objective).second[:, 0]
    print(f"{name} l2={l2} groups of 5-10%: textbook second order sign/r {_agreement(textbook_g, actual_g)} | "
          f"first order {_agreement(res.first[:, 0], actual_g)} | second order sign {sign_g:.2f} r {r_g:.3f}")
    assert sign_g >= 0.95 and r_g >= 0.95


def test_retraining_reference_is_converged():
    """The Newton reference reaches the optimum: the full gradient of the training objective vanishes."""
    pb = ConvexProblem("breast_cancer_mean", 1e-3)
    W = pb.W.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(pb.Xa @ W.T, pb.ya) + 0.5 * pb.l2 * (W * W).sum()
    (g,) = torch.autograd.grad(loss, W)
    assert float(g.abs().max()) < 1e-12
