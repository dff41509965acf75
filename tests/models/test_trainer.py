"""Models and the trainer: determinism, L-BFGS optimality, Adam early stopping, weights, devices."""
from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from tda_clean.config import CNNConfig, LogisticConfig, MLPConfig, TrainConfig
from tda_clean.errors import InputError
from tda_clean.models.factory import build_model
from tda_clean.models.trainer import fit, predict_proba, resolve_device, training_loss
from tests.unit_helpers import torch_single_thread

_single_thread = pytest.fixture(scope="module", autouse=True)(torch_single_thread)


def _data(n: int = 120, d: int = 4, k: int = 3, seed: int = 0, noise: float = 1.0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    W = rng.normal(size=(d, k))
    y = (X @ W + noise * rng.gumbel(size=(n, k))).argmax(axis=1)
    return X.astype(np.float32), y.astype(np.int64)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _grad_norm(model, X, y, l2, weight=None) -> float:
    p = next(model.parameters())
    Xt = torch.as_tensor(X, dtype=p.dtype)
    wt = None if weight is None else torch.as_tensor(weight, dtype=p.dtype)
    model.zero_grad()
    training_loss(model, Xt, torch.as_tensor(y), l2, wt).backward()
    return float(torch.sqrt(sum((q.grad ** 2).sum() for q in model.parameters())))


# ----------------------------------------------------------------------------------------------- factory
def test_build_model_is_a_function_of_seed_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = build_model(MLPConfig(hidden=(8,)), (4,), 3, seed=5)
    assert torch.equal(torch.get_rng_state(), before)
    b = build_model(MLPConfig(hidden=(8,)), (4,), 3, seed=5)
    c = build_model(MLPConfig(hidden=(8,)), (4,), 3, seed=6)
    _assert_same_state(_state(a), _state(b))
    assert not torch.equal(a.head.weight, c.head.weight)


@pytest.mark.parametrize("cfg, shape", [(LogisticConfig(), (4,)), (MLPConfig(hidden=(8, 6)), (4,)),
                                        (CNNConfig(channels=(2, 3), hidden=5), (8, 8)),
                                        (CNNConfig(channels=(2, 3), hidden=5), (1, 8, 8))])
def test_models_map_inputs_to_logits(cfg, shape):
    model = build_model(cfg, shape, 3, seed=0)
    assert model(torch.zeros(7, *shape)).shape == (7, 3)
    assert model.head.out_features == 3


def test_cnn_needs_images():
    with pytest.raises(InputError, match=r"model.kind=cnn needs image data .* got feature shape \(10,\)"):
        build_model(CNNConfig(), (10,), 2, seed=0)


# ----------------------------------------------------------------------------------------------- objective
def test_training_loss_matches_formula():
    X, y = _data(n=20)
    model = build_model(LogisticConfig(), (4,), 3, seed=0).double()
    Xt, yt = torch.as_tensor(X, dtype=torch.float64), torch.as_tensor(y)
    w = torch.linspace(0.5, 2.0, 20, dtype=torch.float64)
    theta_sq = model.head.weight.pow(2).sum() + model.head.bias.pow(2).sum()
    ce = F.cross_entropy(model(Xt), yt, reduction="none")
    expected = ((ce * w).sum() / w.sum() + 0.05 * theta_sq).detach()
    assert float(training_loss(model, Xt, yt, 0.1, w).detach()) == pytest.approx(float(expected), rel=1e-12)
    assert float(training_loss(model, Xt, yt, 0.0).detach()) == pytest.approx(float(ce.mean().detach()), rel=1e-12)


# ----------------------------------------------------------------------------------------------- L-BFGS
def test_lbfgs_reaches_the_optimum_of_the_convex_problem():
    X, y = _data()
    cfg = TrainConfig(optimizer="lbfgs", l2=1e-2, epochs=50, dtype="float64", device="cpu")
    model = build_model(LogisticConfig(), (4,), 3, seed=0)
    initial = _grad_norm(copy.deepcopy(model).double(), X, y, cfg.l2)
    result = fit(model, X, y, cfg, seed=0, progress=False)
    assert result.model is model
    assert next(model.parameters()).dtype == torch.float64
    assert initial > 1e-2
    assert _grad_norm(model, X, y, cfg.l2) < 1e-6
    # the loss history is non-increasing and ends at the minimum
    assert all(b <= a + 1e-12 for a, b in zip(result.train_loss, result.train_loss[1:]))
    # a different initialisation converges to the same (unique) optimum
    other = build_model(LogisticConfig(), (4,), 3, seed=9)
    fit(other, X, y, cfg, seed=9, progress=False)
    for p, q in zip(model.parameters(), other.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=0)


def test_lbfgs_sample_weights_equal_duplicated_rows():
    X, y = _data(n=60)
    cfg = TrainConfig(optimizer="lbfgs", l2=1e-2, epochs=50, dtype="float64", device="cpu")
    w = np.ones(60)
    w[:10] = 2.0
    weighted = build_model(LogisticConfig(), (4,), 3, seed=0)
    fit(weighted, X, y, cfg, 0, sample_weight=w, progress=False)
    duplicated = build_model(LogisticConfig(), (4,), 3, seed=0)
    fit(duplicated, np.concatenate([X, X[:10]]), np.concatenate([y, y[:10]]), cfg, 0, progress=False)
    assert _grad_norm(weighted, X, y, cfg.l2, w) < 1e-6
    for p, q in zip(weighted.parameters(), duplicated.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=0)
    unweighted = build_model(LogisticConfig(), (4,), 3, seed=0)
    fit(unweighted, X, y, cfg, 0, progress=False)
    assert not torch.allclose(unweighted.head.weight, weighted.head.weight, atol=1e-3)


# ----------------------------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_training_is_deterministic(optimizer):
    X, y = _data()
    Xv, yv = _data(n=40, seed=1)
    cfg = TrainConfig(optimizer=optimizer, epochs=8, lr=1e-2, batch_size=16, device="cpu")
    states = []
    for _ in range(2):
        model = build_model(MLPConfig(hidden=(16,)), (4,), 3, seed=3)
        fit(model, X, y, cfg, seed=3, X_val=Xv, y_val=yv, progress=False)
        states.append(_state(model))
    _assert_same_state(*states)


def test_adam_batch_order_depends_on_seed():
    X, y = _data()
    cfg = TrainConfig(optimizer="adam", epochs=3, batch_size=16, device="cpu")
    a = build_model(LogisticConfig(), (4,), 3, seed=0)
    b = build_model(LogisticConfig(), (4,), 3, seed=0)
    fit(a, X, y, cfg, seed=1, progress=False)
    fit(b, X, y, cfg, seed=2, progress=False)
    assert not torch.equal(a.head.weight, b.head.weight)


# ----------------------------------------------------------------------------------------------- early stopping
def test_adam_early_stopping_restores_best_validation_epoch():
    # labels are noise: the MLP memorises the training set and the validation loss turns up after a while
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 6)).astype(np.float32)
    y = rng.integers(0, 2, 80)
    Xv = rng.normal(size=(80, 6)).astype(np.float32)
    yv = rng.integers(0, 2, 80)
    cfg = TrainConfig(optimizer="adam", epochs=300, lr=3e-2, batch_size=16, patience=4, l2=0.0, device="cpu")
    snapshots = []
    model = build_model(MLPConfig(hidden=(64,)), (6,), 2, seed=0)
    result = fit(model, X, y, cfg, seed=0, X_val=Xv, y_val=yv,
                 on_epoch=lambda epoch, m: snapshots.append(_state(m)), progress=False)
    n_epochs = len(result.val_loss)
    assert n_epochs < cfg.epochs, "validation loss never turned up: early stopping not exercised"
    assert len(result.train_loss) == len(snapshots) == n_epochs
    best = result.best_epoch
    assert best == int(np.argmin(result.val_loss))
    assert n_epochs == best + 1 + cfg.patience  # stopped after `patience` epochs without improvement
    assert result.val_loss[-1] > result.val_loss[best]
    _assert_same_state(_state(model), snapshots[best])
    # the restored model really has the best validation loss
    with torch.no_grad():
        v = float(F.cross_entropy(model(torch.as_tensor(Xv)), torch.as_tensor(yv)))
    assert v == pytest.approx(result.val_loss[best], rel=1e-6)


