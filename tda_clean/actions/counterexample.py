"""Counter-example unlearning of a backdoor: teach the model that the trigger does not decide the class.

The forget set ``F`` (the flagged rows) of a backdoor attack carries a trigger and a wrong (target) label.
Instead of retraining without ``F``, fine-tune the before-model for a few steps on batches that mix

* retained rows (keep clean accuracy; weighted ``anchor_weight`` against the counter-examples),
* the forget rows WITH their trigger but a corrected target: the before-model's output on a copy of the row
  with the trigger erased (trigger features set to the retained rows' mean),
* retained rows with the trigger stamped on and their trigger-free target (the same lesson on many more inputs
  than ``F`` holds).

Targets (``counter_loss``): ``logits`` -- squared distance (summed over classes) to the before-model's logits on
the trigger-free input (the retained row itself; the erased copy of a forget row); ``labels`` -- cross-entropy on
the row's label, the before-model's prediction on the erased copy for forget rows (plain training objective).

Each step draws ``batch_size`` retained rows (default ``min(16, training batch size)``), ``stamp`` retained rows to
stamp and up to ``stamp`` forget rows (up to ``batch_size`` when ``stamp`` is 0). ``target_drop`` (logits loss):
a stamped row whose label is not the target class ``t`` (the most common label of ``F``) is taught the target
logit ``z_t - target_drop`` of the teacher logits ``z`` -- the trigger must lower, not raise, the target logit;
the forget rows get the same on their erased-copy logits when their corrected label is not ``t``. (A cap
``min(z_t, max_{k != t} z_k - gap)`` was used before: it demands most of rows that already resemble ``t`` and
taught the model to predict ``t`` less on clean rows too.)

Amount of work: at most ``counter_steps`` steps, or when unset

    cap = ceil(counter_budget * epochs * n_retained / rows_per_step)

a ``counter_budget`` share of the rows a full training run (``train_config.epochs`` over the retained rows) would
process. (A stopping rule measured on held-aside training rows was tried and removed: the model fits training
rows better than unseen ones, so it stopped while the attack still succeeded on test rows.)

The trigger comes from ``trigger`` when a detector found it (``(mask, values)`` over one row's shape), else it
is estimated from ``F`` against the retained rows ``R``, feature by feature (a row's features flattened, (d,)):

    v_j = median_F x_j,   t = 0.05 * (max x - min x)
    agree_j = share of F with |x_j - v_j| <= t  -  share of R with |x_j - v_j| <= t
    z_j = |v_j - mean_R x_j| / (std_R x_j + t)

features with ``agree_j >= 0.45`` and ``z_j >= 1.5`` form the trigger, their values ``v_j``. A patch trigger is
constant over the poisons and rare among clean rows there; the median and the share keep the estimate when the
forget set also holds clean rows (a detector's false positives), as long as poisons are most of it. A trigger spread
over the whole input (blending) gives no such features -- the method is meant for patches.

``head_bias`` (logits loss): after the steps, per-class offsets are added to the last linear layer's bias so
that the model's softmax matches the before-model's on trigger-free retained rows (:func:`recalibrate_head`,
``tda_clean.actions.head_bias``); ``held`` rows the steps never drew, ``drawn`` the rows they drew, ``none`` off.

``layers``: ``all`` parameters, or ``body`` (all but the last linear layer: the probes of issue 5 showed the
backdoor lives in the body). ``model_before`` is never modified; every random draw takes ``seed``.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import nn

Trigger = tuple[np.ndarray, np.ndarray]        # (mask (d,) bool, values (d,)) over a row's flattened features


def estimate_trigger(X: np.ndarray, forget: np.ndarray, min_agree: float = 0.45,
                     min_z: float = 1.5) -> tuple[Trigger, np.ndarray]:
    """``((mask (d,), values (d,)), agree (d,))`` from the forget rows ``X[forget]`` vs the retained rows (module
    doc); ``agree`` is set to 0 where ``z < min_z``."""
    flat = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
    F, R = flat[forget], flat[~forget]
    t = 0.05 * max(float(flat.max() - flat.min()), 1e-12)
    v = np.median(F, 0)
    agree = (np.abs(F - v) <= t).mean(0) - (np.abs(R - v) <= t).mean(0)
    agree = np.where(np.abs(v - R.mean(0)) / (R.std(0) + t) >= min_z, agree, 0.0)
    return (agree >= min_agree, v), agree


def _stamp(Xt: torch.Tensor, mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    flat = Xt.reshape(len(Xt), mask.numel())
    return torch.where(mask, values, flat).reshape(Xt.shape)


def target_class(y: np.ndarray, forget: np.ndarray) -> int:
    """The attack's target: the most common label among the forget rows ``y[forget]`` (smallest on ties)."""
    return int(np.bincount(np.asarray(y)[forget].astype(np.int64)).argmax())


