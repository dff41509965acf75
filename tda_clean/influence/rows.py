"""Training rows as a stream of batches: in-memory arrays, memory-mapped ``.npy`` files, or an iterable of batches.

Every pass of the influence engine over the training set (curvature fits, K-FAC/EK-FAC factor passes, per-sample
gradients, scoring) reads rows through :meth:`TrainRows.batches`, so the features ``X`` (n, ...) are never turned
into one tensor: only one batch of ``size`` rows is converted at a time (to the model's device and float dtype).

* :class:`ArrayRows` -- ``X`` (n, ...) a numpy array, a ``np.memmap`` (``np.load(path, mmap_mode="r")``) or a
  tensor, ``y`` (n,) labels. Random access (shards, stochastic LiSSA). For a read-only memmap the pages of a batch
  are handed back to the kernel once the batch is copied (``madvise(MADV_DONTNEED)``; the page cache keeps them),
  so the process's resident memory does not grow with n.
* :class:`BatchRows` -- a re-iterable of ``(X_b, y_b)`` batches (e.g. a ``torch.utils.data.DataLoader`` with
  ``shuffle=False``), read in order on every pass and re-cut into blocks of the requested size, so block
  boundaries (and therefore every sum over blocks) are the same as :class:`ArrayRows` over the same rows. A shard
  (``rows=``, contiguous) reads past the batches before it; random access is refused.

Labels are small ((n,) int64) and are kept in memory. :func:`as_rows` builds the right source from what the
engine is given (``IndexedDataset``, ``(X, y)``, a ``DataLoader`` or a :class:`TrainRows`).
"""
from __future__ import annotations

import ctypes
import mmap
from abc import ABC, abstractmethod
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from tda_clean.errors import InputError

Block = tuple[slice, torch.Tensor, torch.Tensor]  # (absolute rows, X_b (b, ...), y_b (b,) long)


def _libc() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - not a POSIX platform
        return None


_LIBC = _libc()
_PAGE = mmap.PAGESIZE
_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)


def release_pages(a: np.ndarray) -> None:
    """Drop the resident pages of a contiguous memory-mapped array (view) ``a`` from this process
    (``madvise(MADV_DONTNEED)``): read-only (``"r"``) and shared writable (``"r+"``, ``"w+"``, flushed first) maps
    lose nothing -- the page cache keeps the data and the next access re-reads it. No-op for anything else
    (in-memory arrays, copy-on-write ``"c"`` maps, whose private pages would be lost)."""
    if _LIBC is None or _DONTNEED is None or not isinstance(a, np.memmap) or a.size == 0:
        return
    if getattr(a, "mode", None) not in ("r", "r+", "w+") or not (a.flags.c_contiguous or a.flags.f_contiguous):
        return
    start = a.ctypes.data
    first = start - start % _PAGE
    end = start + a.nbytes
    end += -end % _PAGE  # a read-only page shared with a neighbouring batch is simply re-read later
    _LIBC.madvise(ctypes.c_void_p(first), ctypes.c_size_t(end - first), _DONTNEED)


def _memmap_location(a: Any) -> dict | None:
    """File name, byte offset, shape and dtype of a C-contiguous read-only memmap (view), or None."""
    if not isinstance(a, np.memmap) or getattr(a, "mode", None) != "r" or not a.flags.c_contiguous:
        return None
    mm, filename = getattr(a, "_mmap", None), getattr(a, "filename", None)
    if mm is None or filename is None:
        return None
    base = np.frombuffer(mm, dtype=np.uint8).ctypes.data  # address of the mapping's first byte
    start = a.offset - a.offset % mmap.ALLOCATIONGRANULARITY  # file offset where numpy's mapping begins
    return {"kind": "memmap", "filename": str(filename), "offset": int(a.ctypes.data - base + start),
            "shape": list(a.shape), "dtype": a.dtype.str}


