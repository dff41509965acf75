import numpy as np
import pytest
import torch

from tda_clean.errors import InputError
from tda_clean.influence import ParamSpace, layer_grads, per_sample_grads, per_sample_grads_loop
from tda_clean.influence.gradients import cross_entropy_row


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


def test_layer_rule_with_another_row_loss_strided_conv_and_sequence_input():
    """Margin-type row loss, a strided / dilated conv without bias, and a Linear over (n, T, d) inputs: the gradient
    parts give the same dot products as materialised loop gradients."""
    from tda_clean.influence.objectives import Margin

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, stride=2, padding=2, dilation=2, bias=False),
                                torch.nn.Tanh(), torch.nn.Flatten(2), torch.nn.Linear(9, 4), torch.nn.Flatten(1),
                                torch.nn.Linear(12, 5)).double().eval()
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(6, 2, 5, 5)), rng.integers(0, 5, 6)
    space = ParamSpace(model, "all")
    assert layer_grads.supported(space)
    parts = layer_grads.gradient_parts(space, torch.as_tensor(X), torch.as_tensor(y), Margin.row_value)
    assert len(parts.factors) == 1 and parts.dense is not None  # last Linear factored; conv and 3-D Linear dense
    G = per_sample_grads_loop(space, X, y, loss=Margin.row_value)
    torch.testing.assert_close(layer_grads.part_dots(parts, parts), G @ G.T, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(layer_grads.part_sq_norms(parts), (G * G).sum(1), rtol=1e-9, atol=1e-12)


def test_unsupported_or_shared_layers_are_refused():
    """A LayerNorm parameter is not covered by the layer rule; a Linear used twice makes it return None."""

    class Shared(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.norm, self.head = torch.nn.Linear(3, 3), torch.nn.LayerNorm(3), torch.nn.Linear(3, 2)

        def forward(self, x):
            return self.head(self.norm(torch.tanh(self.lin(torch.tanh(self.lin(x))))))

    torch.manual_seed(1)
    model = Shared().double().eval()
    X, y = np.random.default_rng(1).normal(size=(5, 3)), np.array([0, 1, 1, 0, 1])
    assert not layer_grads.supported(ParamSpace(model, "all"))
    linear_only = ParamSpace(model, ("lin", "head"))
    assert layer_grads.supported(linear_only)
    assert layer_grads.gradient_parts(linear_only, torch.as_tensor(X), torch.as_tensor(y), cross_entropy_row) is None
    for space in (ParamSpace(model, "all"), linear_only):
        torch.testing.assert_close(per_sample_grads(space, X, y), per_sample_grads_loop(space, X, y),
                                   rtol=1e-6, atol=1e-12)


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


class _InPlace(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.b(torch.relu_(self.a(x)))  # modifies a's output in place


class _Tied(_InPlace):
    def __init__(self):
        super().__init__()
        self.c = torch.nn.Linear(4, 4)
        self.c.weight = torch.nn.Parameter(self.a.weight.new_zeros(4, 4) + 0.1)
        self.d = torch.nn.Linear(4, 4)
        self.d.weight = self.c.weight  # one Parameter, two modules

    def forward(self, x):
        return self.b(torch.tanh(self.d(torch.tanh(self.c(torch.tanh(self.a(x)))))))


class _NoGradAndKwargs(_InPlace):
    def forward(self, x):
        with torch.no_grad():
            h = self.a(x)
        return self.b(input=torch.tanh(h))


@pytest.mark.parametrize("cls", [_InPlace, _Tied, _NoGradAndKwargs])
def test_layer_rule_refuses_forward_passes_it_would_get_wrong(cls):
    """In-place edits of a layer output, tied weights, a layer run without grad or called with keywords: the
    factored dot products are refused and gradient similarity still equals the loop reference."""
    from tda_clean.influence import gradient_similarity
    from tda_clean.influence.objectives import PerSampleLoss

    torch.manual_seed(0)
    model = cls().double().eval()
    X, y = np.random.default_rng(0).normal(size=(6, 3)), np.array([0, 1, 1, 0, 1, 0])
    space = ParamSpace(model, "all")
    assert not layer_grads.supported(space) or layer_grads.gradient_parts(
        space, torch.as_tensor(X), torch.as_tensor(y), cross_entropy_row) is None
    ref = per_sample_grads_loop(space, X, y)
    torch.testing.assert_close(per_sample_grads(space, X, y), ref, rtol=1e-6, atol=1e-12)
    sim = gradient_similarity(model, (X, y), PerSampleLoss(X[:2], y[:2])).scores
    np.testing.assert_allclose(sim, (ref[:2] @ ref.T).numpy(), rtol=1e-9, atol=1e-12)
