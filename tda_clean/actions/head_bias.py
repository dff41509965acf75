"""Per-class logit offsets that bring a fine-tuned model's softmax back to a reference model's on given rows.

Fine-tuning can shift how often a model predicts each class on clean inputs (e.g. unlearning a backdoor teaches
the model to predict the attack's target class less). Given the fine-tuned model's logits ``z`` (m, k) and the
reference (before-)model's logits ``r`` (m, k) on the same ``m`` trigger-free rows, :func:`fit_offsets` returns
``delta`` (k,) minimising the mean KL divergence

    L(delta) = mean_i KL( softmax(r_i) || softmax(z_i + delta) )
             = mean_i [ logsumexp(z_i + delta) - sum_c p_ic (z_ic + delta_c) ] + const,   p_i = softmax(r_i)

a convex function of ``delta`` (gradient ``mean_i q_i - mean_i p_i`` with ``q_i = softmax(z_i + delta)``,
Hessian ``mean_i diag(q_i) - q_i q_i^T``). Newton steps with a backtracking line search; ``delta`` is defined up
to a constant added to every class and is returned with mean 0 (``classes`` given: only those entries are free,
the others stay 0). Adding ``delta`` to the bias of the model's last linear layer (:func:`add_to_head_bias`)
adds it to every output row's logits -- valid when that layer's output is the model's output.
"""
from __future__ import annotations

import torch
from torch import nn


def _loss(z: torch.Tensor, p: torch.Tensor, delta: torch.Tensor, ridge: float = 0.0) -> torch.Tensor:
    s = z + delta
    return (torch.logsumexp(s, 1) - (p * s).sum(1)).mean() + 0.5 * ridge * (delta ** 2).sum()


def fit_offsets(after: torch.Tensor, before: torch.Tensor, classes: list[int] | None = None, steps: int = 20,
                tol: float = 1e-8, ridge: float = 0.0) -> torch.Tensor:
    """``delta`` (k,) float64 on ``after``'s device minimising the mean KL of ``softmax(before)`` to
    ``softmax(after + delta)`` over the rows (module doc); ``after``, ``before`` (m, k) logits. ``classes``: the
    indices allowed to move (default all; then ``delta`` has mean 0). ``ridge``: ``ridge / 2 * |delta|^2`` added to
    the loss (shrinks offsets fitted on few rows towards 0)."""
    z, p = after.detach().double(), torch.softmax(before.detach().double(), 1)
    k = z.shape[1]
    free = torch.zeros(k, dtype=torch.bool, device=z.device)
    free[list(range(k)) if classes is None else classes] = True
    delta = torch.zeros(k, dtype=torch.float64, device=z.device)
    cur = _loss(z, p, delta, ridge)
    for _ in range(steps):
        q = torch.softmax(z + delta, 1)
        g = ((q - p).mean(0) + ridge * delta)[free]
        h = (torch.diag_embed(q) - q.unsqueeze(2) * q.unsqueeze(1)).mean(0)[free][:, free] + ridge * torch.eye(
            int(free.sum()), dtype=z.dtype, device=z.device)
        if float(g.abs().max()) < tol:
            break
        h = h + 1e-9 * torch.eye(len(g), dtype=h.dtype, device=h.device)   # null direction: all classes alike
        direction = torch.zeros_like(delta)
        direction[free] = -torch.linalg.lstsq(h, g.unsqueeze(1)).solution.squeeze(1)
        t = 1.0
        while t > 1e-4:
            new = _loss(z, p, delta + t * direction, ridge)
            if new <= cur:
                break
            t *= 0.5
        if t <= 1e-4:
            break
        delta, cur = delta + t * direction, new
    if classes is None:
        delta = delta - delta.mean()
    return delta


def mean_kl(after: torch.Tensor, before: torch.Tensor, delta: torch.Tensor | None = None) -> float:
    """Mean KL of ``softmax(before)`` to ``softmax(after + delta)`` over the rows (``delta`` None: 0)."""
    z, r = after.detach().double(), before.detach().double()
    if delta is not None:
        z = z + delta.to(z)
    return float((torch.softmax(r, 1) * (torch.log_softmax(r, 1) - torch.log_softmax(z, 1))).sum(1).mean())


def add_to_head_bias(model: nn.Module, delta: torch.Tensor) -> None:
    """Add ``delta`` (k,) to the bias of ``model``'s last ``nn.Linear`` (in place; the layer must have a bias of
    ``k`` outputs)."""
    from tda_clean.errors import InputError
    from tda_clean.influence.params import last_linear

    _, head = last_linear(model)
    if head.bias is None or head.bias.shape != delta.shape:
        raise InputError(f"unlearn: head_bias needs a last linear layer with a bias of {delta.numel()} outputs "
                         f"(set action.head_bias: none)")
    with torch.no_grad():
        head.bias.add_(delta.to(head.bias))
