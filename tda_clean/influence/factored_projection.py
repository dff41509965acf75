"""Kronecker-factored (LoGra-style) random projection of per-sample gradients, from layer inputs and output gradients.

For an ``nn.Linear`` or ``nn.Conv2d`` layer the gradient of row i's loss over the layer's weight (bias as an extra
input column of ones) is the matrix ``M_i = sum_t g_t a_t^T`` of shape ``(out, inp)`` (``t`` over positions: once
for a Linear layer on 2-D inputs, output pixels for a conv, whose ``a_t`` is the unfolded input patch). It is
projected with ``P = P_out (x) P_in`` (``P_out`` (k_out, out), ``P_in`` (k_in, inp)):

    P_out M_i P_in^T = sum_t (P_out g_t)(P_in a_t)^T        (k_out, k_in), flattened row-major

so neither ``M_i`` nor a dense ``(p, k)`` matrix is ever formed: ``P_in a_t`` of a conv layer is itself a
convolution of the layer input with ``P_in`` reshaped as ``(k_in, C_in, kh, kw)`` kernels. With the row-major
flattening ``vec(M)`` of ``M``, ``vec(P_out M P_in^T) = (P_out (x) P_in) vec(M)``.

Entries of ``P_out``, ``P_in``: i.i.d. Rademacher (+-1) or standard Gaussian, scaled by ``1 / sqrt(k_side)`` so that
``E[P^T P] = I`` (inner products preserved in expectation); a side whose width is not reduced (``k_side = dim``)
is the identity. Each matrix is drawn once per layer from its own generator seeded with
``(seed, layer index, side)`` and kept for every block of rows. Widths: one ``r`` for all layers,
``k_out = min(out, r)``, ``k_in = min(inp, r)``, the largest ``r`` whose total ``K = sum k_out k_in <= k``
(``r = 1`` when even that exceeds ``k``).

Selected parameters of other module types (BatchNorm, LayerNorm, embeddings, ...) and a bias selected without
its weight are FROZEN here: they get no coordinates in the projection (:attr:`FactoredProjector.frozen` names
them); the dense projector covers every parameter.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Literal

import torch
from torch import nn
from torch.nn import functional as F

from tda_clean.errors import InputError
from tda_clean.influence import layer_grads
from tda_clean.influence.gradients import check_finite_rows, iter_per_sample_grads, rows_per_batch
from tda_clean.influence.params import ParamSpace
from tda_clean.influence.rows import TrainRows


@dataclass
class FactoredLayer:
    """One projected layer: ``owner`` module name, flat-vector slices of its weight / bias, ``out`` x ``inp``
    (``inp`` counts the bias column), projected widths ``k_out`` x ``k_in`` at ``offset`` in the projected row."""

    owner: str
    module: nn.Module
    w_slice: slice
    b_slice: slice | None
    out: int
    inp: int
    k_out: int
    k_in: int
    offset: int
    mats: dict = field(default_factory=dict, repr=False)  # (dtype, device) -> (P_out, P_in), drawn once

    @property
    def width(self) -> int:
        return self.k_out * self.k_in


def _widths(dims: list[tuple[int, int]], k: int) -> int:
    """The largest ``r`` with ``sum min(out, r) min(inp, r) <= k`` (1 if none)."""
    r, cap = 1, max((max(o, i) for o, i in dims), default=1)
    while r < cap and sum(min(o, r + 1) * min(i, r + 1) for o, i in dims) <= k:
        r += 1
    return r


class FactoredProjector:
    """``P = P_out (x) P_in`` per Linear / Conv2d layer of ``space`` to at most ``k`` dims in all (module docstring).

    ``k``: the total projected width actually used (``sum k_out k_in``); ``frozen``: names of selected parameters
    left out. :meth:`project` maps flat gradients ``(n, p)``; :meth:`iter_rows` projects per-sample gradients of
    training rows straight from hooked layer inputs and output gradients.
    """

    def __init__(self, space: ParamSpace, k: int, kind: Literal["rademacher", "gaussian"] = "rademacher",
                 seed: int = 0):
        if kind not in ("rademacher", "gaussian"):
            raise InputError(f"projection.kind: {kind!r} is not one of rademacher, gaussian")
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise InputError(f"projection.k: expected a positive integer, got {k!r}")
        self.space, self.kind, self.seed, self.requested_k = space, kind, seed, k
        self.p = space.p
        offsets = space.offsets()
        found = []
        for owner, module in space.owners().items():
            prefix = f"{owner}." if owner else ""
            if not layer_grads._layer_ok(module) or prefix + "weight" not in offsets:
                continue
            b = offsets.get(prefix + "bias")
            found.append((owner, module, offsets[prefix + "weight"], b, module.weight.shape[0],
                          module.weight[0].numel() + (b is not None)))
        if not found:
            raise InputError(f"projection.method: 'factored' needs a selected nn.Linear or nn.Conv2d weight "
                             f"(params={space.subset!r} selects none); use method 'dense'")
        r = _widths([(o, i) for *_, o, i in found], k)
        self.layers: list[FactoredLayer] = []
        offset = 0
        for owner, module, w, b, out, inp in found:
            layer = FactoredLayer(owner, module, w, b, out, inp, min(out, r), min(inp, r), offset)
            self.layers.append(layer)
            offset += layer.width
        self.k = offset
        prefix = lambda l: f"{l.owner}." if l.owner else ""  # noqa: E731
        covered = {prefix(l) + "weight" for l in self.layers} | {prefix(l) + "bias" for l in self.layers if l.b_slice}
        self.frozen = tuple(n for n in space.names if n not in covered)

    # ------------------------------------------------------------------ the random factors
    def _draw(self, index: int, side: int, k_side: int, dim: int) -> torch.Tensor:
        if k_side == dim:
            return torch.eye(dim, dtype=torch.float64)
        gen = torch.Generator(device="cpu").manual_seed(self.seed * 1_000_003 + 2 * index + side)
        if self.kind == "rademacher":
            P = torch.randint(0, 2, (k_side, dim), generator=gen, dtype=torch.int8).double() * 2 - 1
        else:
            P = torch.randn(k_side, dim, generator=gen, dtype=torch.float64)
        return P / math.sqrt(k_side)

    def factors(self, layer: FactoredLayer, dtype: torch.dtype = torch.float64,
                device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """``(P_out (k_out, out), P_in (k_in, inp))`` of ``layer`` (scaled), drawn once and cached per dtype/device."""
        key = (dtype, str(device))
        if key not in layer.mats:
            i = self.layers.index(layer)
            base = layer.mats.get((torch.float64, "cpu")) or (self._draw(i, 0, layer.k_out, layer.out),
                                                              self._draw(i, 1, layer.k_in, layer.inp))
            layer.mats[(torch.float64, "cpu")] = base
            layer.mats[key] = tuple(m.to(dtype=dtype, device=device) for m in base)
        return layer.mats[key]

    def matrix(self) -> torch.Tensor:
        """The explicit ``(K, p)`` float64 matrix (block rows ``P_out (x) P_in`` in the flat parameter layout, zero
        columns for frozen parameters); for tests and small models."""
        out = torch.zeros(self.k, self.p, dtype=torch.float64)
        for l in self.layers:
            Po, Pi = self.factors(l)
            kron = torch.kron(Po, Pi).reshape(l.width, l.out, l.inp)                 # acts on M (out, inp)
            rows = slice(l.offset, l.offset + l.width)
            nb = l.inp - (l.b_slice is not None)
            out[rows, l.w_slice] = kron[:, :, :nb].reshape(l.width, -1)
            if l.b_slice is not None:
                out[rows, l.b_slice] = kron[:, :, -1]
        return out

    # ------------------------------------------------------------------ projections
    def project(self, G: torch.Tensor) -> torch.Tensor:
        """Flat gradients ``G`` (n, p) -> ``(n, K)``: per layer ``P_out M P_in^T`` flattened (frozen parts dropped)."""
        if G.dim() != 2 or G.shape[1] != self.p:
            raise InputError(f"projection: expected gradients of shape (n, {self.p}), got {tuple(G.shape)}")
        n = G.shape[0]
        out = torch.empty(n, self.k, dtype=G.dtype, device=G.device)
        for l in self.layers:
            M = G[:, l.w_slice].reshape(n, l.out, -1)
            if l.b_slice is not None:
                M = torch.cat([M, G[:, l.b_slice].reshape(n, l.out, 1)], dim=2)
            Po, Pi = self.factors(l, G.dtype, G.device)
            out[:, l.offset : l.offset + l.width] = (Po @ M @ Pi.T).reshape(n, -1)
        return out

    def project_layer(self, l: FactoredLayer, a: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """``(n, k_out, k_in)`` = ``sum_t (P_out g_t)(P_in a_t)^T`` from the layer input ``a`` and the gradient
        ``delta`` of the summed row losses with respect to the layer output (same shape as the output)."""
        n = a.shape[0]
        Po, Pi = self.factors(l, delta.dtype, delta.device)
        if isinstance(l.module, nn.Conv2d):
            m = l.module
            kernel = Pi[:, : l.inp - (l.b_slice is not None)].reshape(l.k_in, *m.weight.shape[1:])
            A = F.conv2d(a.to(delta.dtype), kernel, Pi[:, -1] if l.b_slice is not None else None,
                         m.stride, m.padding, m.dilation).flatten(2)                     # (n, k_in, L)
            D = Po @ delta.reshape(n, l.out, -1)                                          # (n, k_out, L)
            return D @ A.transpose(1, 2)
        a3, d3 = a.reshape(n, -1, a.shape[-1]).to(delta.dtype), delta.reshape(n, -1, l.out)
        A = a3 @ Pi[:, : a3.shape[-1]].T                                                  # (n, T, k_in)
        if l.b_slice is not None:
            A = A + Pi[:, -1]
        D = d3 @ Po.T                                                                     # (n, T, k_out)
        if D.shape[1] == 1:
            return D[:, 0, :, None] * A[:, 0, None, :]
        return D.transpose(1, 2) @ A

    def iter_rows(self, rows: TrainRows, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *,
                  memory_mb: float = 256.0, span: slice | None = None,
                  check_finite: bool = True) -> Iterator[tuple[slice, torch.Tensor]]:
        """Yield ``(rows_b, PG)``: ``PG`` (len(rows_b), K) projected per-sample gradients of ``loss(logits_i, y_i)``.

        Blocks as :func:`~tda_clean.influence.gradients.iter_per_sample_grads` (same rows per block). One hooked
        forward / backward per block (:func:`layer_grads._record`); where hooks do not cover the forward pass
        (train mode, a layer run twice, an in-place op on a layer output) the block's gradients are materialised
        and projected with :meth:`project` instead (same result up to rounding, slower).
        """
        space = self.space
        param = next(space.model.parameters())
        size = rows_per_batch(space.p, space.flat().element_size(), memory_mb, rows.row_elems)
        for sl, Xb, yb in rows.batches(size, span, param.device, param.dtype):
            records = layer_grads._record(space, Xb, yb, loss)
            if records is None:
                (_, G), = iter_per_sample_grads(space, Xb, yb, loss=loss, batch_size=len(yb), check_finite=False)
                PG = self.project(G)
            else:
                PG = torch.empty(len(yb), self.k, dtype=param.dtype, device=param.device)
                for l in self.layers:
                    _, a, delta = records[l.owner]
                    PG[:, l.offset : l.offset + l.width] = self.project_layer(l, a, delta).reshape(len(yb), -1)
            if check_finite:
                check_finite_rows(PG, "projected per-sample gradients", offset=sl.start)
            yield sl, PG

    def describe(self) -> dict:
        return {"method": "factored", "k": self.k, "requested_k": self.requested_k, "kind": self.kind,
                "seed": self.seed, "layers": {l.owner or "(root)": [l.k_out, l.k_in] for l in self.layers},
                "frozen": list(self.frozen)}