def test_adam_without_validation_runs_all_epochs():
    X, y = _data(n=40)
    cfg = TrainConfig(optimizer="adam", epochs=5, batch_size=8, device="cpu")
    result = fit(build_model(LogisticConfig(), (4,), 3, seed=0), X, y, cfg, seed=0, progress=False)
    assert len(result.train_loss) == 5 and result.val_loss == [] and result.best_epoch == 4


# ----------------------------------------------------------------------------------------------- devices, inputs
@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_requested_without_cuda_is_input_error():
    X, y = _data(n=10)
    with pytest.raises(InputError) as info:
        fit(build_model(LogisticConfig(), (4,), 3, seed=0), X, y, TrainConfig(device="cuda"), seed=0)
    assert "train.device: 'cuda' requested but no CUDA device is available" in str(info.value)
    assert resolve_device("auto") == torch.device("cpu")


def test_empty_training_set_is_input_error():
    model = build_model(LogisticConfig(), (4,), 3, seed=0)
    with pytest.raises(InputError, match="training set is empty"):
        fit(model, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), TrainConfig(device="cpu"), seed=0)


def test_predict_proba():
    X, y = _data(n=50, noise=0.1)
    model = build_model(LogisticConfig(), (4,), 3, seed=0)
    fit(model, X, y, TrainConfig(epochs=20, device="cpu"), seed=0, progress=False)
    probs = predict_proba(model, X, batch_size=7)  # several batches
    assert probs.shape == (50, 3) and probs.dtype == np.float64
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    with torch.no_grad():
        ref = torch.softmax(model(torch.as_tensor(X)), dim=1).numpy()
    np.testing.assert_allclose(probs, ref, atol=1e-6)
    assert (probs.argmax(1) == y).mean() > 0.85
    assert predict_proba(model, np.zeros((0, 4), np.float32)).shape == (0, 3)


