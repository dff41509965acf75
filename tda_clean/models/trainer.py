"""Seeded, deterministic training of the factory models.

Objective (the TRAINING loss that influence functions differentiate): :class:`~tda_clean.objective.TrainingObjective`
    L(theta) = sum_i w_i * CE(f(x_i; theta), y_i) / sum_i w_i  +  (l2 / 2) * ||theta||^2
with w_i = 1 unless sample weights are given and CE replaced by the user's ``model.loss`` when set
(``training_objective(config)``). ``lbfgs`` minimises it full-batch (convex models converge to
the unique optimum); ``adam`` runs mini-batches in an order drawn from ``seed`` with early stopping on the
validation loss, restoring the best weights. ``train.function`` replaces both (:mod:`tda_clean.models.user`).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from tda_clean.config import TrainConfig
from tda_clean.errors import InputError
from tda_clean.models.eager import eager_optimizer
from tda_clean.objective import TrainingObjective, cross_entropy
from tda_clean.progress import progress_bar


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("train.device: 'cuda' requested but no CUDA device is available (use 'auto' or 'cpu')")
    return torch.device(name)


def resolve_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[name]


def training_objective(config: TrainConfig) -> TrainingObjective:
    """The objective a run's models are trained with (and influence differentiates): the user's ``model.loss``
    (a ``python`` model's, carried by the run's train config) or cross-entropy, and ``l2``."""
    from tda_clean.models.user import UserLoss

    user = getattr(config, "_model", None)
    loss = UserLoss(user.loss, user.code_dir) if user is not None and user.loss else cross_entropy
    return TrainingObjective(l2=config.l2, loss=loss)


def training_loss(
    model: nn.Module, X: torch.Tensor, y: torch.Tensor, objective: TrainingObjective | float,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """The training ``objective`` (or cross-entropy with that ``l2``) on a batch (weights normalised within the
    batch) over all trainable parameters."""
    objective = objective if isinstance(objective, TrainingObjective) else TrainingObjective(l2=objective)
    params = (p for p in model.parameters() if p.requires_grad)
    return objective.value(model(X), y, params, weight)


@dataclass
class TrainResult:
    """A trained model plus its loss history (one entry per epoch or L-BFGS round)."""

    model: nn.Module
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0


def fit(
    model: nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    config: TrainConfig,
    seed: int,
    *,
    X_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    sample_weight: np.ndarray | None = None,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
    progress: bool | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``X`` (n, *feature_shape), ``y`` (n,) int labels; return it with history.

    ``on_epoch(epoch, model)`` is called after each epoch (Adam) or round (L-BFGS), e.g. to save
    TracIn checkpoints. ``progress=None`` shows a bar on an interactive terminal; ``False`` (inner training whose
    caller shows its own progress) never does. Without a bar, long training logs a progress line now and then
    (:mod:`tda_clean.progress`).
    """
    if len(X) == 0:
        raise InputError("training set is empty")
    device, dtype = resolve_device(config.device), resolve_dtype(config.dtype)
    model.to(device=device, dtype=dtype)
    Xt, yt = model_input(X, device, dtype), torch.as_tensor(y, dtype=torch.long, device=device)
    wt = None if sample_weight is None else model_input(sample_weight, device, dtype)
    val = None
    if X_val is not None and y_val is not None and len(X_val):
        val = (model_input(X_val, device, dtype), torch.as_tensor(y_val, dtype=torch.long, device=device))
    show = progress is not False
    objective = training_objective(config)
    if config.function:  # the user's training function (one "epoch" for on_epoch, e.g. TracIn's checkpoints)
        from tda_clean.models.user import TrainSet, fit_with_function

        fit_with_function(model, TrainSet(Xt, yt, wt), None if val is None else TrainSet(*val), config, seed)
        if on_epoch is not None:
            on_epoch(0, model)
        with torch.no_grad():
            return TrainResult(model, [float(training_loss(model, Xt, yt, objective, wt))])
    if config.optimizer == "lbfgs":
        with eager_optimizer():  # L-BFGS never needs torch._dynamo (models/eager.py)
            return _fit_lbfgs(model, Xt, yt, wt, val, config, objective, on_epoch, show)
    return _fit_adam(model, Xt, yt, wt, val, config, objective, seed, on_epoch, show)


def _fit_lbfgs(model, Xt, yt, wt, val, config: TrainConfig, objective, on_epoch, show) -> TrainResult:
    result = TrainResult(model)
    opt = torch.optim.LBFGS(
        model.parameters(), lr=1.0, max_iter=20, history_size=20, line_search_fn="strong_wolfe",
        tolerance_grad=1e-9, tolerance_change=1e-12,
    )

    def closure():
        opt.zero_grad()
        loss = training_loss(model, Xt, yt, objective, wt)
        loss.backward()
        return loss

    previous = float("inf")
    for epoch in progress_bar(config.epochs, "train (lbfgs)", "rounds", worth_showing=show,
                              iterable=range(config.epochs)):
        loss = float(opt.step(closure).detach())
        result.train_loss.append(loss)
        _check_diverged(result.train_loss, epoch, "raise train.l2 or check the features' scale")
        if val is not None:
            result.val_loss.append(evaluate_loss(model, *val, objective.loss))
        if on_epoch is not None:
            on_epoch(epoch, model)
        result.best_epoch = epoch
        if abs(previous - loss) <= 1e-10 * max(1.0, abs(loss)):
            break
        previous = loss
    return result


