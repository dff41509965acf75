"""SIGINT and SIGTERM end a run cleanly under either engine.

:func:`stop_on_signals` turns them into :class:`Interrupted` (a ``KeyboardInterrupt``) in the main thread, so the
pipeline marks its tracking run FAILED and the command exits ``128 + signal number`` (130 for SIGINT, 143 for
SIGTERM). A signal the process inherited as ignored (``nohup``) stays ignored. Python drops an exception raised
inside a ``__del__`` or weakref callback (garbage collection can run one at any bytecode); an :class:`Interrupted`
(or another handler's signal exception, e.g. Prefect's ``TerminationSignal``) dropped there is sent again,
so the run still stops.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Any, Iterator


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; ``exit_code`` is ``128 + signum`` (130 / 143)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def stop_on_signals(enabled: bool = True) -> Iterator[None]:
    """Within the block, SIGINT/SIGTERM raise :class:`Interrupted` in the main thread (no-op in other threads)."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous_hook = sys.unraisablehook

    def redeliver(unraisable: Any) -> None:
        exc = unraisable.exc_value  # ours (signum) or another handler's signal exception (Prefect's: .signal)
        signum = getattr(exc, "signum", None) or getattr(exc, "signal", None)
        if isinstance(signum, int) and not isinstance(exc, Exception):  # dropped in a finalizer: send it again
            threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()
        else:
            previous_hook(unraisable)

    for sig, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(sig, _raise_interrupted)
    sys.unraisablehook = redeliver
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        for sig, handler in previous.items():
            signal.signal(sig, handler)
