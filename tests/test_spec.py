"""The influence spec and the training objective, each defined once:

* a solver setting given anywhere (config, spec object, unlearning, review) reaches the fitted solver;
* the trainer, the curvature (HVP / Hessian), K-FAC and unlearning all use the one ``TrainingObjective``.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from tda_clean.actions.unlearn import _objective_grad, unlearn
from tda_clean.config import LogisticConfig, MLPConfig, TrainConfig, parse_config, unlearn_spec
from tda_clean.config.influence import Budget, CGSettings, GradientSettings, InfluenceSpec, KFACSettings
from tda_clean.influence import InfluenceEngine, ParamSpace, TrainingLoss, make_solver, per_sample_grads
from tda_clean.models.factory import build_model
from tda_clean.models.trainer import fit, training_loss, training_objective
from tda_clean.objective import TrainingObjective
from tda_clean.selection import FitContext, make_detector
from tda_clean.selection.base import cap_flagged
from tests.unit_helpers import blobs, torch_single_thread

_single_thread = pytest.fixture(scope="module", autouse=True)(torch_single_thread)
TRAIN = TrainConfig(optimizer="lbfgs", l2=1e-2, epochs=30, device="cpu", dtype="float64")
INFLUENCE_KINDS = ("self_influence", "harmful", "influence_relabel", "label_noise", "group_first_order",
                   "group_second_order", "d3m", "influence_threshold", "delta_influence")


@pytest.fixture(scope="module")
def problem():
    X, y, _, _ = blobs(120, seed=3, n_flip=6)
    Xv, yv, _, _ = blobs(60, seed=4, n_flip=0)
    model = build_model(LogisticConfig(), (2,), 2, 0)
    fit(model, X, y, TRAIN, 0, progress=False)
    groups_val = pd.DataFrame({"g": np.where(Xv[:, 0] > 0, "right", "left")})
    ctx = FitContext(seed=0, make_model=lambda s: build_model(LogisticConfig(), (2,), 2, s), train_config=TRAIN,
                     model=model, X_val=Xv, y_val=yv, groups_val=groups_val, n_classes=2)
    return X, y, ctx


# ------------------------------------------------------------------------------- a setting reaches the solver
@pytest.mark.parametrize("kind", INFLUENCE_KINDS)
def test_config_damping_reaches_the_solver(kind, problem, monkeypatch):
    """``detector: {solver: cg, damping: 0.5}`` -> detector -> engine -> the fitted CG solver uses 0.5."""
    X, y, ctx = problem
    fitted = []
    original = InfluenceEngine.solver.fget
    monkeypatch.setattr(InfluenceEngine, "solver", property(lambda self: fitted.append(original(self)) or fitted[-1]))
    extra = {"iters": 3, "rounds": 1} if kind == "group_second_order" else {}
    if kind in ("group_first_order", "group_second_order", "d3m"):
        extra["min_gap_confidence"] = None  # no gap check: the 60 validation rows' groups barely differ
    cfg = parse_config({"data": {"kind": "digits"},
                        "detector": {"kind": kind, "solver": "cg", "damping": 0.5, "max_flagged": 5, **extra}})
    assert cfg.detector.influence.solver == CGSettings(damping=0.5)
    make_detector(cfg.detector).fit(X, y, ctx)
    assert fitted and all(s.name == "cg" and s.damping_ == 0.5 for s in fitted), kind


def test_spec_object_damping_reaches_the_solver(problem):
    X, y, ctx = problem
    engine = InfluenceEngine(ctx.model, (X, y), InfluenceSpec(solver=CGSettings(damping=0.5, max_iter=7)),
                             TrainingObjective(TRAIN.l2))
    assert engine.solver.damping_ == 0.5 and engine.solver.settings.max_iter == 7
    assert InfluenceSpec(solver="cg").solver == CGSettings()  # a bare name: that solver's defaults
    with pytest.raises(TypeError):  # damping has one home, the solver settings: no second keyword to lose it in
        InfluenceEngine(ctx.model, (X, y), InfluenceSpec(solver=CGSettings()), TrainingObjective(0.0), damping=0.5)
    with pytest.raises(ValidationError, match="kind"):
        InfluenceSpec(solver="newton")


def test_unlearn_damping_reaches_the_solver(problem):
    X, y, ctx = problem
    forget = np.zeros(len(y), dtype=bool)
    forget[:4] = True
    cfg = unlearn_spec(method="newton", solver="cg", damping=0.5, params="all", steps=1)
    _, info = unlearn(cfg, ctx.model, X, y, forget, TRAIN, 0)
    assert info["damping"] == 0.5


def test_review_damping_reaches_the_solver(problem):
    from tda_clean import review

    X, y, ctx = problem
    bundle = SimpleNamespace(train=SimpleNamespace(X=X, y=y),
                             val=SimpleNamespace(X=ctx.X_val, y=ctx.y_val, row_id=np.arange(len(ctx.y_val)) + 1000))
    spec = parse_config({"data": {"kind": "digits"},
                         "detector": {"kind": "harmful", "solver": "cg", "damping": 0.5}}).detector.influence
    engine = review.review_engine(ctx.model, bundle, spec, TRAIN)
    rows = review._influenced_val_rows(engine, bundle, np.array([0, 5]), 2)
    assert len(rows) == 2 and (engine.solver.name, engine.solver.damping_) == ("cg", 0.5)


def test_one_budget_rule():
    assert Budget().rows(101) == 6 and Budget().cap(101) is None                    # 5% default, rounded up
    assert Budget(max_flagged=4, fraction=0.1).rows(101) == 4 == Budget(max_flagged=4).cap(101)
    assert Budget(max_flagged=40, fraction=0.1).rows(101) == 11 and Budget(max_flagged=500).rows(20) == 20
    flagged, scores = np.array([True, False, True, True, True]), np.array([0.5, 9.0, 0.7, 0.5, 0.1])
    np.testing.assert_array_equal(cap_flagged(flagged, scores, 2), [True, False, True, False, False])  # ties: first
    assert cap_flagged(flagged, scores, None) is flagged and cap_flagged(flagged, scores, 4) is flagged


# ------------------------------------------------------------------------------------ one training objective
@pytest.fixture(scope="module")
def trained():
    """An MLP (2 -> 4 -> 2) trained by the trainer in float64 (non-convex, all layers Linear)."""
    X, y, _, _ = blobs(60, seed=5, n_flip=4)
    model = build_model(MLPConfig(hidden=(4,)), (2,), 2, 0)
    fit(model, X, y, TRAIN.model_copy(update={"epochs": 5}), 0, progress=False)
    return model.double().eval(), X, y


def _value(objective, space, X, y):
    return lambda th: objective.value(space.forward(th, X), y, th)


def test_trainer_loss_is_the_objective(trained):
    model, X, y = trained
    Xt, yt = torch.as_tensor(X, dtype=torch.float64), torch.as_tensor(y)
    w = torch.linspace(0.5, 2.0, len(y), dtype=torch.float64)
    objective = training_objective(TRAIN)
    params = list(model.parameters())
    for weight in (None, w):
        expected = objective.value(model(Xt), yt, params, weight).detach()
        assert float(training_loss(model, Xt, yt, TRAIN.l2, weight).detach()) == pytest.approx(float(expected), rel=1e-14)
    by_hand = torch.nn.functional.cross_entropy(model(Xt), yt) + 0.5 * TRAIN.l2 * sum((p * p).sum() for p in params)
    assert float(objective.value(model(Xt), yt, params).detach()) == pytest.approx(float(by_hand.detach()), rel=1e-14)


@pytest.mark.parametrize("loss", ["cross_entropy", "user"])
def test_curvature_is_the_objective_hessian(trained, loss):
    """HVPs / the Hessian of the curvature equal autograd's Hessian of ``TrainingObjective.value``, also for a
    user-supplied per-sample loss (here: a squared error on the softmax)."""
    model, X, y = trained
    def squared(logits, labels):
        return ((logits.softmax(1) - torch.nn.functional.one_hot(labels, logits.shape[1])) ** 2).sum(1)

    objective = TrainingObjective(l2=TRAIN.l2) if loss == "cross_entropy" else TrainingObjective(0.03, squared)
    space = ParamSpace(model)
    curvature = TrainingLoss(space, X, y, objective, batch_size=7)
    Xt, yt = curvature.X, curvature.y
    H = torch.autograd.functional.hessian(_value(objective, space, Xt, yt), curvature.theta)
    torch.testing.assert_close(curvature.hessian(), H, rtol=1e-10, atol=1e-12)
    V = torch.randn(3, space.p, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(curvature.hvp(V), V @ H, rtol=1e-10, atol=1e-12)
    assert float(curvature.value()) == pytest.approx(float(_value(objective, space, Xt, yt)(curvature.theta)), rel=1e-12)


def test_unlearning_gradient_is_the_objective_gradient(trained):
    model, X, y = trained
    objective = training_objective(TRAIN)
    space = ParamSpace(model)
    curvature = TrainingLoss(space, X[:20], y[:20], objective, batch_size=6)
    theta = curvature.theta.detach().clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(_value(objective, space, curvature.X, curvature.y)(theta), theta)
    torch.testing.assert_close(_objective_grad(curvature), expected, rtol=1e-12, atol=1e-14)


def test_kfac_is_fitted_on_the_objective(trained):
    """EK-FAC with the empirical Fisher: its eigenvalues are the mean squared per-row gradients of the
    objective's per-sample loss in the Kronecker eigenbasis, and K-FAC's curvature adds the objective's l2."""
    model, X, y = trained
    objective = training_objective(TRAIN)
    space = ParamSpace(model, "head")
    curvature = TrainingLoss(space, X, y, objective)
    solver = make_solver(KFACSettings(kind="ekfac", fisher="empirical", damping=0.1)).fit(curvature)
    G = per_sample_grads(space, X, y, loss=objective.row)               # (n, out * in + out): weight, then bias
    out, inp = model.head.weight.shape
    M = torch.cat([G[:, : out * inp].reshape(-1, out, inp), G[:, out * inp:, None]], dim=2)   # (n, out, in + 1)
    QS, QA = solver.QS_["head"], solver.QA_["head"]
    torch.testing.assert_close(solver.eigenvalues_["head"], ((QS.T @ M @ QA) ** 2).mean(0), rtol=1e-10, atol=1e-14)
    V = torch.randn(2, space.p, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    unregularised = make_solver(solver.settings).fit(TrainingLoss(space, X, y, TrainingObjective(0.0)))
    torch.testing.assert_close(solver.hvp(V), unregularised.hvp(V) + TRAIN.l2 * V)


def test_engine_uses_the_given_objective(trained):
    """Per-row training gradients of the engine are those of the objective's per-sample loss."""
    model, X, y = trained
    def doubled(logits, labels):
        return 2 * torch.nn.functional.cross_entropy(logits, labels, reduction="none")

    spec = InfluenceSpec(solver="exact", gradients=GradientSettings(params="head"))
    plain = InfluenceEngine(model, (X, y), spec, TrainingObjective(0.01))
    twice = InfluenceEngine(model, (X, y), spec, TrainingObjective(0.01, doubled))
    G1 = torch.cat([G for _, G in plain.train_gradients()])
    G2 = torch.cat([G for _, G in twice.train_gradients()])
    torch.testing.assert_close(G2, 2 * G1)
