"""A mean objective's query gradient (1, p) is summed block by block: equal to the mean of the per-row gradients,
and the (n_query, p) matrix is never built (it was 4.8 GB for 2,000 validation rows of the 0.6M-parameter
reference workload)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tda_clean.influence import MeanLoss
from tda_clean.influence import objectives
from tda_clean.influence.gradients import per_sample_grads
from tda_clean.influence.params import ParamSpace
from tda_clean.models.factory import MLP
from tests.influence.helpers import blobs


@pytest.mark.parametrize("memory_mb", [1e-4, 256.0])  # many one-row blocks, or one block
def test_mean_query_gradient_is_the_mean_of_row_gradients_without_the_matrix(monkeypatch, memory_mb):
    X, y = blobs(n=57, d=5)
    torch.manual_seed(0)
    space = ParamSpace(MLP(5, 3, (7,)).double().eval(), "all")
    expected = per_sample_grads(space, X, y).mean(0, keepdim=True)

    def refuse(*args, **kwargs):
        raise AssertionError("the (n_query, p) matrix was built")

    monkeypatch.setattr(objectives, "per_sample_grads", refuse)
    got = MeanLoss(X, y).query_gradients(space, memory_mb=memory_mb)
    assert got.shape == (1, space.p)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-12, atol=1e-15)


def test_nan_query_row_is_named_with_its_position():
    X, y = blobs(n=30, d=5)
    X[17, 2] = np.nan
    space = ParamSpace(MLP(5, 3, (7,)).double().eval(), "all")
    with pytest.raises(Exception, match=r"mean_loss query gradients are NaN/inf for row positions \[17\]"):
        MeanLoss(X, y).query_gradients(space, memory_mb=1e-4)
