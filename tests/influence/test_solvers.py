import numpy as np
import pytest
import torch
from pydantic import ValidationError

from tda_clean.errors import InputError
from tda_clean.influence import (
    CGSettings, ExactSettings, KFACSettings, LissaSettings, NegativeCurvatureWarning, ParamSpace, TrainingLoss,
    TrainingObjective, make_solver, per_sample_grads,
)


def _loss(model, X, y, l2, subset="all", batch_size=16):
    return TrainingLoss(ParamSpace(model, subset), X, y, TrainingObjective(l2), batch_size=batch_size)


def _reference(loss, damping, V):
    H = torch.autograd.functional.hessian(
        lambda th: torch.nn.functional.cross_entropy(loss.space.forward(th, loss.X), loss.y)
        + 0.5 * loss.l2 * (th * th).sum(), loss.theta)
    return H, torch.linalg.solve(H + damping * torch.eye(loss.p, dtype=H.dtype), V.T).T


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_hessian_batch_invariant(mlp):
    model, X, y = mlp
    H1 = _loss(model, X, y, 0.05, batch_size=7).hessian(chunk=5)
    H2 = _loss(model, X, y, 0.05, batch_size=len(X)).hessian()
    torch.testing.assert_close(H1, H2, rtol=1e-10, atol=1e-12)


