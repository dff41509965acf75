"""Progress bars for long work: shown on an interactive terminal (stderr is a TTY), never in logs or CI."""
from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress_bar(total: int, desc: str, unit: str = "it", *, worth_showing: bool = True) -> tqdm:
    """A transient ``tqdm`` bar over ``total`` steps; disabled off a TTY or when ``worth_showing`` is False."""
    terminal = bool(getattr(sys.stderr, "isatty", lambda: False)())   # sys.stderr may be None (pythonw, daemons)
    return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=not (worth_showing and terminal))
