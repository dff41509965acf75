import numpy as np
import pytest
import torch

from tda_clean.errors import InputError
from tda_clean.influence import (
    CallableObjective, CheckpointRecorder, DemographicParityGap, EqualizedOddsGap, GradientSettings,
    GradientStore, GroupLossDifference, InfluenceEngine, Margin, MeanLoss, ParamSpace, PerSampleLoss,
    InfluenceSpec, RandomProjector, TrainingObjective, WorstGroupLoss, compute_influence, gradient_similarity, pairwise_influence,
    per_sample_grads, projected_influence, self_influence, tracin_cp,
)
from tests.influence.helpers import EXACT0


def test_self_influence_is_diagonal_of_pairwise(convex):
    model, X, y, l2 = convex
    pair = pairwise_influence(model, (X, y), EXACT0, TrainingObjective(l2))
    assert pair.shape == (len(X), len(X))
    np.testing.assert_allclose(self_influence(model, (X, y), EXACT0, TrainingObjective(l2)), np.diag(pair), rtol=1e-9)
    assert (np.diag(pair) > 0).all()  # removing a row raises its own loss (positive = removal increases f)


@pytest.mark.filterwarnings("ignore::tda_clean.influence.NegativeCurvatureWarning")
def test_influence_invariant_to_chunking(mlp):
    model, X, y = mlp
    obj = MeanLoss(X[:10], y[:10])
    a = compute_influence(model, (X, y), obj,
                          InfluenceSpec(solver={"kind": "exact", "damping": 0.1},
                                        gradients=GradientSettings(batch_size=7, memory_mb=1e-3)),
                          TrainingObjective(0.05))
    b = compute_influence(model, (X, y), obj,
                          InfluenceSpec(solver={"kind": "exact", "damping": 0.1},
                                        gradients=GradientSettings(batch_size=4096)),
                          TrainingObjective(0.05))
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-9, atol=1e-15)


def test_removal_sign_matches_retraining_direction(convex):
    """Exact influence predicts the change of the mean loss when a row is removed (tiny convex problem)."""
    from tests.influence.helpers import fit_convex
    import copy

    model, X, y, l2 = convex
    obj = MeanLoss(X, y)
    pred = compute_influence(model, (X, y), obj, EXACT0, TrainingObjective(l2)).per_row
    base = obj.values(model)[0]
    actual = []
    for i in range(5):
        keep = np.arange(len(X)) != i
        actual.append(obj.values(fit_convex(copy.deepcopy(model), X[keep], y[keep], l2))[0] - base)
    assert np.corrcoef(pred[:5], actual)[0, 1] > 0.95


def test_float64_option_on_float32_model(convex):
    model, X, y, l2 = convex
    m32 = __import__("copy").deepcopy(model).float()
    res = compute_influence(m32, (X, y), MeanLoss(X, y),
                            InfluenceSpec(solver={"kind": "exact", "damping": 0.0},
                                          gradients=GradientSettings(dtype="float64")),
                            TrainingObjective(l2))
    ref = compute_influence(model, (X, y), MeanLoss(X, y), EXACT0, TrainingObjective(l2))
    np.testing.assert_allclose(res.scores, ref.scores, rtol=1e-4, atol=1e-8)
    assert next(m32.parameters()).dtype == torch.float32  # caller's model untouched


