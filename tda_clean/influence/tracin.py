"""TracIn-CP (Pruthi et al. 2020) and gradient-similarity baselines.

Sign convention: POSITIVE = removing the training row is predicted to INCREASE the objective f.

    tracin(i -> f)   = sum_t lr_t * q(theta_t)^T g_i(theta_t)          over saved checkpoints theta_t
    dot(i -> f)      = q^T g_i                 cosine(i -> f) = q^T g_i / (||q|| ||g_i||)

(A gradient step on row i moves theta by -lr g_i and changes f by -lr q^T g_i; a positive score means training
on the row lowered f, so removing it raises f.) Scores are not divided by n.

Checkpoints: pass a :class:`CheckpointRecorder` as the trainer's ``on_epoch`` callback::

    rec = CheckpointRecorder(every=2)
    fit(model, X, y, config, seed, on_epoch=rec)
    result = tracin_cp(model, rec.checkpoints, (X, y), MeanLoss(Xv, yv), lr=config.lr)
"""
from __future__ import annotations

import copy
from typing import Literal, Sequence

import numpy as np
import torch
from torch import nn

from tda_clean.errors import InputError
from tda_clean.influence.estimators import InfluenceResult, train_arrays
from tda_clean.influence import layer_grads
from tda_clean.influence.gradients import as_tensors, check_finite_rows, iter_per_sample_grads
from tda_clean.influence.objectives import Objective, PerSampleObjective
from tda_clean.influence.params import ParamSpace, prepare_model
from tda_clean.config.influence import GradientSettings
from tda_clean.objective import TrainingObjective


class CheckpointRecorder:
    """``on_epoch(epoch, model)`` callback keeping a CPU copy of the state dict every ``every`` epochs.

    ``checkpoints``: list of ``(epoch, state_dict)``.
    """

    def __init__(self, every: int = 1):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise InputError(f"CheckpointRecorder.every: expected a positive integer, got {every!r}")
        self.every = every
        self.checkpoints: list[tuple[int, dict[str, torch.Tensor]]] = []

    def __call__(self, epoch: int, model: nn.Module) -> None:
        if (epoch + 1) % self.every == 0:
            self.checkpoints.append((epoch, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}))


def _similarity(space: ParamSpace, X, y, objective: Objective, memory_mb: float, cosine: bool, n: int,
                row_loss) -> torch.Tensor:
    """(m, n) float64 ``q_j . g_i`` (or cosines) of the objective's outputs and the training rows' ``row_loss``."""
    fast = _factored_similarity(space, X, y, objective, cosine, n, row_loss)
    if fast is not None:
        return fast
    Q = objective.query_gradients(space, memory_mb)
    out = torch.zeros(Q.shape[0], n, dtype=torch.float64)
    if cosine:
        Q = Q / Q.norm(dim=1, keepdim=True).clamp_min(1e-30)
    for rows, G in iter_per_sample_grads(space, X, y, loss=row_loss, memory_mb=memory_mb):
        if cosine:
            G = G / G.norm(dim=1, keepdim=True).clamp_min(1e-30)
        out[:, rows] = (Q @ G.T).double().cpu()
    return out


def _checked_factors(space: ParamSpace, X: torch.Tensor, y: torch.Tensor, loss, what: str, offset: int = 0):
    parts = layer_grads.gradient_parts(space, X, y, loss)
    if parts is not None:
        check_finite_rows(parts.rows_for_check(), what=what, offset=offset)
    return parts


def _factored_similarity(space: ParamSpace, X, y, objective: Objective, cosine: bool, n: int, row_loss,
                         block: int = 4096) -> torch.Tensor | None:
    """Same as the materialised path, with Linear layers' gradients as rank-one factors
    (``layer_grads.gradient_parts``), when the subset is made of Linear / Conv2d layers and the objective is defined
    row by row: only conv parameters are materialised."""
    if not isinstance(objective, PerSampleObjective) or (cosine and objective.reduce == "mean"):
        return None
    Xq, tq = as_tensors(space, objective.X, objective.targets)
    fq = _checked_factors(space, Xq, tq, objective.row_value, f"{objective.name} query gradients")
    if fq is None:
        return None
    q_norm = layer_grads.part_sq_norms(fq).sqrt()[:, None] if cosine else None
    Xt, yt = as_tensors(space, X, y)
    out = torch.zeros(1 if objective.reduce == "mean" else len(Xq), n, dtype=torch.float64)
    for start in range(0, n, block):
        rows = slice(start, min(n, start + block))
        ft = _checked_factors(space, Xt[rows], yt[rows], row_loss, "per-sample gradients", offset=start)
        if ft is None:
            return None
        D = layer_grads.part_dots(fq, ft)
        if not bool(torch.isfinite(D).all()):  # finite factors, overflowing product: the materialised path names rows
            return None
        if cosine:
            D = D / (q_norm * layer_grads.part_sq_norms(ft).sqrt()[None]).clamp_min(1e-30)
        out[:, rows] = (D.mean(0, keepdim=True) if objective.reduce == "mean" else D).double().cpu()
    return out


def tracin_cp(model: nn.Module, checkpoints: Sequence[tuple[int, dict]] | Sequence[dict], train, objective: Objective,
              *, lr: float | Sequence[float], gradients: GradientSettings = GradientSettings(),
              training: TrainingObjective = TrainingObjective()) -> InfluenceResult:
    """TracIn-CP scores (m, n) summed over ``checkpoints`` (state dicts or ``(epoch, state_dict)`` pairs).

    ``model`` supplies the architecture only; it is not modified. ``lr``: one rate or one per checkpoint.
    ``training``: the model's training objective (its per-row loss gives ``g_i``).
    """
    if len(checkpoints) == 0:
        raise InputError("tracin: no checkpoints (record them with CheckpointRecorder as the trainer's on_epoch)")
    rates = [float(lr)] * len(checkpoints) if np.isscalar(lr) else [float(r) for r in lr]
    if len(rates) != len(checkpoints):
        raise InputError(f"tracin: {len(checkpoints)} checkpoints but {len(rates)} learning rates")
    X, y = train_arrays(train)
    work = copy.deepcopy(prepare_model(model, gradients))
    total = None
    for rate, ckpt in zip(rates, checkpoints):
        state = ckpt[1] if isinstance(ckpt, tuple) else ckpt
        work.load_state_dict(state)
        work.eval()
        space = ParamSpace(work, gradients.params)
        part = rate * _similarity(space, X, y, objective, gradients.memory_mb, False, len(X), training.row)
        total = part if total is None else total + part
    return InfluenceResult(total.numpy(), objective.name, "tracin_cp", {"checkpoints": len(checkpoints)})


def gradient_similarity(model: nn.Module, train, objective: Objective, *, kind: Literal["dot", "cosine"] = "dot",
                        gradients: GradientSettings = GradientSettings(),
                        training: TrainingObjective = TrainingObjective()) -> InfluenceResult:
    """Gradient-similarity baseline (m, n): ``q^T g_i`` (``dot``) or cosine, no curvature; ``g_i``: ``training.row``."""
    if kind not in ("dot", "cosine"):
        raise InputError(f"gradient_similarity.kind: {kind!r} is not one of dot, cosine")
    X, y = train_arrays(train)
    space = ParamSpace(prepare_model(model, gradients), gradients.params)
    scores = _similarity(space, X, y, objective, gradients.memory_mb, kind == "cosine", len(X), training.row)
    return InfluenceResult(scores.numpy(), objective.name, f"grad_{kind}", {})