def fit_to_optimum(model: nn.Module, X: np.ndarray, y: np.ndarray, l2: float, *, max_iter: int = 500,
                   history_size: int = 100, tolerance_grad: float = 1e-9, tolerance_change: float = 1e-14) -> nn.Module:
    """Minimise the (unweighted) training objective above over all rows of ``X`` (n, *feature_shape), ``y`` (n,)
    by one full-batch strong-Wolfe L-BFGS run of at most ``max_iter`` iterations, in place from the model's current
    weights (warm start), in the model's own dtype and device (a float64 model for a tight optimum). No config,
    seed, history or callbacks: for retraining references (influence tests, benchmarks) where only the optimum
    matters. Returns ``model`` in eval mode.
    """
    param = next(model.parameters())
    Xt = model_input(X, param.device, param.dtype)
    yt = torch.as_tensor(y, dtype=torch.long, device=param.device)
    with eager_optimizer():
        opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=max_iter, history_size=history_size,
                                tolerance_grad=tolerance_grad, tolerance_change=tolerance_change,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = training_loss(model, Xt, yt, l2)
            loss.backward()
            return loss

        opt.step(closure)
    return model.eval()


def _fit_adam(model, Xt, yt, wt, val, config: TrainConfig, objective, seed: int, on_epoch, show) -> TrainResult:
    result = TrainResult(model)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    gen = torch.Generator().manual_seed(seed)
    n = len(Xt)
    best_state, best_val, stale, first = copy.deepcopy(model.state_dict()), float("inf"), 0, None
    bar = progress_bar(config.epochs, "train (adam)", "epochs", worth_showing=show, iterable=range(config.epochs))
    for epoch in bar:
        model.train()
        order = torch.randperm(n, generator=gen).to(Xt.device)
        total = 0.0
        for start in range(0, n, config.batch_size):
            idx = order[start : start + config.batch_size]
            opt.zero_grad()
            loss = training_loss(model, Xt[idx], yt[idx], objective, None if wt is None else wt[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            first = total / len(idx) if first is None else first  # the first batch's loss, before any step
        model.eval()
        result.train_loss.append(total / n)
        _check_diverged([first, total / n], epoch, f"lower train.lr (now {config.lr:g})")
        if on_epoch is not None:
            on_epoch(epoch, model)
        if val is None:
            result.best_epoch = epoch
            continue
        v = evaluate_loss(model, *val, objective.loss)
        result.val_loss.append(v)
        bar.set_postfix(val_loss=f"{v:.4f}")
        if v < best_val - 1e-6:
            best_val, best_state, stale, result.best_epoch = v, copy.deepcopy(model.state_dict()), 0, epoch
        else:
            stale += 1
            if stale >= config.patience:
                break
    if val is not None:
        model.load_state_dict(best_state)
    model.eval()
    return result


def _check_diverged(losses: list[float], epoch: int, hint: str) -> None:
    """InputError when the latest loss is not finite or above 1000 x max(1, first loss): training diverged."""
    if not math.isfinite(losses[-1]) or losses[-1] > 1e3 * max(1.0, losses[0]):
        raise InputError(f"train: the loss diverged ({losses[-1]:.3g} at epoch {epoch}, {losses[0]:.3g} at the "
                         f"start); {hint}")


@torch.no_grad()
def evaluate_loss(model: nn.Module, X: torch.Tensor, y: torch.Tensor, loss=cross_entropy) -> float:
    """Mean per-sample ``loss`` (default cross-entropy; no regulariser)."""
    model.eval()
    return float(loss(model(X), y).mean())


@torch.no_grad()
def predict_proba(model: nn.Module, X: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Class probabilities, shape ``(n, n_classes)``, float64 numpy."""
    model.eval()
    param = next(model.parameters())
    out = []
    for start in range(0, max(len(X), 1), batch_size):  # an empty X: one empty batch gives the class count
        xb = model_input(X[start : start + batch_size], param.device, param.dtype)
        out.append(torch.softmax(model(xb), dim=1).double().cpu().numpy())
    return np.concatenate(out)


def model_input(a, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Array or tensor -> tensor on ``device``; floating inputs in ``dtype``, integer ones (token ids) kept long."""
    if isinstance(a, np.ndarray):  # read-only arrays (memmaps opened with mode "r") are copied, never shared
        a = np.ascontiguousarray(a) if a.flags.writeable else np.array(a)
    t = torch.as_tensor(a, device=device)
    return t.to(dtype) if t.is_floating_point() or t.dtype == torch.bool else t.long()