class TrainRows(ABC):
    """``n`` training rows read in blocks; see the module docstring.

    n:          number of rows.
    row_shape:  feature shape of one row (``X.shape[1:]``).
    labels:     (n,) int64 numpy labels.
    """

    n: int

    @property
    @abstractmethod
    def row_shape(self) -> tuple[int, ...]:
        ...

    @property
    @abstractmethod
    def labels(self) -> np.ndarray:
        ...

    @property
    def row_elems(self) -> int:
        return int(np.prod(self.row_shape)) if self.row_shape else 1

    @abstractmethod
    def batches(self, size: int, rows: slice | None = None, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32) -> Iterator[Block]:
        """Yield ``(rows_b, X_b, y_b)`` for consecutive blocks of ``size`` rows (the last one shorter) of ``rows``
        (default all), ``rows_b`` their absolute positions; floating features in ``dtype`` on ``device``."""

    def take(self, index: np.ndarray, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows at positions ``index`` (k,) as tensors (random access; sources that only stream refuse)."""
        raise InputError(f"{type(self).__name__}: random row access (stochastic LiSSA) needs an array source, not a "
                         "stream of batches")

    def materialise(self, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """All rows as two tensors ``X`` (n, ...), ``y`` (n,): for small data sets and the dense reference paths."""
        parts = [(X, y) for _, X, y in self.batches(max(self.n, 1), device=device, dtype=dtype)]
        if not parts:
            return torch.zeros(0, *self.row_shape, dtype=dtype, device=device), torch.zeros(0, dtype=torch.long)
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _range(self, rows: slice | None) -> range:
        return range(self.n)[rows] if rows is not None else range(self.n)


def _to_tensor(a: Any, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """One batch -> tensor: floating / bool features in ``dtype``, integer ones (token ids) long."""
    from tda_clean.models.trainer import model_input

    return model_input(a, torch.device(device), dtype)


class ArrayRows(TrainRows):
    """Rows of an array-like ``X`` (n, ...) (numpy, ``np.memmap`` or tensor) with labels ``y`` (n,)."""

    def __init__(self, X: Any, y: Any):
        if len(X) != len(y):
            raise InputError(f"training rows: X has {len(X)} rows but y has {len(y)} labels")
        self.X = X
        self._y = np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y).astype(np.int64, copy=False)
        self.n = len(X)

    @property
    def row_shape(self) -> tuple[int, ...]:
        return tuple(self.X.shape[1:])

    @property
    def labels(self) -> np.ndarray:
        return self._y

    def __getstate__(self) -> dict:
        """Pickling (Dask workers): a read-only memmap travels as its file name and byte offset, not its data."""
        state = dict(self.__dict__)
        where = _memmap_location(self.X)
        if where is not None:
            state["X"] = where
        return state

    def __setstate__(self, state: dict) -> None:
        X = state["X"]
        if isinstance(X, dict) and X.get("kind") == "memmap":
            state["X"] = np.memmap(X["filename"], dtype=np.dtype(X["dtype"]), mode="r", offset=X["offset"],
                                   shape=tuple(X["shape"]), order="C")
        self.__dict__.update(state)

    def _read(self, sl: slice, device, dtype) -> torch.Tensor:
        part = self.X[sl]
        if not isinstance(part, np.memmap):
            return _to_tensor(part, device, dtype)
        t = _to_tensor(np.array(part), device, dtype)  # a copy of the batch: the mapping's pages can then go
        release_pages(part)
        return t

    def batches(self, size, rows=None, device="cpu", dtype=torch.float32):
        span = self._range(rows)
        for a in range(span.start, span.stop, max(1, size)):
            sl = slice(a, min(span.stop, a + size))
            yield sl, self._read(sl, device, dtype), torch.as_tensor(self._y[sl], device=device)

    def take(self, index, device="cpu", dtype=torch.float32):
        index = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index)
        X = self.X[torch.as_tensor(index)] if isinstance(self.X, torch.Tensor) else self.X[index]
        release_pages(self.X)  # a gather from a memmap touched scattered pages: hand them all back
        return _to_tensor(X, device, dtype), torch.as_tensor(self._y[index], device=device)


class BatchRows(TrainRows):
    """Rows from a re-iterable of ``(X_b, y_b)`` batches read in order (a ``DataLoader`` with ``shuffle=False``,
    a list, or a zero-argument callable returning a fresh iterator). ``n``: the row count (default
    ``len(loader.dataset)`` when there is one, else counted in one pass)."""

    def __init__(self, source: Iterable | Callable[[], Iterable], n: int | None = None):
        self._source = source
        self._labels: np.ndarray | None = None
        self._shape: tuple[int, ...] | None = None
        if n is None:
            dataset = getattr(source, "dataset", None)
            n = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None
        self.n = int(n) if n is not None else sum(len(b[1]) for b in self._iter())

    def _iter(self) -> Iterator[tuple[Any, Any]]:
        it = self._source() if callable(self._source) and not hasattr(self._source, "__iter__") else self._source
        for batch in it:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise InputError("training batches: each batch must be a pair (X_b, y_b)")
            yield batch[0], batch[1]

    @property
    def row_shape(self) -> tuple[int, ...]:
        if self._shape is None:
            for X, _ in self._iter():
                self._shape = tuple(X.shape[1:])
                break
            else:
                self._shape = ()
        return self._shape

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            self._labels = np.concatenate([np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y, dtype=np.int64)
                                           for _, y in self._iter()]) if self.n else np.zeros(0, np.int64)
            if len(self._labels) != self.n:
                raise InputError(f"training batches: {len(self._labels)} rows read, {self.n} announced")
        return self._labels

    def batches(self, size, rows=None, device="cpu", dtype=torch.float32):
        span = self._range(rows)
        size = max(1, size)
        pending_X: list[torch.Tensor] = []
        pending_y: list[torch.Tensor] = []
        have, pos, start = 0, 0, span.start  # rows buffered, absolute position read so far, next block start
        for Xb, yb in self._iter():
            b = len(yb)
            lo, hi = max(pos, span.start), min(pos + b, span.stop)
            if hi > lo:
                pending_X.append(_to_tensor(Xb[lo - pos:hi - pos], device, dtype))
                pending_y.append(torch.as_tensor(np.asarray(yb[lo - pos:hi - pos]), device=device).long())
                have += hi - lo
            pos += b
            while have >= size or (have and pos >= span.stop):
                X, y = torch.cat(pending_X), torch.cat(pending_y)
                take = min(size, have)
                yield slice(start, start + take), X[:take], y[:take]
                pending_X, pending_y = ([X[take:]], [y[take:]]) if take < have else ([], [])
                have -= take
                start += take
            if pos >= span.stop:
                break
        if start != span.stop:
            raise InputError(f"training batches: ended after {pos} rows, {self.n} announced")


def as_rows(train: Any) -> TrainRows:
    """``TrainRows`` / ``IndexedDataset`` / ``(X, y)`` / ``DataLoader`` -> a :class:`TrainRows`."""
    if isinstance(train, TrainRows):
        return train
    if hasattr(train, "X") and hasattr(train, "y"):
        return ArrayRows(train.X, train.y)
    if isinstance(train, (tuple, list)) and len(train) == 2:
        return ArrayRows(train[0], train[1])
    if isinstance(train, torch.utils.data.DataLoader):
        return BatchRows(train)
    raise InputError(f"train: expected an IndexedDataset, a tuple (X, y), a DataLoader or TrainRows, "
                     f"got {type(train).__name__}")