def step_cap(budget: float, epochs: int, n_retained: int, rows_per_step: int) -> int:
    """Steps allowed: ``ceil(budget * epochs * n_retained / rows_per_step)`` (>= 1) -- a ``budget`` share of the rows
    a full training run of ``epochs`` epochs over the retained rows would process."""
    return max(1, math.ceil(budget * epochs * n_retained / rows_per_step))


def _below_target(logits: torch.Tensor, labels: torch.Tensor, target: int, drop: float | None) -> torch.Tensor:
    """``logits`` (m, k) with the ``target`` logit of every row whose label is not ``target`` lowered by ``drop``
    (unchanged when ``drop`` is None): with the trigger, a row of another class must lean away from the target."""
    if drop is None:
        return logits
    out = logits.clone()
    out[:, target] = torch.where(labels != target, logits[:, target] - drop, logits[:, target])
    return out


def teacher_logits(teacher: nn.Module, Xt: torch.Tensor, draws: torch.Tensor,
                   chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits (u, k), where)``: ``teacher``'s logits on the ``u`` distinct rows of ``Xt`` that ``draws`` (any
    shape) names, in batches of ``chunk``, and ``where`` (``draws``' shape) the position of each drawn row among
    them -- ``logits[where]`` is the teacher on ``Xt[draws]``. Memory grows with the distinct rows (at most the
    training set), not with the steps times the rows per step."""
    rows, where = torch.unique(draws, return_inverse=True)
    with torch.no_grad():
        logits = torch.cat([teacher(Xt[rows[i:i + chunk]]) for i in range(0, len(rows), chunk)])
    return logits, where


def _adam(params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    """Adam, the fused kernel where the device and dtype have one (the same update in fewer kernel calls)."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=lr)


def counterexample(cfg, model_before: nn.Module, X: np.ndarray, y: np.ndarray, mask: np.ndarray, train_config,
                   seed: int, trigger: Trigger | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The after-model and an info dict (trigger size, relabelled rows, steps run). ``X`` (n, ...) the full
    training set, ``mask`` (n,) bool the forget set; ``cfg`` an ``UnlearnAction`` (``counter_steps``,
    ``counter_budget``, ``stamp``, ``layers``, ``counter_lr``, ``anchor_weight``, ``counter_loss``,
    ``target_drop``, ``batch_size``)."""
    from tda_clean.influence.params import last_linear
    from tda_clean.models.trainer import model_input, resolve_device, resolve_dtype, training_loss, training_objective

    if trigger is None:
        trigger, _ = estimate_trigger(X, mask)
    t_mask, t_values = (np.asarray(a).reshape(-1) for a in trigger)
    d = int(np.prod(np.shape(X)[1:]))
    if t_mask.shape != (d,) or t_values.shape != (d,):
        from tda_clean.errors import InputError

        raise InputError(f"unlearn: trigger must be (mask, values) with {d} features each (one row's shape), got "
                         f"{t_mask.size} and {t_values.size}")
    model = copy.deepcopy(model_before)
    device, dtype = resolve_device(train_config.device), resolve_dtype(train_config.dtype)
    model.to(device=device, dtype=dtype).eval()
    Xt = model_input(X, device, dtype)
    yt = torch.as_tensor(y, dtype=torch.long, device=device)
    tm = torch.as_tensor(t_mask.astype(bool), device=device)
    tv = torch.as_tensor(t_values, device=device, dtype=dtype)
    keep = torch.as_tensor(np.flatnonzero(~mask), device=device)
    forget = torch.as_tensor(np.flatnonzero(mask), device=device)
    target = target_class(y, mask)
    with torch.no_grad():                                       # corrected labels: prediction with trigger erased
        background = Xt[keep].reshape(len(keep), -1).mean(0)
        teacher_forget = model(_stamp(Xt[forget], tm, background))
        y_forget = teacher_forget.argmax(1)
        teacher_forget = _below_target(teacher_forget, y_forget, target, cfg.target_drop)
    teacher = copy.deepcopy(model).eval() if cfg.counter_loss == "logits" else None   # frozen before-model
    head = last_linear(model)[1] if cfg.layers == "body" else None
    params = [p for p in model.parameters() if head is None or all(p is not q for q in head.parameters())]
    if not params:
        from tda_clean.errors import InputError

        raise InputError("action.layers=body: the model has no trainable layer before its last linear layer "
                         "(use layers: all)")
    lr = cfg.counter_lr or train_config.lr
    opt = _adam(params, lr)
    gen = torch.Generator().manual_seed(seed)
    objective = training_objective(train_config)
    bs = cfg.batch_size or min(16, train_config.batch_size)
    n_forget_step = min(cfg.stamp or bs, len(forget))
    cap = cfg.counter_steps or step_cap(cfg.counter_budget, train_config.epochs, len(keep),
                                        bs + cfg.stamp + n_forget_step)
    draws = keep[torch.randint(0, len(keep), (cap, bs + cfg.stamp), generator=gen).to(device)]  # retained, stamped
    if teacher is not None:                     # the before-model's logits on every distinct drawn row
        teacher_rows, where = teacher_logits(teacher, Xt, draws)
        w = torch.ones(bs + cfg.stamp + n_forget_step, device=device, dtype=dtype)
        w[:bs] = cfg.anchor_weight
    model.train()
    for step in range(cap):
        idx, sidx = draws[step, :bs], draws[step, bs:]
        fsel = torch.randperm(len(forget), generator=gen)[:n_forget_step].to(device)
        xb = torch.cat([Xt[idx], _stamp(Xt[sidx], tm, tv), Xt[forget[fsel]]])
        opt.zero_grad()
        if teacher is None:                                     # cross-entropy on (corrected) labels
            loss = training_loss(model, xb, torch.cat([yt[idx], yt[sidx], y_forget[fsel]]), objective)
        else:                                                   # match the before-model's trigger-free logits
            clean_out = teacher_rows[where[step]]
            stamped_out = _below_target(clean_out[bs:], yt[sidx], target, cfg.target_drop)
            per_row = (model(xb) - torch.cat([clean_out[:bs], stamped_out, teacher_forget[fsel]])).pow(2).sum(1)
            loss = (per_row * w).sum() / w.sum()
        loss.backward()
        opt.step()
    model.eval()
    info: dict[str, Any] = {}
    if teacher is not None and cfg.head_bias in ("held", "drawn"):
        after, ref = _offset_rows(model, teacher, Xt, keep, draws, teacher_rows, cfg.head_bias, cfg.head_bias_rows,
                                  seed)
        info = recalibrate_head(model, after, ref)
    changed = int((y_forget != yt[forget]).sum())
    return model, {"trigger_features": int(t_mask.sum()), "relabelled": changed, "steps": cap, "target_class": target,
                   "stamp": cfg.stamp, "layers": cfg.layers, "lr": lr, "loss": cfg.counter_loss, **info}


def recalibrate_head(model: nn.Module, after: torch.Tensor, ref: torch.Tensor) -> dict[str, Any]:
    """Add per-class offsets (k,) to ``model``'s last linear bias (in place), fitted so that ``softmax(after +
    offsets)`` matches ``softmax(ref)`` (:func:`tda_clean.actions.head_bias.fit_offsets`);
    ``after``, ``ref`` (m, k): the model's and the before-model's logits on the same trigger-free retained rows.
    Returns the rows used, the mean KL before and after, and the offsets."""
    from tda_clean.actions.head_bias import add_to_head_bias, fit_offsets, mean_kl

    delta = fit_offsets(after, ref)
    add_to_head_bias(model, delta)
    return {"head_bias_rows": len(after), "head_bias_kl": (mean_kl(after, ref), mean_kl(after, ref, delta)),
            "head_bias": [round(float(v), 4) for v in delta]}


def _offset_rows(model: nn.Module, teacher: nn.Module, Xt: torch.Tensor, keep: torch.Tensor, draws: torch.Tensor,
                 teacher_rows: torch.Tensor, rows_from: str, n_rows: int, seed: int,
                 chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """``(after (m, k), ref (m, k))``: ``model``'s and ``teacher``'s logits on trigger-free retained rows --
    ``held``: up to ``n_rows`` of the retained rows ``keep`` that ``draws`` never names, drawn with ``seed + 1``
    (the drawn rows when every retained row was drawn); ``drawn``: the distinct rows of ``draws``, whose teacher
    logits ``teacher_rows`` are already known (:func:`teacher_logits` order). Costs one or two forward passes."""
    def forward(net: nn.Module, rows: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([net(Xt[rows[i:i + chunk]]) for i in range(0, len(rows), chunk)])

    rows, ref = torch.unique(draws), teacher_rows
    if rows_from == "held":
        drawn = torch.zeros(len(Xt), dtype=torch.bool, device=Xt.device)
        drawn[draws.reshape(-1)] = True
        pool = keep[~drawn[keep]]
        if len(pool):
            gen = torch.Generator().manual_seed(seed + 1)
            rows = pool[torch.randperm(len(pool), generator=gen)[:n_rows].to(pool.device)]
            ref = forward(teacher, rows)
    return forward(model, rows), ref