@pytest.mark.parametrize("make", [
    lambda X, y, g: MeanLoss(X, y),
    lambda X, y, g: WorstGroupLoss(X, y, g),
    lambda X, y, g: GroupLossDifference(X, y, g, "a", "b"),
    lambda X, y, g: DemographicParityGap(X, g, positive=1),
    lambda X, y, g: EqualizedOddsGap(X, y, g, positive=1),
    lambda X, y, g: Margin(X[:3], 2, reduce="mean"),
    lambda X, y, g: CallableObjective(lambda m: torch.softmax(m(torch.as_tensor(X)), 1)[:, 0].mean(), "p0"),
], ids=["mean", "worst", "diff", "dp", "eo", "margin", "callable"])
def test_objective_gradient_matches_finite_difference(convex, make):
    model, X, y, _ = convex
    groups = np.where(np.arange(len(X)) % 3 == 0, "a", "b")
    obj = make(X, y, groups)
    space = ParamSpace(model)
    q = obj.query_gradients(space)[0]
    theta = space.flat()
    direction = torch.randn(space.p, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    eps = 1e-6

    def value_at(t):
        with torch.no_grad():
            for p, v in zip(space.tensors(), space.unflatten(t).values()):
                p.copy_(v)
        return obj.values(model).sum()

    try:
        fd = (value_at(theta + eps * direction) - value_at(theta - eps * direction)) / (2 * eps)
    finally:
        value_at(theta)
    assert abs(fd - float(q @ direction)) < 1e-5 * max(1.0, abs(fd))


def test_per_sample_objectives_have_one_row_per_query(convex):
    model, X, y, l2 = convex
    res = compute_influence(model, (X, y), Margin(X[:5], y[:5]), EXACT0, TrainingObjective(l2))
    assert res.scores.shape == (5, len(X))
    per = compute_influence(model, (X, y), PerSampleLoss(X[:5], y[:5]), EXACT0, TrainingObjective(l2)).scores
    mean = compute_influence(model, (X, y), MeanLoss(X[:5], y[:5]), EXACT0, TrainingObjective(l2)).scores
    np.testing.assert_allclose(per.mean(0), mean[0], rtol=1e-10, atol=1e-15)


def test_objective_independent_of_parameters_is_refused(convex):
    model, X, y, l2 = convex
    constant = CallableObjective(lambda m: torch.tensor(1.0, dtype=torch.float64), "constant")
    with pytest.raises(InputError, match="does not depend on the model parameters"):
        compute_influence(model, (X, y), constant, InfluenceSpec(), TrainingObjective(l2))
    detached = CallableObjective(lambda m: m(torch.as_tensor(X)).detach().sum(), "detached")
    with pytest.raises(InputError, match="does not depend"):
        compute_influence(model, (X, y), detached, InfluenceSpec(), TrainingObjective(l2))


def test_gradient_store_reuse_and_mismatch(tmp_path, convex):
    model, X, y, l2 = convex
    obj = MeanLoss(X, y)
    ref = compute_influence(model, (X, y), obj, EXACT0, TrainingObjective(l2)).scores
    settings = GradientSettings(memory_mb=0.002)  # several chunks
    first = compute_influence(model, (X, y), obj,
                              InfluenceSpec(solver={"kind": "exact", "damping": 0.0}, gradients=settings),
                              TrainingObjective(l2), store_dir=tmp_path / "g")
    again = compute_influence(model, (X, y), obj,
                              InfluenceSpec(solver={"kind": "exact", "damping": 0.0}, gradients=settings),
                              TrainingObjective(l2), store_dir=tmp_path / "g")
    np.testing.assert_allclose(first.scores, ref, rtol=1e-12)
    np.testing.assert_allclose(again.scores, ref, rtol=1e-12)
    store = GradientStore.open(tmp_path / "g", fingerprint=InfluenceEngine(model, (X, y),
                                                                           InfluenceSpec(),
                                                                           TrainingObjective(l2)).fingerprint(),
                               n=len(X), p=ParamSpace(model).p, dtype="float64", chunk_rows=store_chunk(tmp_path))
    assert store.complete and store.n_chunks > 1
    y2 = y.copy()
    y2[0] = (y2[0] + 1) % 3
    with pytest.raises(InputError, match="built for fingerprint"):
        compute_influence(model, (X, y2), obj,
                          InfluenceSpec(solver={"kind": "exact", "damping": 0.0}, gradients=settings),
                          TrainingObjective(l2), store_dir=tmp_path / "g")


def store_chunk(tmp_path):
    import json

    return json.loads((tmp_path / "g" / "meta.json").read_text())["chunk_rows"]


def test_projection_is_seeded_and_block_invariant():
    G = torch.randn(6, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a = RandomProjector(50, 8, "rademacher", seed=1, block=7)
    torch.testing.assert_close(a.project(G), a.project(G))
    torch.testing.assert_close(torch.cat([a.project(G[:2]), a.project(G[2:])]), a.project(G))
    torch.testing.assert_close(a.project(G), G @ a.matrix() / 8 ** 0.5)
    assert not torch.allclose(a.project(G), RandomProjector(50, 8, "rademacher", seed=2, block=7).project(G))
    big = RandomProjector(50, 4000, "gaussian", seed=0)
    P = big.project(G)
    torch.testing.assert_close(P @ P.T, G @ G.T, rtol=0.2, atol=0.2 * float((G * G).sum(1).mean()))
    with pytest.raises(InputError, match="projection.kind"):
        RandomProjector(5, 2, "sparse")


def test_projected_influence_approaches_fisher_influence(tmp_path, convex):
    model, X, y, l2 = convex
    obj = MeanLoss(X, y)
    res = projected_influence(model, (X, y), obj, l2=l2, k=400, seed=0, store_dir=tmp_path / "p")
    exact = compute_influence(model, (X, y), obj, EXACT0, TrainingObjective(l2)).per_row
    assert np.corrcoef(res.per_row, exact)[0, 1] > 0.9
    again = projected_influence(model, (X, y), obj, l2=l2, k=400, seed=0, store_dir=tmp_path / "p")
    np.testing.assert_allclose(again.scores, res.scores)


def test_tracin_and_similarity(convex):
    from tda_clean.config import TrainConfig
    from tda_clean.models.factory import LogisticRegression
    from tda_clean.models.trainer import fit

    _, X, y, _ = convex
    cfg = TrainConfig(optimizer="adam", epochs=3, lr=0.05, batch_size=16, dtype="float64", device="cpu", l2=0.01)
    torch.manual_seed(0)
    model = LogisticRegression(4, 3)
    rec = CheckpointRecorder(every=1)
    fit(model, X, y, cfg, seed=0, on_epoch=rec, progress=False)
    assert len(rec.checkpoints) == 3
    obj = MeanLoss(X[:6], y[:6])
    res = tracin_cp(model, rec.checkpoints, (X, y), obj, lr=cfg.lr)
    manual = sum(cfg.lr * gradient_similarity(_load(model, sd), (X, y), obj).scores for _, sd in rec.checkpoints)
    np.testing.assert_allclose(res.scores, manual, rtol=1e-10)
    cos = gradient_similarity(model, (X, y), obj, kind="cosine").scores
    assert np.abs(cos).max() <= 1 + 1e-12
    with pytest.raises(InputError, match="no checkpoints"):
        tracin_cp(model, [], (X, y), obj, lr=0.1)


def _load(model, state):
    import copy

    m = copy.deepcopy(model)
    m.load_state_dict(state)
    return m.eval()


@pytest.mark.parametrize("objective", ["margin", "mean_loss"])
@pytest.mark.parametrize("kind", ["dot", "cosine"])
@pytest.mark.parametrize("subset", ["all", "head", ("body.0",)])
def test_similarity_from_gradient_parts_matches_materialised_gradients(mlp, objective, kind, subset):
    """The MLP takes the rank-one Linear-factor path; the reference multiplies materialised per-sample gradients."""
    from tda_clean.influence import ParamSpace, per_sample_grads
    from tda_clean.influence.objectives import Margin

    model, X, y = mlp
    obj = Margin(X[:5], y[:5]) if objective == "margin" else MeanLoss(X[:5], y[:5])
    space = ParamSpace(model, subset)
    Q, G = obj.query_gradients(space), per_sample_grads(space, X, y)
    if kind == "cosine":
        Q, G = Q / Q.norm(dim=1, keepdim=True), G / G.norm(dim=1, keepdim=True)
    got = gradient_similarity(model, (X, y), obj, kind=kind, gradients=GradientSettings(params=subset)).scores
    np.testing.assert_allclose(got, (Q @ G.T).numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["dot", "cosine"])
def test_similarity_with_conv_layers_matches_materialised_gradients(cnn, kind):
    """Conv parameters are materialised, the dense and head Linear layers factored; same numbers as G Q^T."""
    from tda_clean.influence import ParamSpace, per_sample_grads
    from tda_clean.influence.objectives import Margin

    model, X, y = cnn
    obj = Margin(X[:4], y[:4])
    space = ParamSpace(model, "all")
    Q, G = obj.query_gradients(space), per_sample_grads(space, X, y)
    if kind == "cosine":
        Q, G = Q / Q.norm(dim=1, keepdim=True), G / G.norm(dim=1, keepdim=True)
    got = gradient_similarity(model, (X, y), obj, kind=kind, gradients=GradientSettings(params="all")).scores
    np.testing.assert_allclose(got, (Q @ G.T).numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["kfac", "ekfac"])
@pytest.mark.parametrize("fixture, params", [("mlp", "all"), ("cnn", "all"), ("cnn", "head")])
@pytest.mark.parametrize("reduce", ["none", "mean"])
def test_kfac_eigenbasis_scores_match_materialised_path(request, kind, fixture, params, reduce):
    """Scores computed in the Kronecker eigenbasis from layer factors equal W = A^-1 Q against materialised G."""
    from tda_clean.influence import Margin
    from tda_clean.config.influence import KFACSettings

    model, X, y = request.getfixturevalue(fixture)
    engine = InfluenceEngine(model, (X, y),
                             InfluenceSpec(solver=KFACSettings(kind=kind, damping=0.1),
                                           gradients=GradientSettings(params=params)),
                             TrainingObjective(0.05))
    objective = Margin(X[:5], (np.asarray(y[:5]) + 1) % 3, reduce=reduce)
    fast = engine._eigenbasis_scores(objective, Margin.row_value)
    assert fast is not None and fast.shape == ((1 if reduce == "mean" else 5), len(y))
    W = engine.inverse_hvp(objective)
    G = per_sample_grads(engine.space, X, y, loss=Margin.row_value)
    np.testing.assert_allclose(fast, (W @ G.T).numpy() / len(y), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(engine.scores_for(W, train_loss=Margin.row_value), fast, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(engine.influence(objective).scores, engine.scores_for(W), rtol=1e-9, atol=1e-12)


def test_kfac_eigenbasis_scores_fall_back_in_train_mode(mlp):
    """Train mode couples rows (dropout, batch norm): the hooks refuse and the materialised path answers."""
    from tda_clean.influence import Margin

    model, X, y = mlp
    engine = InfluenceEngine(model, (X, y), InfluenceSpec(solver="ekfac"), TrainingObjective(0.05))
    engine.model.train()
    try:
        assert engine._eigenbasis_scores(Margin(X[:3], 0), Margin.row_value) is None
    finally:
        engine.model.eval()


def _twice_ce(logits, y):
    return 2 * torch.nn.functional.cross_entropy(logits, y, reduction="none")


@pytest.mark.parametrize("fixture", ["mlp", "cnn"])
def test_tracin_similarity_and_projected_use_the_training_loss(request, fixture):
    """Training gradients come from the training objective's row loss: 2x cross-entropy doubles TracIn and dot
    scores (cosines unchanged) and halves projected scores (F grows 4x, g 2x; l2 = damping = 0), store or not."""
    import tempfile

    model, X, y = request.getfixturevalue(fixture)
    obj, twice = MeanLoss(X[:5], y[:5]), TrainingObjective(loss=_twice_ce)
    ce = tracin_cp(model, [model.state_dict()], (X, y), obj, lr=0.5).scores
    got = tracin_cp(model, [model.state_dict()], (X, y), obj, lr=0.5, training=twice).scores
    np.testing.assert_allclose(got, 2 * ce, rtol=1e-9, atol=1e-14)
    for kind, factor in (("dot", 2), ("cosine", 1)):
        ce = gradient_similarity(model, (X, y), obj, kind=kind).scores
        got = gradient_similarity(model, (X, y), obj, kind=kind, training=twice).scores
        np.testing.assert_allclose(got, factor * ce, rtol=1e-9, atol=1e-14)
    ce = projected_influence(model, (X, y), obj, l2=0.0, k=8, seed=0).scores
    with tempfile.TemporaryDirectory() as store:
        for where in (None, store):
            got = projected_influence(model, (X, y), obj, l2=0.0, k=8, seed=0, training=twice, store_dir=where).scores
            np.testing.assert_allclose(got, 0.5 * ce, rtol=1e-6, atol=1e-12)


def test_kfac_uses_the_empirical_fisher_for_a_loss_other_than_cross_entropy(mlp):
    """Sampled labels are the Fisher of cross-entropy only: another loss gets the given labels (fisher_ says so)."""
    from tda_clean.config.influence import KFACSettings

    model, X, y = mlp
    engines = {name: InfluenceEngine(model, (X, y), InfluenceSpec(solver=KFACSettings(kind="kfac", fisher=fisher)),
                                     TrainingObjective(0.05, **loss))
               for name, fisher, loss in [("sampled", "sampled", {}), ("empirical", "empirical", {}),
                                          ("twice", "sampled", {"loss": _twice_ce})]}
    assert {k: e.solver.fisher_ for k, e in engines.items()} == {"sampled": "sampled", "empirical": "empirical",
                                                                 "twice": "empirical"}
    for name, ev in engines["twice"].solver.eigenvalues_.items():  # S of 2x CE with the given labels = 4 S
        torch.testing.assert_close(ev, 4 * engines["empirical"].solver.eigenvalues_[name], rtol=1e-9, atol=1e-12)
    assert engines["twice"].influence(MeanLoss(X[:3], y[:3])).info["fisher"] == "empirical"
