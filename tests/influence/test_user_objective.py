"""Cross-loss objectives from the user: a callable on the logits or on a named module's output (forward hook)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tda_clean.errors import InputError
from tda_clean.influence import CallableObjective, ParamSpace, TrainingObjective, compute_influence
from tda_clean.models.factory import MLP, LogisticRegression
from tests.influence.helpers import EXACT0, blobs, fit_convex

L2 = 0.1


def embedding_gap(group: np.ndarray):
    """``||mean_a z - mean_b z||^2`` between the two groups' mean representations ``z`` (m, d)."""
    a, b = torch.as_tensor(group), torch.as_tensor(~group)
    return lambda z: (z[a].mean(0) - z[b].mean(0)).pow(2).sum()


def prob_gap(group: np.ndarray):
    """Mean predicted probability of class 0 in group a minus in group b, from the logits (m, C)."""
    a, b = torch.as_tensor(group), torch.as_tensor(~group)
    return lambda logits: torch.softmax(logits, 1)[a, 0].mean() - torch.softmax(logits, 1)[b, 0].mean()


@pytest.mark.parametrize("module, make", [("head", embedding_gap), (None, prob_gap)])
def test_user_objective_influence_matches_leave_one_out_retraining(module, make):
    """Convex L2 logistic regression, exact solver, damping 0: the predicted change of the user's objective when a
    row is removed tracks the change measured by retraining without it (Pearson >= 0.95 over 30 rows)."""
    X, y = blobs(n=60, d=4, classes=3, seed=3)
    Xq, _ = blobs(n=40, d=4, classes=3, seed=4)
    torch.manual_seed(0)
    model = fit_convex(LogisticRegression(4, 3).double(), X, y, L2)
    objective = CallableObjective(make(Xq[:, 1] > 0), "gap", X=Xq, module=module)
    predicted = compute_influence(model, (X, y), objective, EXACT0, TrainingObjective(L2)).per_row
    base = objective.values(model)[0]
    rows = np.arange(30)
    actual = [objective.values(fit_convex(copy.deepcopy(model), np.delete(X, i, 0), np.delete(y, i), L2))[0] - base
              for i in rows]
    assert np.corrcoef(predicted[rows], actual)[0, 1] >= 0.95


def test_module_output_is_captured_by_name():
    """The hook sees the named module's output: same query gradient as computing the embedding directly."""
    X, _ = blobs(n=20, d=4, classes=3, seed=1)
    torch.manual_seed(1)
    model = MLP(4, 3, (5,)).double()
    fn = embedding_gap(X[:, 0] > 0)
    space = ParamSpace(model, "all")
    hooked = CallableObjective(fn, "gap", X=X, module="body").query_gradients(space)
    direct = CallableObjective(lambda m: fn(m.features(torch.as_tensor(X))), "gap").query_gradients(space)
    torch.testing.assert_close(hooked, direct)
    with pytest.raises(InputError, match="no module named 'penultimate' \\(modules: body, body.0, body.1, head\\)"):
        CallableObjective(fn, "gap", X=X, module="penultimate").values(model)
    with pytest.raises(InputError, match="module='body' needs the query inputs X"):
        CallableObjective(fn, "gap", module="body")
