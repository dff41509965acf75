"""Seeded random projection of gradients to ``k`` dimensions (TRAK-style Johnson-Lindenstrauss sketch).

``RandomProjector(p, k, kind, seed)`` maps ``G`` (n, p) -> ``G @ P / sqrt(k)`` (n, k), with ``P`` (p, k) entries
i.i.d. Rademacher (+-1) or standard Gaussian, drawn in row blocks of ``block`` parameters, each from its own
generator seeded with ``(seed, block index)``, so the result is a function of ``(p, k, kind, seed, block)`` only --
not of how many gradient rows are projected at once. Drawn blocks are kept (per dtype and device) while the whole
matrix fits in ``cache_mb``, so streaming many blocks of rows draws ``P`` once; a larger ``P`` is re-drawn block by
block on every call rather than held whole.
Inner products are preserved in expectation: ``E[(Pg)^T (Pg')] / k = g^T g'``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from tda_clean.errors import InputError


@dataclass(frozen=True)
class RandomProjector:
    """Seeded ``p -> k`` projection (see module docstring). ``block``: parameter rows generated at a time."""

    p: int
    k: int
    kind: Literal["rademacher", "gaussian"] = "rademacher"
    seed: int = 0
    block: int = 4096
    cache_mb: float = 256.0
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in ("rademacher", "gaussian"):
            raise InputError(f"projection.kind: {self.kind!r} is not one of rademacher, gaussian")
        for key in ("p", "k", "block"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InputError(f"projection.{key}: expected a positive integer, got {value!r}")

    def _block(self, index: int, rows: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (index, dtype, str(device))
        if key in self._cache:
            return self._cache[key]
        P = self._draw(index, rows, dtype, device)
        if self.p * self.k * P.element_size() <= self.cache_mb * 2**20:
            self._cache[key] = P
        return P

    def _draw(self, index: int, rows: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        gen = torch.Generator(device="cpu").manual_seed(self.seed * 1_000_003 + index)
        if self.kind == "rademacher":
            P = torch.randint(0, 2, (rows, self.k), generator=gen, dtype=torch.int8).to(dtype) * 2 - 1
        else:
            P = torch.randn(rows, self.k, generator=gen, dtype=torch.float64).to(dtype)
        return P.to(device)

    def matrix(self, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> torch.Tensor:
        """The full ``(p, k)`` matrix (unscaled); for tests and small p."""
        return torch.cat([self._block(b, min(self.block, self.p - s), dtype, torch.device(device))
                          for b, s in enumerate(range(0, self.p, self.block))])

    def project(self, G: torch.Tensor) -> torch.Tensor:
        """``G`` (n, p) -> ``(n, k)`` = ``G @ P / sqrt(k)``."""
        if G.dim() != 2 or G.shape[1] != self.p:
            raise InputError(f"projection: expected gradients of shape (n, {self.p}), got {tuple(G.shape)}")
        out = torch.zeros(G.shape[0], self.k, dtype=G.dtype, device=G.device)
        for b, s in enumerate(range(0, self.p, self.block)):
            rows = min(self.block, self.p - s)
            out += G[:, s : s + rows] @ self._block(b, rows, G.dtype, G.device)
        return out / math.sqrt(self.k)

    def describe(self) -> dict:
        return {"p": self.p, "k": self.k, "kind": self.kind, "seed": self.seed, "block": self.block}
