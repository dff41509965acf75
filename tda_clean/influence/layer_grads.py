"""Per-row gradient dot products for Linear and Conv2d parameters from one batched backward pass.

For a layer applied row-wise, ``out_i = W a_i + b``, the gradient of row i's loss is

    dW_i = sum_t delta_i[t] a_i[t]^T        db_i = sum_t delta_i[t]        (delta_i = d loss_i / d out_i)

where ``t`` runs over the positions the weights are shared across (sequence positions for Linear on (n, ..., d)
inputs, output pixels for Conv2d, whose ``a_i[t]`` is the unfolded input patch). Rows do not interact in an eval-
mode model, so one backward pass of ``sum_i loss_i`` gives every ``delta_i`` (the hook-based method of Opacus and
captum's ``sample_wise_grads_per_batch``). For a Linear layer on 2-D inputs the row gradient is rank one, so dot
products ``g_i . g_j`` never need it expanded (:func:`gradient_parts`, used by TracIn-CP and gradient similarity:
timings in BENCHMARKS.md). Materialising full per-sample gradients this
way was measured no faster than ``vmap(grad)`` (``benchmarks/engine_micro.py``), so ``gradients.py`` keeps vmap.

:func:`supported` says whether a parameter subset can use it (every selected parameter is the weight or bias of an
``nn.Linear`` or of a zero-padded, ungrouped ``nn.Conv2d``, shared by no other module); :func:`gradient_parts`
returns ``None`` when the forward pass is not covered, and callers fall back to materialised gradients.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.func import vmap
from torch.nn import functional as F

from tda_clean.influence.params import ParamSpace

_UNFOLD_BYTES = 64 * 2**20  # unfolded conv inputs are processed in row blocks of at most this size


def _layer_ok(module: nn.Module) -> bool:
    if type(module) is nn.Linear:
        return True
    return (type(module) is nn.Conv2d and module.groups == 1 and module.padding_mode == "zeros"
            and not isinstance(module.padding, str))


def supported(space: ParamSpace) -> bool:
    """True when every selected parameter is a weight/bias of a supported layer (see module docstring) that no
    other module shares (tied weights would need the other uses' terms too)."""
    owners = space.owners()
    if not all(_layer_ok(owners[n.rsplit(".", 1)[0] if "." in n else ""]) and n.rsplit(".", 1)[-1] in ("weight", "bias")
               for n in space.names):
        return False
    uses: dict[int, int] = {}
    for _, param in space.model.named_parameters(remove_duplicate=False):
        uses[id(param)] = uses.get(id(param), 0) + 1
    return all(uses[id(t)] == 1 for t in space.tensors())


def _linear_grads(a: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = a.shape[0]
    a3, d3 = a.reshape(n, -1, a.shape[-1]), d.reshape(n, -1, d.shape[-1])
    return torch.einsum("nto,nti->noi", d3, a3), d3.sum(1)


def _conv_grads(module: nn.Conv2d, a: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = a.shape[0]
    D = d.reshape(n, d.shape[1], -1)                                    # (n, C_out, L)
    per_row = a.shape[1] * module.kernel_size[0] * module.kernel_size[1] * D.shape[2] * a.element_size()
    step = max(1, _UNFOLD_BYTES // max(per_row, 1))
    W = torch.empty(n, *module.weight.shape, dtype=d.dtype, device=d.device)
    for s in range(0, n, step):
        A = F.unfold(a[s : s + step], module.kernel_size, module.dilation, module.padding, module.stride)  # (b, C_in k k, L)
        W[s : s + step] = torch.einsum("nol,nkl->nok", D[s : s + step], A).reshape(-1, *module.weight.shape)
    return W, D.sum(2)


Records = dict[str, tuple[nn.Module, torch.Tensor, torch.Tensor]]  # owner name -> (layer, input a, delta)


def _record(space: ParamSpace, X: torch.Tensor, y: torch.Tensor,
            loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Records | None:
    """One forward of ``X`` (n, ...) with hooks on the selected layers, one backward of ``sum_i loss(logits_i, y_i)``
    to their outputs. ``None`` where the layer-wise rule would be wrong or cannot run: a model in training mode
    (batch statistics and dropout couple rows), a layer that ran more than once, was called with keyword inputs,
    ran without grad, or whose output was modified in place (e.g. ``ReLU(inplace=True)``)."""
    if space.model.training:
        return None
    owners = space.owners()
    seen: dict[str, list] = {name: [] for name in owners}

    def record(name: str):
        def hook(module, inputs, output):
            seen[name].append((inputs[0].detach() if inputs else None, output, output._version))
        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in owners.items()]
    try:
        theta = space.flat().requires_grad_(True)  # puts every layer output in the graph
        with torch.enable_grad():
            logits = space.forward(theta, X)
            for calls in seen.values():
                if len(calls) != 1 or calls[0][0] is None or not calls[0][1].requires_grad \
                        or calls[0][1]._version != calls[0][2]:
                    return None
            outputs = [seen[name][0][1] for name in owners]
            deltas = torch.autograd.grad(vmap(loss)(logits, y).sum(), outputs, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    return {name: (module, seen[name][0][0], torch.zeros_like(seen[name][0][1]) if d is None else d.detach())
            for (name, module), d in zip(owners.items(), deltas)}


# ------------------------------------------------------------------------ dot products without materialising G
@dataclass
class GradientParts:
    """Per-row gradients of ``n`` rows in a form for dot products (:func:`gradient_parts`).

    factors: per selected ``nn.Linear`` on 2-D inputs, ``(delta (n, out), a~ (n, k))``: the row's gradient over
             the layer is ``delta_i (x) a~_i`` with ``a~ = [a, 1]`` (weight and bias selected), ``a`` (weight only)
             or ``1`` (bias only).
    dense:   ``(n, q)`` materialised gradients of every other selected parameter (conv layers), or ``None``.
    """

    factors: list[tuple[torch.Tensor, torch.Tensor]]
    dense: torch.Tensor | None

    def rows_for_check(self) -> torch.Tensor:
        """(n, .) every number the parts hold, for a finite check naming rows."""
        return torch.cat([torch.cat(f, dim=1) for f in self.factors] + ([self.dense] if self.dense is not None else []),
                         dim=1)


def gradient_parts(space: ParamSpace, X: torch.Tensor, y: torch.Tensor,
                   loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> GradientParts | None:
    """The per-row gradients of ``loss(logits_i, y_i)`` over ``space``, Linear layers as rank-one factors (so
    ``g_i . g_j = sum_l (delta_i . delta_j)(a~_i . a~_j) + dense_i . dense_j``); ``None`` where
    the subset or the forward pass is not covered (:func:`supported`, :func:`_record`)."""
    if not supported(space):
        return None
    records = _record(space, X, y, loss)
    if records is None:
        return None
    selected = set(space.names)
    factors, dense = [], []
    for name, (module, a, delta) in records.items():
        prefix = f"{name}." if name else ""
        has_w, has_b = prefix + "weight" in selected, prefix + "bias" in selected
        if type(module) is nn.Linear and a.dim() == 2:
            parts = ([a] if has_w else []) + ([torch.ones(len(a), 1, dtype=a.dtype, device=a.device)] if has_b else [])
            factors.append((delta, torch.cat(parts, dim=1)))
            continue
        w, b = _linear_grads(a, delta) if type(module) is nn.Linear else _conv_grads(module, a, delta)
        dense += ([w.reshape(len(a), -1)] if has_w else []) + ([b.reshape(len(a), -1)] if has_b else [])
    return GradientParts(factors, torch.cat(dense, dim=1) if dense else None)


def part_dots(left: GradientParts, right: GradientParts) -> torch.Tensor:
    """``(m, n)`` gradient dot products ``g_i . g_j`` of two :class:`GradientParts` (m and n rows)."""
    out = sum((dl @ dr.T) * (al @ ar.T) for (dl, al), (dr, ar) in zip(left.factors, right.factors))
    if left.dense is not None:
        out = out + left.dense @ right.dense.T
    return out


def part_sq_norms(parts: GradientParts) -> torch.Tensor:
    """``(n,)`` squared gradient norms ``||g_i||^2``."""
    out = sum((d * d).sum(1) * (a * a).sum(1) for d, a in parts.factors)
    if parts.dense is not None:
        out = out + (parts.dense * parts.dense).sum(1)
    return out
