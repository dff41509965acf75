"""Per-sample gradients over a parameter subset, with ``torch.func`` (``functional_call`` + ``vmap(grad)``).

``per_sample_grads(model, X, y)`` returns ``G`` of shape ``(n, p)`` with ``G[i] = d loss(f(x_i; theta), y_i) / d theta``
over the :class:`~tda_clean.influence.params.ParamSpace`; ``loss`` defaults to the unregularised cross-entropy
of one row (the ``g_i`` of docs/methods.md). Rows are processed in batches sized from a memory budget, so the
result does not depend on the budget. ``per_sample_grads_loop`` is the plain autograd reference for tests.

Every result is checked row-wise: NaN/inf gradients raise :class:`InputError` naming the row positions.
Streams of more than one block show a progress bar on an interactive terminal (stderr), never in logs or CI.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch
from torch.func import grad, vmap

from tda_clean.errors import InputError
from tda_clean.influence.params import ParamSpace
from tda_clean.influence.rows import ArrayRows, TrainRows
from tda_clean.objective import TrainingObjective
from tda_clean.progress import progress_bar

# row loss: (logits (C,), label () long) -> scalar
RowLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

cross_entropy_row: RowLoss = TrainingObjective().row  # cross-entropy of one row: logits (C,), label () -> scalar


def as_tensors(model_or_space, X, y=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Numpy / tensor inputs -> tensors on the model's device, float features in the model's dtype, labels long."""
    from tda_clean.models.trainer import model_input

    model = model_or_space.model if isinstance(model_or_space, ParamSpace) else model_or_space
    param = next(model.parameters())
    Xt = model_input(X, param.device, param.dtype)  # integer inputs (token ids) stay integer
    yt = None
    if y is not None:
        yt = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y, device=param.device).long()
    return Xt, yt


def rows_per_batch(p: int, itemsize: int, memory_mb: float, row_elems: int = 0) -> int:
    """Rows whose gradients (and ~3 temporaries of the same size) fit in ``memory_mb``."""
    per_row = (4 * p + 8 * max(row_elems, 1)) * itemsize
    return max(1, int(memory_mb * 2**20 // per_row))


def check_finite_rows(G: torch.Tensor, what: str = "per-sample gradients", offset: int = 0) -> None:
    """Raise InputError naming the row positions (``offset`` + row) of ``G`` (n, ...) holding NaN or inf."""
    flat = G.reshape(len(G), -1)
    if bool(torch.isfinite(flat.sum(dim=1)).all()):  # NaN/inf propagate into the row sum: one cheap pass
        return
    bad = ~torch.isfinite(flat).all(dim=1)  # exact check (a row sum can also overflow)
    if bool(bad.any()):
        rows = (torch.nonzero(bad).flatten() + offset).tolist()
        shown = ", ".join(map(str, rows[:10])) + (f", ... ({len(rows)} rows)" if len(rows) > 10 else "")
        raise InputError(f"{what} are NaN/inf for row positions [{shown}]: check those rows' features and labels "
                         "(and the model's parameters)")


def iter_per_sample_grads(
    space: ParamSpace, X, y=None, *, loss: RowLoss = cross_entropy_row, memory_mb: float = 256.0,
    batch_size: int | None = None, check_finite: bool = True, rows: slice | None = None,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield ``(rows_b, G_rows)`` blocks: ``G_rows`` (len(rows_b), p) per-sample gradients of ``loss``.

    ``X`` (n, ...) array / memmap / tensor with labels ``y`` (n,), or a :class:`TrainRows` (then ``y``, when
    given, overrides its labels). Rows are read one block at a time (never the whole ``X``); ``rows`` restricts
    them to one contiguous range and the yielded slices are absolute row positions. ``batch_size`` overrides
    the rows-per-block derived from ``memory_mb``.
    """
    source = X if isinstance(X, TrainRows) else ArrayRows(X, y)
    override = None if y is None or not isinstance(X, TrainRows) else np.asarray(y)
    param = next(space.model.parameters())
    theta = space.flat()
    size = batch_size or rows_per_batch(space.p, theta.element_size(), memory_mb, source.row_elems)
    span = range(source.n)[rows] if rows is not None else range(source.n)

    def one(th: torch.Tensor, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return loss(space.forward(th, x.unsqueeze(0))[0], label)

    per_row = vmap(grad(one), in_dims=(None, 0, 0))
    with progress_bar(len(span), "per-sample gradients", "row", worth_showing=len(span) > size) as bar:
        for sl, Xb, yb in source.batches(size, rows, param.device, param.dtype):
            if override is not None:
                yb = torch.as_tensor(override[sl], device=param.device).long()
            with torch.no_grad():
                G = per_row(theta, Xb, yb)
            if check_finite:
                check_finite_rows(G, offset=sl.start)
            bar.update(sl.stop - sl.start)
            yield sl, G


def per_sample_grads(
    space: ParamSpace, X, y, *, loss: RowLoss = cross_entropy_row, memory_mb: float = 256.0,
    batch_size: int | None = None, check_finite: bool = True,
) -> torch.Tensor:
    """Per-sample gradients ``G`` (n, p) of ``loss(f(x_i), y_i)`` w.r.t. the subset; see module docstring."""
    blocks = [G for _, G in iter_per_sample_grads(space, X, y, loss=loss, memory_mb=memory_mb,
                                                  batch_size=batch_size, check_finite=False)]
    if not blocks:
        return torch.zeros(0, space.p, dtype=space.flat().dtype, device=space.flat().device)
    G = torch.cat(blocks)
    if check_finite:
        check_finite_rows(G)
    return G


def per_sample_grads_loop(space: ParamSpace, X, y, *, loss: RowLoss = cross_entropy_row) -> torch.Tensor:
    """Reference implementation: one ``torch.autograd.grad`` call per row. ``(n, p)``. Slow; for tests."""
    Xt, yt = as_tensors(space, X, y)
    params = space.tensors()
    rows = []
    for i in range(len(Xt)):
        value = loss(space.model(Xt[i : i + 1])[0], yt[i])
        grads = torch.autograd.grad(value, params, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)]))
    G = torch.stack(rows) if rows else torch.zeros(0, space.p)
    check_finite_rows(G)
    return G
