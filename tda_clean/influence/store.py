"""Chunked, memory-mapped on-disk store of per-sample gradients (n, p), resumable and fingerprint-checked.

Layout of a store directory::

    meta.json      {"fingerprint", "n", "p", "dtype", "chunk_rows", "info"}
    grads.npy      (n, p) array opened with numpy's memmap
    done.npy       (n_chunks,) bool: which chunks have been written

``GradientStore.open(path, fingerprint=..., n=..., p=...)`` creates the store or reopens an existing one; an
existing store whose fingerprint, shape, dtype or chunking differ is refused with :class:`InputError` (stale
gradients of another model or data set must never be reused silently). The fingerprint should cover the model
parameters, the training data, the parameter subset and any projection (``store_fingerprint``).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterator

import numpy as np

from tda_clean.errors import InputError
from tda_clean.influence.rows import ArrayRows, TrainRows, release_pages


def rows_digest(rows: TrainRows) -> np.ndarray | str:
    """What :func:`store_fingerprint` hashes for training rows: the array itself (in-memory, memmap; a tensor as
    numpy) or, for a stream of batches, a hash of the streamed float32 features."""
    if isinstance(rows, ArrayRows):
        X = rows.X
        return X.detach().cpu().numpy() if hasattr(X, "detach") else np.asarray(X) if not isinstance(X, np.ndarray) else X
    h = hashlib.sha256()
    for _, Xb, _ in rows.batches(4096):
        h.update(Xb.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


_HASH_BYTES = 32 * 2**20  # arrays are hashed in row blocks of about this size (same digest as one update)


def store_fingerprint(*parts: object) -> str:
    """Stable 16-hex-digit hash of strings / numbers / numpy arrays / dicts (json-able). Arrays (memmaps too) are
    read in row blocks, and a memmap's pages are handed back after each block (never the whole array in RAM)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(str((part.shape, part.dtype.str)).encode())
            step = max(1, _HASH_BYTES // max(1, part[:1].nbytes)) if part.ndim else 1
            for a in range(0, max(len(part), 1) if part.ndim else 1, step):
                block = part[a:a + step] if part.ndim else part
                h.update(np.ascontiguousarray(block).tobytes())
                release_pages(block)
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"|")
    return h.hexdigest()[:16]


class GradientStore:
    """A ``(n, p)`` gradient matrix on disk, written and read in chunks of ``chunk_rows`` rows."""

    def __init__(self, path: Path, meta: dict, mode: str):
        self.path = path
        self.meta = meta
        self.n, self.p, self.chunk_rows = meta["n"], meta["p"], meta["chunk_rows"]
        self.fingerprint = meta["fingerprint"]
        self._grads = np.load(path / "grads.npy", mmap_mode=mode)
        self._done = np.load(path / "done.npy")

    @classmethod
    def open(cls, path: str | Path, *, fingerprint: str, n: int, p: int, dtype: str = "float32",
             chunk_rows: int = 4096, info: dict | None = None) -> "GradientStore":
        """Create or reopen the store at ``path``; refuse (InputError) one built for something else."""
        path = Path(path)
        meta = {"fingerprint": fingerprint, "n": int(n), "p": int(p), "dtype": str(np.dtype(dtype)),
                "chunk_rows": int(chunk_rows), "info": info or {}}
        meta_file = path / "meta.json"
        if meta_file.is_file():
            old = json.loads(meta_file.read_text())
            for key in ("fingerprint", "n", "p", "dtype", "chunk_rows"):
                if old.get(key) != meta[key]:
                    raise InputError(
                        f"gradient store {path}: built for {key}={old.get(key)!r}, requested {meta[key]!r} -- it holds "
                        "gradients of another model, data set or setting; use a fresh directory or delete it"
                    )
            return cls(path, old, "r+")
        if chunk_rows <= 0 or n <= 0 or p <= 0:
            raise InputError(f"gradient store {path}: n, p and chunk_rows must be positive (got {n}, {p}, {chunk_rows})")
        path.mkdir(parents=True, exist_ok=True)
        arr = np.lib.format.open_memmap(path / "grads.npy", mode="w+", dtype=np.dtype(dtype), shape=(n, p))
        del arr
        np.save(path / "done.npy", np.zeros(-(-n // chunk_rows), dtype=bool))
        meta_file.write_text(json.dumps(meta, indent=1))
        return cls(path, meta, "r+")

    @property
    def n_chunks(self) -> int:
        return len(self._done)

    def chunk_slice(self, chunk: int) -> slice:
        start = chunk * self.chunk_rows
        return slice(start, min(self.n, start + self.chunk_rows))

    def missing_chunks(self) -> list[int]:
        return [int(c) for c in np.flatnonzero(~self._done)]

    @property
    def complete(self) -> bool:
        return bool(self._done.all())

    def write_chunk(self, chunk: int, block: np.ndarray) -> None:
        """Write rows of chunk ``chunk`` (shape (rows, p)) and mark it done (flushed to disk)."""
        rows = self.chunk_slice(chunk)
        block = np.asarray(block)
        if block.shape != (rows.stop - rows.start, self.p):
            raise InputError(f"gradient store {self.path}: chunk {chunk} expects shape "
                             f"{(rows.stop - rows.start, self.p)}, got {block.shape}")
        self._grads[rows] = block
        self._grads.flush()
        self._done[chunk] = True
        np.save(self.path / "done.npy", self._done)

    def read(self, rows: slice) -> np.ndarray:
        """Rows ``rows`` as an in-memory array (refused if any of them were never written)."""
        first, last = rows.start // self.chunk_rows, (max(rows.stop, rows.start + 1) - 1) // self.chunk_rows
        if not self._done[first : last + 1].all():
            raise InputError(f"gradient store {self.path}: rows {rows.start}:{rows.stop} are not written yet")
        return np.array(self._grads[rows])

    def iter_chunks(self) -> Iterator[tuple[slice, np.ndarray]]:
        for c in range(self.n_chunks):
            rows = self.chunk_slice(c)
            yield rows, self.read(rows)