# ------------------------------------------------------------------------------------------ divergence
def test_exploding_adam_loss_stops_naming_train_lr():
    X, y = _data()
    model = build_model(MLPConfig(hidden=(8,)), X.shape[1:], 3, seed=0)
    with pytest.raises(InputError) as info:
        fit(model, X, y, TrainConfig(optimizer="adam", lr=1e9, epochs=20, batch_size=32), seed=0, X_val=X, y_val=y)
    message = str(info.value)
    assert message.startswith("train: the loss diverged (") and message.endswith("lower train.lr (now 1e+09)")
    assert re.search(r"at epoch 0, 1\.\d+ at the start", message)  # ~log(3): the loss before any step


def test_non_finite_lbfgs_loss_stops():
    X, y = _data()
    X[5, 2] = np.nan
    with pytest.raises(InputError, match=r"^train: the loss diverged \(nan at epoch 0.*raise train.l2"):
        fit(build_model(LogisticConfig(), X.shape[1:], 3, seed=0), X, y, TrainConfig(epochs=5), seed=0)


def test_ordinary_adam_run_is_not_flagged():
    X, y = _data()
    result = fit(build_model(MLPConfig(hidden=(8,)), X.shape[1:], 3, seed=0), X, y,
                 TrainConfig(optimizer="adam", lr=0.1, epochs=15, batch_size=32), seed=0)
    assert len(result.train_loss) == 15 and result.train_loss[-1] < result.train_loss[0]
