"""Process lifetime of ``tda-clean run`` under the Prefect engine: the temporary Prefect server dies with its run.

- SIGINT/SIGTERM handling itself is the library's (:mod:`tda_clean.interrupt`), shared with ``--engine local``.
- :func:`prefect_api` readies the Prefect engine's API before the flow starts. A set ``PREFECT_API_URL`` must
  answer (else :class:`~tda_clean.errors.InputError` naming it). With none, the temporary server Prefect would
  start on first use is started here instead, as Prefect's own singleton with its own command line, but in its
  own session (Ctrl-C on the terminal reaches only the run, which then still reports to a live server) and,
  on Linux, with ``PR_SET_PDEATHSIG`` (the kernel kills it when the run's main thread dies, even by SIGKILL).
  Prefect stops it at interpreter exit, after its log and event workers have drained. Its database is
  Prefect's usual one under ``PREFECT_HOME``; a first start (a new ``PREFECT_HOME``) migrates it, so the wait
  for the server is at least :data:`STARTUP_TIMEOUT_S` (or ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS`` if
  longer), and a server that does not come up is one line (:class:`~tda_clean.errors.TdaCleanError`, exit 1).
- The server's app is :func:`create_app`: Prefect's, with its console log handlers filtered of records caused by
  SQLite's "database is locked". The server's background services (task-run recorder, event persister) and its
  API handlers write to the one SQLite file concurrently; a writer that loses the race gets ``SQLITE_BUSY`` and
  Prefect retries it (the API answers 503 and the client retries; the recorder puts the events back). Prefect
  already silences these for ``uvicorn.error``, but the task-run recorder logs each retried flush at ERROR with
  a long traceback. Records that are not a retryable lock pass, and events Prefect finally drops are still
  logged (their "Dropping event" line carries no lock exception). ``PREFECT_SERVER_LOG_RETRYABLE_ERRORS=true``
  shows them all again.
- :func:`launch_prefect_api` does the same in two halves (what
  ``tda-clean run`` uses): the server's process is launched before the flow's imports and handed to Prefect after
  them, so that it boots while they load.

Nothing here imports Prefect at import time.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from typing import Any, Callable

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
#: Seconds to wait at least for the temporary server to answer (Prefect's default, 20 s, is shorter
#: than the first start's database migrations on a busy machine).
STARTUP_TIMEOUT_S = 120


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


def _launch(port: int) -> subprocess.Popen[Any]:
    """The temporary server's process on ``port`` (main thread: ``PR_SET_PDEATHSIG`` follows the forking thread)."""
    from pathlib import Path

    from prefect.settings import get_current_settings

    here = Path(__file__).resolve().parent  # this package: flows/ in a checkout, tda_clean_flows/ installed
    return subprocess.Popen(  # the command line of Prefect 3.8's SubprocessASGIServer, with our app factory
        [sys.executable, "-m", "uvicorn", "--app-dir", str(here.parent), "--factory",
         f"{here.name}.lifetime:create_app", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "error", "--lifespan", "on"],
        env={**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
             "PREFECT__SERVER_FINAL": "1",
             **get_current_settings().to_environment_variables(exclude_unset=True)},
        start_new_session=True, preexec_fn=_die_with_parent(),
    )


def _run_server_class():
    from prefect.server.api.server import SubprocessASGIServer

    class RunServer(SubprocessASGIServer):
        """Prefect's temporary server, started in a new session and tied to this process's life."""

        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            launched = _LAUNCHED.pop(self.port, None)  # launched early by launch_prefect_api, still booting
            return launched if launched is not None and launched.poll() is None else _launch(self.port)

    return RunServer


def is_retryable_sqlite_lock(exc: BaseException | None) -> bool:
    """True for SQLAlchemy's wrapping of SQLite's "database is locked" (``SQLITE_BUSY``), which Prefect retries."""
    import sqlite3

    orig = getattr(exc, "orig", None)
    if not isinstance(orig, sqlite3.OperationalError) or type(exc).__name__ != "OperationalError":
        return False
    return (getattr(orig, "sqlite_errorname", None) in {"SQLITE_BUSY", "SQLITE_BUSY_SNAPSHOT"}
            or "database is locked" in str(orig))


