"""Reductions of an influence score matrix computed one block of training rows at a time.

The engine's scoring passes (``InfluenceEngine.scores`` / ``scores_for``) produce the (m, n) float64 matrix
``S[j, i]`` (query / objective output j, training row i; sign convention of the engine: POSITIVE = removing row i
INCREASES output j) in column blocks ``S[:, rows]``. A reducer consumes the blocks in order and keeps only what a
detector needs, so nothing of size m x n is held unless asked:

* :class:`DenseScores` -- the whole (m, n) matrix (the reference; the default).
* :class:`RowSum` / :class:`RowMean` -- (n,) per-row sum / mean over the m outputs (``harmful``'s score).
* :class:`TopK` -- per output, the ``k`` rows with the largest (or smallest) scores: (m, k) values and indices.
* :class:`DiskScores` -- the (m, n) matrix written block by block to a ``.npy`` file (read back memory-mapped).
* :class:`Several` -- several of the above from one scoring pass (``result()`` -> a tuple of their results).

Protocol: ``start(m, span)`` once (``span`` the range of training rows scored, e.g. one shard), then
``add(rows, block)`` for consecutive absolute row slices ``rows`` with ``block`` (m, len(rows)) float64, then
``result()``. Every reducer gives exactly the numbers of reducing the dense matrix (same float operations per
column), so streamed and dense paths agree to the last bit.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tda_clean.errors import InputError
from tda_clean.influence.rows import release_pages


class ScoreReducer(ABC):
    """Consumes (m, b) column blocks of the score matrix (see module docstring)."""

    def start(self, m: int, span: range) -> None:
        self.m, self.span = int(m), span

    def _local(self, rows: slice) -> slice:
        return slice(rows.start - self.span.start, rows.stop - self.span.start)

    @abstractmethod
    def add(self, rows: slice, block: torch.Tensor | np.ndarray) -> None:
        """Consume the scores ``block`` (m, len(rows)) of training rows ``rows`` (absolute positions)."""

    @abstractmethod
    def result(self) -> Any:
        ...


def _np(block: torch.Tensor | np.ndarray) -> np.ndarray:
    return block.double().cpu().numpy() if isinstance(block, torch.Tensor) else np.asarray(block, dtype=np.float64)


class DenseScores(ScoreReducer):
    """The full matrix: ``result()`` -> (m, len(span)) float64."""

    def start(self, m, span):
        super().start(m, span)
        self.out = np.zeros((self.m, len(span)))

    def add(self, rows, block):
        self.out[:, self._local(rows)] = _np(block)

    def result(self) -> np.ndarray:
        return self.out


class RowSum(ScoreReducer):
    """Per-row sum over the outputs: ``result()`` -> (len(span),) ``S.sum(axis=0)``."""

    def start(self, m, span):
        super().start(m, span)
        self.out = np.zeros(len(span))

    def add(self, rows, block):
        self.out[self._local(rows)] = _np(block).sum(axis=0)

    def result(self) -> np.ndarray:
        return self.out


class RowMean(RowSum):
    """Per-row mean over the outputs: ``result()`` -> (len(span),) ``S.mean(axis=0)``."""

    def add(self, rows, block):
        self.out[self._local(rows)] = _np(block).mean(axis=0)


class TopK(ScoreReducer):
    """Per output j, the ``k`` training rows with the largest scores (``largest=False``: the smallest, e.g. the
    most helpful rows under the removal sign convention). ``result()`` -> ``(values (m, k') float64,
    indices (m, k') int64)`` sorted best first, ``k' = min(k, len(span))``, indices absolute row positions.
    Ties are broken by the lower row index (within the ``k`` candidates each block contributes)."""

    def __init__(self, k: int, largest: bool = True):
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise InputError(f"top-k: k must be a positive integer, got {k!r}")
        self.k, self.largest = k, largest

    def start(self, m, span):
        super().start(m, span)
        self.values = np.zeros((self.m, 0))
        self.indices = np.zeros((self.m, 0), dtype=np.int64)

    def add(self, rows, block):
        b = _np(block)
        key = b if self.largest else -b
        idx = np.broadcast_to(np.arange(rows.start, rows.stop, dtype=np.int64), key.shape)
        if key.shape[1] > self.k:  # candidates of this block: its k best per output
            part = np.argpartition(-key, self.k - 1, axis=1)[:, : self.k]
            key, idx = np.take_along_axis(key, part, 1), np.take_along_axis(idx, part, 1)
        key = np.concatenate([self.values if self.largest else -self.values, key], axis=1)
        idx = np.concatenate([self.indices, idx], axis=1)
        order = np.lexsort((idx, -key), axis=1)[:, : self.k]
        kept = np.take_along_axis(key, order, 1)
        self.values = kept if self.largest else -kept
        self.indices = np.take_along_axis(idx, order, 1)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        return self.values, self.indices


class Several(ScoreReducer):
    """Feed the same blocks to each of ``reducers`` (one scoring pass); ``result()`` -> tuple of their results."""

    def __init__(self, *reducers: ScoreReducer):
        self.reducers = reducers

    def start(self, m, span):
        for r in self.reducers:
            r.start(m, span)

    def add(self, rows, block):
        block = _np(block)
        for r in self.reducers:
            r.add(rows, block)

    def result(self) -> tuple:
        return tuple(r.result() for r in self.reducers)


def dense_top_k(S: np.ndarray, k: int, largest: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """:class:`TopK` of a dense (m, n) matrix (the reference): best first, ties by the lower row index."""
    key = S if largest else -S
    order = np.lexsort((np.broadcast_to(np.arange(S.shape[1]), S.shape), -key), axis=1)[:, :k]
    return np.take_along_axis(S, order, 1), order.astype(np.int64)


class DiskScores(ScoreReducer):
    """Write the (m, len(span)) float64 matrix block by block to the ``.npy`` file ``path`` (created; an existing
    file is refused), in column-major order so each block is one contiguous write whose pages are handed back
    after flushing; ``result()`` -> the file opened read-only as a memory map, shape (m, len(span))."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def start(self, m, span):
        super().start(m, span)
        if self.path.exists():
            raise InputError(f"scores file {self.path}: already exists; give a new path")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._out = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float64, shape=(self.m, len(span)),
                                               fortran_order=True)

    def add(self, rows, block):
        view = self._out[:, self._local(rows)]
        view[...] = _np(block)
        self._out.flush()
        release_pages(view)

    def result(self) -> np.ndarray:
        del self._out
        return np.load(self.path, mmap_mode="r")
