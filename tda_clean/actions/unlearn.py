"""Unlearning the flagged rows: the after-model of an ``unlearn`` action.

``unlearn(cfg, model_before, X, y, forget_mask, train_config, seed, ...) -> (model_after, info)`` with ``cfg`` the
spec of one method (:data:`~tda_clean.config.UnlearnAction`, its own settings only), ``cfg.method`` one of

* ``retrain``  -- train a fresh model (``make_model(seed)``, else a seeded re-initialisation of
  ``model_before``'s layers) on the retained rows with the run's training config: the reference.
* ``newton``   -- second-order group removal (Basu et al. 2020, docs/methods.md#unlearning) with the influence spec
  ``cfg.influence`` (parameter subset, solver, damping): curvature A = H + damping I of the FULL training
  objective (:class:`~tda_clean.objective.TrainingObjective`) from the engine's solver::

      p = m/n, q = p/(1-p),  g_U = mean over U of grad(loss + l2/2 |theta|^2),  H_U = mean Hessian over U
      dtheta = q A^-1 g_U + q^2 (A^-1 H_U - I) A^-1 g_U          (order 2; order 1 keeps the first term)

  followed by ``cfg.steps - 1`` Newton steps on the RETAINED objective (curvature refitted on the retained
  rows). For a convex model (logistic regression, or the last layer with the body frozen) with the exact
  solver and damping 0 this converges to the retrained optimum; the test checks the parameter distance.
* ``finetune`` -- ``cfg.epochs`` of Adam (``cfg.lr``) on the retained rows, starting from ``model_before``
  (the head re-initialised first when ``cfg.reinit_head``).
* ``ascent``   -- the same, with ``- ascent_weight * min(CE_forget, max_forget_loss)`` added to each step's loss:
  gradient ascent on the forget set, bounded so it cannot diverge, with descent on the retained set.
* ``counterexample`` -- for a backdoor: Adam steps (a share of a training run's rows, or ``counter_steps``) on
  retained rows mixed with the flagged rows
  (trigger kept, label corrected to the before-model's prediction with the trigger erased) and retained rows with
  the trigger stamped on (:mod:`tda_clean.actions.counterexample`).

``model_before`` is never modified. ``info`` records ``method``, ``seconds`` (wall time of the unlearning
itself), ``n_forget``, ``n_retain`` and method details (``param_change_norm`` for newton, ``epochs`` ...).
"""
from __future__ import annotations

import copy
import logging
import time
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from tda_clean.config import AscentUnlearn, FinetuneUnlearn, NewtonUnlearn, TrainConfig, UnlearnSpec
from tda_clean.errors import InputError
from tda_clean.progress import progress_bar

logger = logging.getLogger(__name__)


def _check(cfg: UnlearnSpec, X: np.ndarray, y: np.ndarray, forget_mask: np.ndarray) -> np.ndarray:
    if not isinstance(cfg, UnlearnSpec):
        raise InputError(f"unlearn: expected an unlearning spec (UnlearnSpec), got {type(cfg).__name__}")
    mask = np.asarray(forget_mask)
    if mask.dtype != bool or mask.shape != (len(y),):
        raise InputError(f"unlearn: forget_mask must be a boolean array of shape ({len(y)},), got "
                         f"{mask.dtype} {mask.shape}")
    if len(X) != len(y):
        raise InputError(f"unlearn: {len(X)} feature rows but {len(y)} labels")
    if mask.all():
        raise InputError("unlearn: the forget set is the whole training set; nothing would be left to learn from")
    return mask


def _fresh_model(model_before: nn.Module, seed: int) -> nn.Module:
    model = copy.deepcopy(model_before)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return model


def _retrain(cfg, model_before, X, y, mask, train_config, seed, make_model, X_val, y_val, weight):
    from tda_clean.models.trainer import fit

    model = make_model(seed) if make_model is not None else _fresh_model(model_before, seed)
    keep = ~mask
    result = fit(model, X[keep], y[keep], train_config, seed, X_val=X_val, y_val=y_val,
                 sample_weight=None if weight is None else weight[keep], progress=False)
    return model, {"epochs": len(result.train_loss)}


