"""Progress of long work: a transient bar on an interactive terminal, periodic log lines everywhere else.

On a terminal (stderr is a TTY) and for work worth a bar, :func:`progress_bar` is a ``tqdm`` bar. Otherwise (logs,
CI, a run started by a scheduler, or inner work whose caller shows its own bar) it is a :class:`LogProgress`:
silent for short work, then one ``INFO`` line on the ``tda_clean.progress`` logger every ``interval_s`` seconds
(steps done, percent, elapsed, estimated time left) and a closing ``done`` line. The library only emits the
records; the ``tda-clean`` command routes them to stderr (:func:`log_to_stderr`).
"""
from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator

from tqdm.auto import tqdm

logger = logging.getLogger("tda_clean.progress")

#: Seconds between two progress lines in the log (and before the first one: short work logs nothing).
LOG_INTERVAL_S = 15.0


class LogProgress:
    """The ``tqdm`` subset the library uses (``update``, ``set_postfix``, iteration, context manager), as log lines.

    A line is due when ``clock() - last >= interval_s`` (default :data:`LOG_INTERVAL_S`); ``clock`` is for tests."""

    def __init__(self, total: int, desc: str, unit: str = "it", *, interval_s: float | None = None,
                 iterable: Any = None, clock=time.monotonic) -> None:
        self.total, self.desc, self.unit = int(total), desc, unit
        self.interval_s = LOG_INTERVAL_S if interval_s is None else interval_s
        self.iterable, self.clock = iterable, clock
        self.n, self.postfix, self.logged, self.closed = 0, "", 0, False
        self.start = self.last = clock()

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:  # also when the loop breaks early (the generator is closed)
            self.close()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last >= self.interval_s and self.n < self.total:
            self.last = now
            self._log(self._status(now))

    def close(self) -> None:
        if self.logged and not self.closed:  # only work that announced itself says that it ended
            self.closed = True
            self._log(f"done, {self.n} {self.unit} in {self.clock() - self.start:.0f} s")

    def _status(self, now: float) -> str:
        elapsed = now - self.start
        text = f"{self.n}/{self.total} {self.unit}"
        if self.total > 0:
            text += f" ({100 * self.n / self.total:.0f}%), {elapsed:.0f} s"
            if self.n:
                text += f", ~{elapsed * (self.total - self.n) / self.n:.0f} s left"
        return text + (f" [{self.postfix}]" if self.postfix else "")

    def _log(self, text: str) -> None:
        self.logged += 1
        logger.info("%s: %s", self.desc, text)


def _terminal() -> bool:
    return bool(getattr(sys.stderr, "isatty", lambda: False)())   # sys.stderr may be None (pythonw, daemons)


def progress_bar(total: int, desc: str, unit: str = "it", *, worth_showing: bool = True,
                 iterable: Any = None) -> tqdm | LogProgress:
    """A transient ``tqdm`` bar over ``total`` steps on a terminal when ``worth_showing``; else a :class:`LogProgress`.

    With ``iterable`` the result iterates over it, one step per item (as ``tqdm(iterable)``)."""
    if worth_showing and _terminal():
        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False)
    return LogProgress(total, desc, unit, iterable=iterable)


@contextmanager
def log_to_stderr(level: int = logging.INFO) -> Iterator[None]:
    """While open, the library's log records (``tda_clean.*``: progress lines) go to stderr in the format of Prefect's
    console lines, and only there (not also through a root handler, which Prefect configures). For commands: the
    library never configures logging itself. Restores the ``tda_clean`` logger on exit; nested uses add nothing."""
    root = logging.getLogger("tda_clean")
    if any(getattr(h, "_tda_clean", False) for h in root.handlers):
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler._tda_clean = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d | %(levelname)-7s | %(name)s - %(message)s",
                                           datefmt="%H:%M:%S"))
    saved = root.level, root.propagate
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        root.propagate = saved[1]
