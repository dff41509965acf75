"""Streamed attribution: training rows from a memory-mapped .npy file or a DataLoader, scores reduced on the fly,
against the in-memory dense reference (float64, tolerance 1e-9)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tda_clean.config.influence import CGSettings, ExactSettings, GradientSettings, InfluenceSpec, KFACSettings
from tda_clean.errors import InputError
from tda_clean.influence import InfluenceEngine, Margin, MeanLoss, PerSampleLoss, TrainingObjective
from tda_clean.influence.reducers import DiskScores, RowMean, RowSum, TopK, dense_top_k
from tda_clean.influence.rows import ArrayRows, BatchRows, as_rows

TOL = dict(rtol=1e-9, atol=1e-12)
SPECS = {
    "exact": InfluenceSpec(solver=ExactSettings(damping=0.01), gradients=GradientSettings(batch_size=8, memory_mb=0.01)),
    "cg": InfluenceSpec(solver=CGSettings(damping=0.5), gradients=GradientSettings(batch_size=8, memory_mb=0.01)),
    "ekfac": InfluenceSpec(solver=KFACSettings(kind="ekfac", damping=0.01),
                           gradients=GradientSettings(batch_size=8, memory_mb=0.01)),
    "kfac": InfluenceSpec(solver=KFACSettings(kind="kfac", damping=0.01),
                          gradients=GradientSettings(batch_size=8, memory_mb=0.01)),
}


def _sources(X: np.ndarray, y: np.ndarray, tmp_path) -> dict:
    """The same training rows in memory, as a read-only memmap, and as a DataLoader with another batch size."""
    np.save(tmp_path / "X.npy", X)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.as_tensor(X), torch.as_tensor(y)),
                                         batch_size=5, shuffle=False)
    return {"memmap": (np.load(tmp_path / "X.npy", mmap_mode="r"), y), "loader": loader}


@pytest.mark.parametrize("fixture, kind", [("mlp", "exact"), ("mlp", "cg"), ("mlp", "ekfac"), ("mlp", "kfac"),
                                           ("cnn", "cg"), ("cnn", "ekfac"), ("cnn", "kfac")])
def test_streamed_scores_equal_in_memory(request, tmp_path, kind, fixture):
    """Memmap and DataLoader (batches of 5, re-cut to the engine's 8) give the in-memory engine's numbers."""
    model, X, y = request.getfixturevalue(fixture)
    l2 = TrainingObjective(0.05)
    ref = InfluenceEngine(model, (X, y), SPECS[kind], l2)
    query = PerSampleLoss(X[:6], y[:6])
    dense = ref.scores(query)
    self_inf = ref.self_influence()
    W = ref.inverse_hvp(MeanLoss(X[:6], y[:6]))
    harmful = ref.scores_for(W)
    for name, train in _sources(X, y, tmp_path).items():
        eng = InfluenceEngine(model, train, SPECS[kind], l2)
        np.testing.assert_allclose(eng.scores(query), dense, **TOL, err_msg=name)
        np.testing.assert_allclose(eng.self_influence(), self_inf, **TOL, err_msg=name)
        np.testing.assert_allclose(eng.self_influence(rows=slice(3, 17)), self_inf[3:17], **TOL, err_msg=name)
        np.testing.assert_allclose(eng.scores_for(W, reducer=RowSum()), harmful.sum(0), **TOL, err_msg=name)
        np.testing.assert_allclose(eng.scores_for(W, rows=slice(4, 9)), harmful[:, 4:9], **TOL, err_msg=name)
        values, index = eng.scores(query, reducer=TopK(5))
        ref_values, ref_index = dense_top_k(dense, 5)
        np.testing.assert_array_equal(index, ref_index, err_msg=name)
        np.testing.assert_allclose(values, ref_values, **TOL, err_msg=name)
        np.testing.assert_array_equal(eng.y, y)


def test_reducers_reproduce_the_dense_matrix_exactly(mlp, tmp_path):
    """In memory, each reducer gives the dense result's numbers to the last bit (same operations per column)."""
    model, X, y = mlp
    eng = InfluenceEngine(model, (X, y), SPECS["ekfac"], TrainingObjective(0.05))
    query = Margin(X[:7], (y[:7] + 1) % 3)
    dense = eng.scores(query)
    assert dense.shape == (7, len(y))
    np.testing.assert_array_equal(eng.scores(query, reducer=RowSum()), dense.sum(axis=0))
    np.testing.assert_array_equal(eng.scores(query, reducer=RowMean()), dense.mean(axis=0))
    for largest in (True, False):
        got = eng.scores(query, reducer=TopK(4, largest=largest))
        want = dense_top_k(dense, 4, largest=largest)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    assert np.all(np.diff(got[0], axis=1) >= 0)  # smallest first when largest=False
    on_disk = eng.scores(query, reducer=DiskScores(tmp_path / "scores.npy"))
    assert isinstance(on_disk, np.memmap)
    np.testing.assert_array_equal(np.asarray(on_disk), dense)
    with pytest.raises(InputError, match="already exists"):
        eng.scores(query, reducer=DiskScores(tmp_path / "scores.npy"))
    with pytest.raises(InputError, match="positive integer"):
        TopK(0)


def test_top_k_breaks_ties_by_row_index():
    S = np.array([[1.0, 3.0, 3.0, 0.0, 3.0, 2.0]])
    top = TopK(2)
    top.start(1, range(6))
    top.add(slice(0, 3), S[:, :3])
    top.add(slice(3, 6), S[:, 3:])
    np.testing.assert_array_equal(top.result()[1], [[1, 2]])
    np.testing.assert_array_equal(dense_top_k(S, 2)[1], [[1, 2]])


def test_batch_rows_recut_blocks_and_refuse_a_short_stream():
    X, y = np.arange(26.0).reshape(13, 2), np.arange(13) % 3
    batches = [(X[a:a + 4], y[a:a + 4]) for a in range(0, 13, 4)]
    got = [(rows, Xb.numpy(), yb.numpy()) for rows, Xb, yb in BatchRows(batches).batches(5, slice(2, 12),
                                                                                            dtype=torch.float64)]
    assert [r for r, _, _ in got] == [slice(2, 7), slice(7, 12)]
    np.testing.assert_array_equal(np.concatenate([b for _, b, _ in got]), X[2:12])
    np.testing.assert_array_equal(np.concatenate([c for _, _, c in got]), y[2:12])
    with pytest.raises(InputError, match="announced"):
        list(BatchRows(batches, n=20).batches(5))
    with pytest.raises(InputError, match="random row access"):
        BatchRows(batches).take(np.array([1]))
    with pytest.raises(InputError, match="train"):
        as_rows(42)
    with pytest.raises(InputError, match="13 rows but y has 2"):
        ArrayRows(X, y[:2])


def test_memmap_batches_leave_the_file_untouched_and_are_copies(tmp_path):
    X = np.arange(40.0, dtype=np.float32).reshape(20, 2)
    np.save(tmp_path / "X.npy", X)
    mm = np.load(tmp_path / "X.npy", mmap_mode="r")
    blocks = [Xb for _, Xb, _ in ArrayRows(mm, np.zeros(20)).batches(6)]
    blocks[0] += 1000  # a copy: the mapping (and the file) keep their values
    np.testing.assert_array_equal(np.load(tmp_path / "X.npy"), X)
    np.testing.assert_array_equal(torch.cat(blocks[1:]).numpy(), X[6:])


def test_harmful_and_self_influence_detectors_on_a_memmap_equal_in_memory(mlp, tmp_path):
    from tda_clean.config import HarmfulDetector, SelfInfluenceDetector, TrainConfig
    from tda_clean.selection import FitContext
    from tda_clean.selection.influence_detectors import HarmfulSelector, SelfInfluenceSelector

    model, X, y = mlp
    np.save(tmp_path / "X.npy", X)
    mm = np.load(tmp_path / "X.npy", mmap_mode="r")
    context = FitContext(seed=0, model=model, train_config=TrainConfig(l2=0.05), X_val=X[:10], y_val=y[:10],
                         shard_rows=15)
    fields = dict(solver="ekfac", params="all", damping=0.01, dtype="float64", fraction=0.2)
    for selector in (HarmfulSelector(HarmfulDetector(**fields)), SelfInfluenceSelector(SelfInfluenceDetector(**fields))):
        a = type(selector)(selector.spec).fit(X, y, context)
        b = type(selector)(selector.spec).fit(mm, y, context)
        np.testing.assert_allclose(b.scores_, a.scores_, **TOL)
        np.testing.assert_array_equal(b.support_, a.support_)
        if hasattr(a, "suggested_labels_"):
            np.testing.assert_array_equal(b.suggested_labels_, a.suggested_labels_)


@pytest.mark.parametrize("kind", ["kfac", "ekfac"])
@pytest.mark.parametrize("fixture, params", [("mlp", "all"), ("cnn", "all"), ("cnn", "head")])
def test_kfac_self_influence_in_the_eigenbasis_equals_the_materialised_formula(request, kind, fixture, params):
    """g~ . s (g~ + reg~) / (n - 1) in the Kronecker eigenbasis == g^T A^-1 (g + l2 theta) / (n - 1)."""
    from tda_clean.influence import per_sample_grads

    model, X, y = request.getfixturevalue(fixture)
    spec = InfluenceSpec(solver=KFACSettings(kind=kind, damping=0.01),
                         gradients=GradientSettings(params=params, memory_mb=0.01))
    eng = InfluenceEngine(model, (X, y), spec, TrainingObjective(0.05))
    G = per_sample_grads(eng.space, X, y)
    want = (eng.solver.solve(G) * (G + eng.regulariser_gradient())).sum(1).numpy() / (len(y) - 1)
    np.testing.assert_allclose(eng.self_influence(), want, **TOL)
    np.testing.assert_allclose(eng.self_influence(rows=slice(2, 9)), want[2:9], **TOL)


def test_several_reducers_share_one_pass(mlp):
    from tda_clean.influence.reducers import Several

    model, X, y = mlp
    eng = InfluenceEngine(model, (X, y), SPECS["ekfac"], TrainingObjective(0.05))
    query = PerSampleLoss(X[:5], y[:5])
    dense = eng.scores(query)
    total, (values, index) = eng.scores(query, reducer=Several(RowSum(), TopK(3, largest=False)))
    np.testing.assert_array_equal(total, dense.sum(0))
    np.testing.assert_array_equal(index, dense_top_k(dense, 3, largest=False)[1])


def test_memmap_rows_pickle_as_a_file_reference(tmp_path):
    """Shards sent to workers carry the file name and offset of a memmap, not its data."""
    import pickle

    X = np.arange(600.0).reshape(100, 6)
    np.save(tmp_path / "X.npy", X)
    mm = np.load(tmp_path / "X.npy", mmap_mode="r")
    rows = ArrayRows(mm[17:], np.arange(83) % 3)
    blob = pickle.dumps(rows)
    assert len(blob) < X.nbytes // 2
    back = pickle.loads(blob)
    assert isinstance(back.X, np.memmap)
    np.testing.assert_array_equal(np.asarray(back.X), X[17:])
    np.testing.assert_array_equal(back.labels, np.arange(83) % 3)
    in_memory = pickle.loads(pickle.dumps(ArrayRows(X, np.zeros(100))))
    np.testing.assert_array_equal(in_memory.X, X)


def test_stochastic_lissa_draws_rows_from_a_memmap(mlp, tmp_path):
    """Random row access (stochastic LiSSA) on a memmap gives the in-memory numbers; a stream of batches refuses."""
    from tda_clean.config.influence import LissaSettings

    model, X, y = mlp
    spec = InfluenceSpec(solver=LissaSettings(damping=0.1, batch_size=8, depth=30, scale=10.0))
    query = MeanLoss(X[:6], y[:6])
    want = InfluenceEngine(model, (X, y), spec, TrainingObjective(0.05)).scores(query)
    sources = _sources(X, y, tmp_path)
    np.testing.assert_allclose(InfluenceEngine(model, sources["memmap"], spec, TrainingObjective(0.05)).scores(query),
                               want, **TOL)
    with pytest.raises(InputError, match="random row access"):
        InfluenceEngine(model, sources["loader"], spec, TrainingObjective(0.05)).scores(query)
