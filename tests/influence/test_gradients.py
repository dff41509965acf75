import numpy as np
import pytest
import torch

from tda_clean.errors import InputError
from tda_clean.influence import ParamSpace, per_sample_grads, per_sample_grads_loop


@pytest.mark.parametrize("subset", ["all", "head", ("body.0",)])
def test_vmap_matches_loop_mlp(mlp, subset):
    model, X, y = mlp
    space = ParamSpace(model, subset)
    G = per_sample_grads(space, X, y)
    assert G.shape == (len(X), space.p)
    torch.testing.assert_close(G, per_sample_grads_loop(space, X, y), rtol=1e-6, atol=1e-12)


def test_vmap_matches_loop_cnn(cnn):
    model, X, y = cnn
    space = ParamSpace(model, "all")
    torch.testing.assert_close(per_sample_grads(space, X, y), per_sample_grads_loop(space, X, y), rtol=1e-6, atol=1e-12)


def test_batching_invariance(mlp):
    model, X, y = mlp
    space = ParamSpace(model)
    full = per_sample_grads(space, X, y, batch_size=len(X))
    for size in (1, 7):
        torch.testing.assert_close(per_sample_grads(space, X, y, batch_size=size), full, rtol=1e-12, atol=1e-14)
    tiny_budget = per_sample_grads(space, X, y, memory_mb=1e-3)  # one row per batch
    torch.testing.assert_close(tiny_budget, full, rtol=1e-12, atol=1e-14)


def test_head_subset_is_a_slice_of_all(mlp):
    model, X, y = mlp
    all_space, head = ParamSpace(model, "all"), ParamSpace(model, "head")
    G_all, G_head = per_sample_grads(all_space, X, y), per_sample_grads(head, X, y)
    torch.testing.assert_close(G_all[:, -head.p :], G_head)


def test_nan_rows_are_named(mlp):
    model, X, y = mlp
    X = X.copy()
    X[[3, 11]] = np.nan
    with pytest.raises(InputError, match=r"row positions \[3, 11\]"):
        per_sample_grads(ParamSpace(model), X, y, batch_size=5)


def test_unknown_module_is_named(mlp):
    with pytest.raises(InputError, match="'nope' not found"):
        ParamSpace(mlp[0], ("nope",))