# ------------------------------------------------------------------------------------------------ newton
def _newton(cfg: NewtonUnlearn, model_before, X, y, mask, train_config: TrainConfig, seed, *_):
    from tda_clean.influence import InfluenceEngine, make_solver
    from tda_clean.influence.curvature import TrainingLoss
    from tda_clean.influence.params import ParamSpace
    from tda_clean.models.trainer import training_objective

    model = copy.deepcopy(model_before).eval()
    objective = training_objective(train_config)
    engine = InfluenceEngine(model, (X, y), cfg.influence, objective)
    space = engine.space                     # over ``engine.model`` (== model unless a cast copy was made)
    theta = space.flat().clone()
    n, m = len(y), int(mask.sum())
    p = m / n
    q = p / (1 - p)
    Xf, yf = X[mask], y[mask]
    g_u = _objective_grad(TrainingLoss(space, Xf, yf, objective))       # mean grad of the objective over U
    v = engine.solver.solve(g_u[None])[0]                                 # A^-1 g_U
    step = q * v
    if cfg.order == 2:
        H_u = TrainingLoss(space, Xf, yf, objective)                      # hvp: mean loss Hessian over U + l2 I
        step = step + q * q * (engine.solver.solve(H_u.hvp(v[None]))[0] - v)
    theta = theta + step
    _set(space, theta)
    norms = [float(step.norm())]
    keep = ~mask
    for _ in range(cfg.steps - 1):                                        # Newton on the retained objective
        loss = TrainingLoss(ParamSpace(space.model, space.subset, space.layers_only), X[keep], y[keep], objective)
        grad = _objective_grad(loss)
        solver = make_solver(engine.spec.solver).fit(loss)
        delta = solver.solve(grad[None])[0]
        theta = theta - delta
        _set(space, theta)
        norms.append(float(delta.norm()))
    out = space.model
    if out is not model:                                                  # cast copy: copy values back
        model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in out.state_dict().items()})
    return model.eval(), {"params": str(space.subset), "p": int(space.p), "order": int(cfg.order), "steps": cfg.steps,
                          "step_norms": norms, "damping": float(engine.solver.damping_),
                          "param_change_norm": float((theta - engine.loss.theta).norm())}


def _set(space, theta: torch.Tensor) -> None:
    with torch.no_grad():
        values = space.unflatten(theta)
        named = dict(space.model.named_parameters())
        for name in space.names:
            named[name].copy_(values[name])


def _objective_grad(loss) -> torch.Tensor:
    """Gradient (p,) of the training objective of ``loss`` (a ``TrainingLoss``) at the space's current parameters."""
    theta = loss.space.flat().clone().requires_grad_(True)
    total = 0.0
    with torch.enable_grad():
        for _, Xb, yb in loss.blocks():
            total = total + loss.objective.data_sum(loss.space.forward(theta, Xb), yb)
        (g,) = torch.autograd.grad(total / loss.n + loss.objective.regulariser(theta), theta)
    return g.detach()


# --------------------------------------------------------------------------------------- finetune / ascent
def _gradient_unlearn(cfg: FinetuneUnlearn | AscentUnlearn, model_before, X, y, mask, train_config: TrainConfig, seed,
                      ascent: bool):
    from tda_clean.influence.params import last_linear
    from tda_clean.models.trainer import model_input, resolve_device, resolve_dtype, training_loss, training_objective

    model = copy.deepcopy(model_before)
    device, dtype = resolve_device(train_config.device), resolve_dtype(train_config.dtype)
    model.to(device=device, dtype=dtype)
    if cfg.reinit_head:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            last_linear(model)[1].reset_parameters()
    Xt = model_input(X, device, dtype)
    yt = torch.as_tensor(y, dtype=torch.long, device=device)
    keep = torch.as_tensor(np.flatnonzero(~mask), device=device)
    forget = torch.as_tensor(np.flatnonzero(mask), device=device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed)
    objective = training_objective(train_config)
    bs = cfg.batch_size or train_config.batch_size
    for _ in progress_bar(cfg.epochs, f"unlearn ({cfg.method})", "epochs", iterable=range(cfg.epochs)):
        model.train()
        order = keep[torch.randperm(len(keep), generator=gen).to(device)]
        for start in range(0, len(order), bs):
            idx = order[start : start + bs]
            opt.zero_grad()
            loss = training_loss(model, Xt[idx], yt[idx], objective)
            if ascent and len(forget):
                fidx = forget[torch.randint(0, len(forget), (min(bs, len(forget)),), generator=gen).to(device)]
                forget_loss = objective.data_mean(model(Xt[fidx]), yt[fidx])
                loss = loss - cfg.ascent_weight * torch.clamp(forget_loss, max=cfg.max_forget_loss)
            loss.backward()
            opt.step()
    model.eval()
    return model, {"epochs": cfg.epochs, "lr": cfg.lr, "reinit_head": cfg.reinit_head}