def test_exact_matches_linalg_solve(convex):
    model, X, y, l2 = convex
    loss = _loss(model, X, y, l2)
    V = torch.randn(3, loss.p, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    H, ref = _reference(loss, 0.01, V)
    solver = make_solver(ExactSettings(damping=0.01)).fit(loss)
    torch.testing.assert_close(solver.solve(V), ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(solver.hvp(V), V @ (H + 0.01 * torch.eye(loss.p, dtype=H.dtype)), rtol=1e-9, atol=1e-12)
    assert not solver.negative_curvature_ and solver.min_eigenvalue_ > 0


def test_exact_solves_an_indefinite_damped_system_by_eigendecomposition():
    """Untrained MLP, damping below -lambda_min: A = H + dI is indefinite but nonsingular. The Cholesky path cannot
    take it; the eigendecomposition path must still give linalg.solve's answer (and the convex case uses Cholesky)."""
    from tda_clean.models.factory import MLP

    torch.manual_seed(5)
    untrained = MLP(4, 3, (5,)).double().eval()
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 4)), rng.integers(0, 3, 30)
    loss = _loss(untrained, X, y, 0.0)
    lam = torch.linalg.eigvalsh(loss.hessian())
    damping = float(-lam[0]) / 2  # shifts the most negative eigenvalue but leaves it negative
    assert lam[0] + damping < 0 and bool(((lam + damping).abs() > 1e-6).all())
    V = torch.randn(2, loss.p, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    H, ref = _reference(loss, damping, V)
    with pytest.warns(NegativeCurvatureWarning):
        solver = make_solver(ExactSettings(damping=damping)).fit(loss)
    assert solver.factorization_ == "eigh" and solver.min_eigenvalue_ == pytest.approx(float(lam[0]), rel=1e-9)
    torch.testing.assert_close(solver.solve(V), ref, rtol=1e-8, atol=1e-10)


def test_exact_takes_the_cholesky_path_on_a_convex_model(convex):
    model, X, y, l2 = convex
    solver = make_solver(ExactSettings(damping=0.01)).fit(_loss(model, X, y, l2))
    assert solver.factorization_ == "cholesky" and not solver.negative_curvature_


@pytest.mark.parametrize("fixture", ["mlp", "cnn"])
def test_hvp_modes_agree(fixture, request):
    """Reverse-over-reverse (one graph, a backward per vector) and vmap(jvp(grad)) give the same H V."""
    from tda_clean.influence.curvature import loss_hvps

    model, X, y = request.getfixturevalue(fixture)
    loss = _loss(model, X, y, 0.0)
    V = torch.randn(4, loss.p, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    f = lambda th: loss._sum_loss(th, loss.X, loss.y)  # noqa: E731
    torch.testing.assert_close(loss_hvps(f, loss.theta, V, "reverse"), loss_hvps(f, loss.theta, V, "vmap"),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("settings", [CGSettings(damping=0.5, tol=1e-10),
                                      LissaSettings(damping=0.5, depth=1000, tol=1e-8)], ids=["cg", "lissa"])
def test_iterative_match_exact_on_convex(convex, settings):
    """Same damped convex system (damping 0.5 keeps LiSSA's Neumann series short on a loaded CI machine)."""
    model, X, y, l2 = convex
    loss = _loss(model, X, y, l2)
    V = per_sample_grads(loss.space, X[:4], y[:4])
    exact = make_solver(ExactSettings(damping=0.5)).fit(loss).solve(V)
    assert _rel(make_solver(settings).fit(loss).solve(V), exact) < 1e-3


def test_cg_matches_exact_undamped(convex):
    model, X, y, l2 = convex
    loss = _loss(model, X, y, l2)
    V = per_sample_grads(loss.space, X[:4], y[:4])
    exact = make_solver(ExactSettings(damping=0.0)).fit(loss).solve(V)
    assert _rel(make_solver(CGSettings(damping=0.0, tol=1e-10)).fit(loss).solve(V), exact) < 1e-6


def test_stochastic_lissa_runs_and_is_close(convex):
    model, X, y, l2 = convex
    loss = _loss(model, X, y, l2)
    V = per_sample_grads(loss.space, X[:2], y[:2])
    exact = make_solver(ExactSettings(damping=0.5)).fit(loss).solve(V)
    approx = make_solver(LissaSettings(damping=0.5, depth=60, batch_size=20, seed=3)).fit(loss).solve(V)
    assert _rel(approx, exact) < 0.3


@pytest.mark.parametrize("kind", ["kfac", "ekfac"])
def test_kfac_hvp_and_solve_are_inverse(mlp, kind):
    model, X, y = mlp
    loss = _loss(model, X, y, 0.05)
    solver = make_solver(KFACSettings(kind=kind, damping=0.1)).fit(loss)
    V = torch.randn(3, loss.p, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(solver.solve(solver.hvp(V)), V, rtol=1e-9, atol=1e-10)


def test_ekfac_eigenvalues_are_fisher_diagonal_in_kfac_basis(cnn):
    """EK-FAC's corrected eigenvalues equal diag(Q^T F Q) of the empirical Fisher F = G^T G / n (conv + linear)."""
    model, X, y = cnn
    loss = _loss(model, X, y, 0.0, batch_size=5)
    solver = make_solver(KFACSettings(kind="ekfac", fisher="empirical", damping=1.0)).fit(loss)
    G = per_sample_grads(loss.space, X, y)
    F = G.T @ G / len(X)
    for layer in solver.layers_:
        QS, QA = solver.QS_[layer.name], solver.QA_[layer.name]
        basis = torch.einsum("oa,ib->aboi", QS, QA).reshape(-1, layer.out, layer.inp)
        vecs = torch.zeros(len(basis), loss.p, dtype=torch.float64)
        vecs[:, layer.w_slice] = basis[:, :, :-1].reshape(len(basis), -1)
        vecs[:, layer.b_slice] = basis[:, :, -1]
        expected = ((vecs @ F) * vecs).sum(1)
        torch.testing.assert_close(solver.eigenvalues_[layer.name].reshape(-1), expected, rtol=1e-8, atol=1e-12)


def test_ekfac_close_to_exact_for_logistic(convex):
    model, X, y, l2 = convex
    loss = _loss(model, X, y, l2)
    V = per_sample_grads(loss.space, X, y)
    exact = make_solver(ExactSettings(damping=0.0)).fit(loss).solve(V)
    ekfac = make_solver(KFACSettings(kind="ekfac", damping=0.0, fisher="sampled")).fit(loss).solve(V)
    corr = np.corrcoef((exact * V).sum(1).numpy(), (ekfac * V).sum(1).numpy())[0, 1]
    assert corr > 0.9


def test_kfac_unsupported_module_is_named():
    class WithNorm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.LayerNorm(4)
            self.head = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.norm(x))

    model = WithNorm().double().eval()
    X, y = np.random.default_rng(0).normal(size=(6, 4)), np.array([0, 1] * 3)
    with pytest.raises(InputError, match=r"module 'norm' \(LayerNorm\)"):
        make_solver(KFACSettings()).fit(_loss(model, X, y, 0.1))
    make_solver(KFACSettings()).fit(_loss(model, X, y, 0.1, subset="head"))  # the Linear head alone is fine


def test_singular_damping_is_refused(convex):
    model, X, y, _ = convex
    loss = _loss(model, X, y, 0.0)  # softmax over all classes: H has a null direction without L2
    with pytest.raises(InputError, match="singular"):
        make_solver(ExactSettings(damping=0.0)).fit(loss)
    make_solver(ExactSettings(damping="auto")).fit(loss)  # auto damping makes it solvable


def test_negative_curvature_is_reported(mlp):
    model, X, y = mlp
    torch.manual_seed(5)
    from tda_clean.models.factory import MLP

    untrained = MLP(4, 3, (5,)).double().eval()
    with pytest.warns(NegativeCurvatureWarning):
        solver = make_solver(ExactSettings(damping=10.0)).fit(_loss(untrained, X, y, 0.0))
    assert solver.negative_curvature_ and solver.min_eigenvalue_ < 0


def test_cg_refuses_indefinite_system():
    from tda_clean.models.factory import MLP

    torch.manual_seed(5)
    untrained = MLP(4, 3, (5,)).double().eval()
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 4)), rng.integers(0, 3, 30)
    loss = _loss(untrained, X, y, 0.0)
    lam_min = float(torch.linalg.eigvalsh(loss.hessian())[0])
    assert lam_min < 0
    V = torch.linalg.eigh(loss.hessian())[1][:, :1].T  # the negative-curvature direction
    with pytest.raises(InputError, match="not positive definite"), pytest.warns(NegativeCurvatureWarning):
        make_solver(CGSettings(damping=0.0)).fit(loss).solve(V)


def test_exact_refuses_too_many_parameters(mlp):
    model, X, y = mlp
    with pytest.raises(InputError, match="exceed max_params=10"):
        make_solver(ExactSettings(max_params=10)).fit(_loss(model, X, y, 0.1))


def test_bad_settings_are_named():
    with pytest.raises(ValidationError, match="damping"):
        CGSettings(damping=-1.0)
    with pytest.raises(ValidationError, match="depth"):
        LissaSettings(depth=0)
