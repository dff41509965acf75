"""Process lifetime of ``tda-clean run``: SIGINT and SIGTERM end a run cleanly, and the temporary Prefect
server dies with its run.

- :func:`stop_on_signals` turns SIGINT and SIGTERM into :class:`Interrupted` (a ``KeyboardInterrupt``) in the
  main thread, so the pipeline marks its tracking run FAILED and the command exits ``128 + signal number``
  (130 for SIGINT, 143 for SIGTERM). A signal the process inherited as ignored (``nohup``) stays ignored.
- :func:`prefect_api` readies the Prefect engine's API before the flow starts. A set ``PREFECT_API_URL`` must
  answer (else :class:`~tda_clean.errors.InputError` naming it). With none, the temporary server Prefect would
  start on first use is started here instead, as Prefect's own singleton with its own command line, but in its
  own session (Ctrl-C on the terminal reaches only the run, which then still reports to a live server) and,
  on Linux, with ``PR_SET_PDEATHSIG`` (the kernel kills it when the run's main thread dies, even by SIGKILL).
  Prefect stops it at interpreter exit, after its log and event workers have drained. Its database is
  Prefect's usual one under ``PREFECT_HOME``.

Nothing here imports Prefect at import time.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
from typing import Any, Callable, Iterator

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; ``exit_code`` is ``128 + signum`` (130 / 143)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
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
    for sig, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(sig, _raise_interrupted)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn``: the child gets SIGKILL when this process dies (Linux), or exits if it already has.

    ``prctl`` is looked up here, in the parent: between fork and exec the child only calls it."""
    parent = os.getpid()
    prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None

    def preexec() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def _run_server_class():
    from prefect.server.api.server import SubprocessASGIServer

    class RunServer(SubprocessASGIServer):
        """Prefect's temporary server, started in a new session and tied to this process's life."""

        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            import prefect
            from prefect.settings import get_current_settings

            return subprocess.Popen(  # the command line of Prefect 3.8's SubprocessASGIServer
                [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
                 "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
                 "--log-level", "error", "--lifespan", "on"],
                env={**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
                     "PREFECT__SERVER_FINAL": "1",
                     **get_current_settings().to_environment_variables(exclude_unset=True)},
                start_new_session=True, preexec_fn=_die_with_parent(),
            )

    return RunServer


def prefect_api() -> None:
    """Check the configured Prefect API, or start the temporary server now (call in the main thread)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    from tda_clean.errors import InputError

    if PREFECT_API_URL.value():
        from flows.deploy import prefect_api_url

        prefect_api_url()
        return
    if not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        raise InputError("PREFECT_API_URL is not set and Prefect's temporary server is disabled "
                         "(PREFECT_SERVER_ALLOW_EPHEMERAL_MODE): set PREFECT_API_URL or use --engine local")
    _run_server_class()().start()