def unlearn(cfg: UnlearnSpec, model_before: nn.Module, X: np.ndarray, y: np.ndarray, forget_mask: np.ndarray,
            train_config: TrainConfig, seed: int, *, make_model: Callable[[int], nn.Module] | None = None,
            X_val: np.ndarray | None = None, y_val: np.ndarray | None = None,
            sample_weight: np.ndarray | None = None, trigger=None) -> tuple[nn.Module, dict[str, Any]]:
    """The after-model with the rows in ``forget_mask`` (n,) bool unlearned, and an info dict (see module doc).

    ``X`` (n, ...), ``y`` (n,) are the FULL training set the before-model was trained on. ``make_model``,
    ``X_val``/``y_val`` and ``sample_weight`` are used by ``retrain`` only (same factory, early stopping and
    weights as the pipeline's own retraining). ``trigger`` (``(mask, values)`` over a row's flattened features,
    e.g. a detector's reconstructed trigger) is used by ``counterexample`` only; without it the trigger is
    estimated from the forget set.
    """
    X, y = np.asarray(X), np.asarray(y)
    mask = _check(cfg, X, y, forget_mask)
    start = time.perf_counter()
    logger.info("unlearn (%s): forgetting %d rows, keeping %d", cfg.method, int(mask.sum()), int((~mask).sum()))
    if mask.sum() == 0:
        model, extra = copy.deepcopy(model_before).eval(), {"note": "empty forget set: model unchanged"}
    elif cfg.method == "retrain":
        model, extra = _retrain(cfg, model_before, X, y, mask, train_config, seed, make_model, X_val, y_val,
                                sample_weight)
    elif cfg.method == "newton":
        model, extra = _newton(cfg, model_before, X, y, mask, train_config, seed)
    elif cfg.method == "counterexample":
        from tda_clean.actions.counterexample import counterexample

        model, extra = counterexample(cfg, model_before, X, y, mask, train_config, seed, trigger)
    else:
        model, extra = _gradient_unlearn(cfg, model_before, X, y, mask, train_config, seed,
                                         ascent=cfg.method == "ascent")
    seconds = time.perf_counter() - start
    logger.info("unlearn (%s): done in %.0f s", cfg.method, seconds)
    return model, {"method": cfg.method, "seconds": round(seconds, 4), "n_forget": int(mask.sum()),
                   "n_retain": int((~mask).sum()), **extra}


def unlearn_action(train, selection, cfg: UnlearnSpec):
    """The act-stage side of ``unlearn``: the new data version (flagged rows removed) and its audit rows.

    Audit rows use action ``remove`` (so ``replay_audit`` rebuilds the retained data exactly) with the reason
    prefixed ``unlearn (<method>)``; counts report ``unlearned``. The after-MODEL comes from :func:`unlearn`.
    """
    from dataclasses import replace

    from tda_clean.actions import ActionResult, remove

    result = remove(train, selection)
    audit = result.audit.copy()
    audit["reason"] = f"unlearn ({cfg.method}); " + audit["reason"].astype(str)
    return replace(result, audit=audit, counts={"unlearned": int(len(selection.indices))})
