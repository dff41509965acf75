"""Atomic file writes: readers see the old file or the whole new one, never half of it."""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Callable

from tda_clean.errors import InputError


def write_atomic(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """``write(tmp)`` to a temporary file next to ``path`` (same suffix), then rename it onto ``path``: readers
    see the old file or the whole new one, never half of it.

    Raises InputError naming ``path`` on any OSError (read-only folder, full disk, a file where a folder
    should be); the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise InputError(f"{path}: cannot write ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(path: Path, payload: Any) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2, default=float)))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())