class SQLiteLockFilter:
    """A ``logging`` filter that drops records whose exception is a retryable SQLite lock."""

    def filter(self, record) -> bool:
        return not (record.exc_info and is_retryable_sqlite_lock(record.exc_info[1]))


def quiet_sqlite_locks() -> None:
    """Filter every handler of the configured loggers (Prefect's ``console`` handler serves root, ``uvicorn``
    and ``fastapi``; the server's loggers propagate to root) unless ``PREFECT_SERVER_LOG_RETRYABLE_ERRORS``."""
    import logging

    from prefect.settings import get_current_settings

    if get_current_settings().server.log_retryable_errors:
        return
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    for handler in {h for lg in loggers for h in lg.handlers}:
        if not any(isinstance(f, SQLiteLockFilter) for f in handler.filters):
            handler.addFilter(SQLiteLockFilter())


def create_app():
    """The temporary server's ASGI app (``uvicorn --factory``): Prefect's, its logs quieted of retried locks."""
    from prefect.server.api.server import create_app as prefect_app

    app = prefect_app()
    quiet_sqlite_locks()  # after Prefect's logging setup (done on import) and uvicorn's
    return app


_LAUNCHED: dict[int, subprocess.Popen[Any]] = {}  # port -> server process not yet handed to Prefect


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _reap_unadopted() -> None:
    """At exit: stop a launched server that was never handed to Prefect (the run failed before its flow)."""
    while _LAUNCHED:
        _, proc = _LAUNCHED.popitem()
        proc.kill()
        proc.wait()


def launch_prefect_api() -> Callable[[], None]:
    """:func:`prefect_api` in two halves, so that the temporary server boots while the run imports its flow.

    Call it in the main thread before the heavy imports: with no ``PREFECT_API_URL`` (and the temporary server
    allowed) it launches the server's process now (a free port, Prefect's command line) and returns the call
    that waits for the server to answer and hands it to Prefect as its singleton; otherwise it returns
    :func:`prefect_api` itself. Call the returned function before the flow starts, in the main thread."""
    import atexit

    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return prefect_api
    port = _free_port()
    if not _LAUNCHED:
        atexit.register(_reap_unadopted)
    _LAUNCHED[port] = _launch(port)

    def adopt() -> None:
        server = _run_server_class()()
        if not getattr(server, "running", False):
            server.port = port  # start() takes the launched process (or relaunches if it has exited)
        try:
            _start(server)
        finally:
            unused = _LAUNCHED.pop(port, None)  # still here: start() did not take it (failed, or already running)
            if unused is not None:
                unused.kill()
                unused.wait()

    return adopt


def _start(server) -> None:
    """Start Prefect's server object, waiting at least :data:`STARTUP_TIMEOUT_S`; a timeout is one line."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as STARTUP

    from tda_clean.errors import TdaCleanError

    try:
        server.start(timeout=max(STARTUP.value(), STARTUP_TIMEOUT_S))
    except RuntimeError as exc:  # Prefect's "Timed out while attempting to connect to ephemeral Prefect API server"
        raise TdaCleanError(f"the temporary Prefect server did not start ({str(exc).splitlines()[0]}); set "
                            "PREFECT_API_URL to a running server or use --engine local") from None


def prefect_api() -> None:
    """Check the configured Prefect API, or start the temporary server now (call in the main thread)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    from tda_clean.errors import InputError

    if PREFECT_API_URL.value():
        from .deploy import prefect_api_url

        prefect_api_url()
        return
    if not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        raise InputError("PREFECT_API_URL is not set and Prefect's temporary server is disabled "
                         "(PREFECT_SERVER_ALLOW_EPHEMERAL_MODE): set PREFECT_API_URL or use --engine local")
    _start(_run_server_class()())
