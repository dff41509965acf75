"""Process lifetime of ``tda-clean run`` under the Prefect engine: the temporary Prefect server dies with its run.

- SIGINT/SIGTERM handling itself is the library's (:mod:`tda_clean.interrupt`), shared with ``--engine local``.
- :func:`prefect_api` readies the Prefect engine's API before the flow starts. A set ``PREFECT_API_URL`` must
  answer (else :class:`~tda_clean.errors.InputError` naming it). With none, the run starts the temporary server
  Prefect would start on first use itself (:class:`TemporaryServer`: Prefect's command line and database, our
  app factory) and points Prefect's client at it for the flow, so that Prefect neither starts another nor
  imports its server modules into the run. The server runs in its own session (Ctrl-C on the terminal reaches
  only the run, which then still reports to a live server) and, on Linux, with ``PR_SET_PDEATHSIG`` (the kernel
  kills it when the run's main thread dies, even by SIGKILL); it is stopped at interpreter exit, after
  Prefect's log and event workers have drained into it. Its database is Prefect's usual one under
  ``PREFECT_HOME``; a first start (a new ``PREFECT_HOME``) migrates it, so the wait for the server is at least
  :data:`STARTUP_TIMEOUT_S` (or ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS`` if longer), and a server
  that does not come up is one line (:class:`~tda_clean.errors.TdaCleanError`, exit 1).
- The server's app is :func:`create_app`: Prefect's, with its console log handlers filtered of records caused by
  SQLite's "database is locked". The server's background services (task-run recorder, event persister) and its
  API handlers write to the one SQLite file concurrently; a writer that loses the race gets ``SQLITE_BUSY`` and
  Prefect retries it (the API answers 503 and the client retries; the recorder puts the events back). Prefect
  already silences these for ``uvicorn.error``, but the task-run recorder logs each retried flush at ERROR with
  a long traceback. Records that are not a retryable lock pass, and events Prefect finally drops are still
  logged (their "Dropping event" line carries no lock exception). ``PREFECT_SERVER_LOG_RETRYABLE_ERRORS=true``
  shows them all again.
- :func:`launch_temporary_server` is the first half (what ``tda-clean run`` uses): the server's process is
  launched before the flow's imports and waited for after them, so that it boots while they load.

Nothing here imports Prefect at import time.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
#: Seconds to wait at least for the temporary server to answer (Prefect's default, 20 s, is shorter
#: than the first start's database migrations on a busy machine).
STARTUP_TIMEOUT_S = 120
#: Settings of the temporary server unless the user sets them: no block-type registration at start (a run's
#: server serves only its run; registration imports every installed Prefect collection, e.g. prefect-dask and
#: Dask, to hash their blocks). A real ``prefect server`` on the same ``PREFECT_HOME`` registers them.
SERVER_DEFAULTS = {"PREFECT_API_BLOCKS_REGISTER_ON_START": "false", "PREFECT_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false"}
#: Client settings for a flow on the temporary server, unless the user sets them: no UI URL (the server serves no
#: UI, so no "View at" link is printed) and no flow-run heartbeats (they let a server notice a crashed run; this
#: one dies with its run; and the flow's end waits up to 1 s for the heartbeat thread's sleep).
TEMPORARY_CLIENT_DEFAULTS = {"ui_url": "", "flows.heartbeat_frequency": None}


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
             "PREFECT__SERVER_FINAL": "1", **SERVER_DEFAULTS,
             **get_current_settings().to_environment_variables(exclude_unset=True)},
        start_new_session=True, preexec_fn=_die_with_parent(),
    )


class TemporaryServer:
    """Prefect's temporary API server for this process, on a free port of 127.0.0.1 (see the module docstring).

    Created, it is launched (not yet answering) and its :meth:`stop` registered with ``atexit``: at interpreter
    exit it runs after the threading exit callbacks, where Prefect drains its log and event workers into it."""

    def __init__(self) -> None:
        import atexit

        self.port = _free_port()
        self.process: subprocess.Popen[Any] | None = _launch(self.port)
        self.announced = False
        atexit.register(self.stop)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def wait(self, timeout: float) -> None:
        """Block until ``GET /api/health`` answers 200. A server that fails to start (uvicorn exits with 3: the
        port may have been taken meanwhile) is relaunched on another port, up to 3 times; one that exits
        otherwise or does not answer within ``timeout`` seconds is stopped and
        :class:`~tda_clean.errors.TdaCleanError` raised (one line, exit 1)."""
        import time

        from tda_clean.errors import TdaCleanError

        deadline = time.monotonic() + timeout
        relaunches = 3
        while not _answers(f"{self.api_url}/health"):
            code = self.process.poll() if self.process is not None else -1
            if code == 3 and relaunches:  # uvicorn's startup failure: e.g. the port was taken since _free_port
                relaunches -= 1
                self.port = _free_port()
                self.process = _launch(self.port)
                continue
            if code is not None or time.monotonic() > deadline:
                why = (f"it exited with code {code}" if code is not None
                       else f"no answer from {self.api_url} within {timeout:g} s")
                self.stop()
                raise TdaCleanError(f"the temporary Prefect server did not start ({why}); set PREFECT_API_URL to a "
                                    "running server or use --engine local")
            time.sleep(0.05)
        _log(f"Starting temporary server on {self.api_url.removesuffix('/api')}\nSee "  # Prefect's words
             "https://docs.prefect.io/v3/concepts/server#how-to-guides for more information on running a "
             "dedicated Prefect server.")
        self.announced = True

    def stop(self) -> None:
        """Terminate the server (SIGKILL if it is not gone after 5 s, as Prefect stops its own); idempotent."""
        proc, self.process = self.process, None
        if proc is None:
            return
        if self.announced:
            _log(f"Stopping temporary server on {self.api_url.removesuffix('/api')}")
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _log(message: str) -> None:
    import logging

    logging.getLogger("prefect").info(message)  # Prefect's own logger (what its get_logger() returns)


def _answers(url: str) -> bool:
    """True when ``url`` answers 200 (no proxy: the server is on this machine)."""
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


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
    return warmed_after_startup(app)


#: Read-only requests the temporary server sends itself once started (see :func:`warmed_after_startup`).
WARM_UP = (("GET", "/api/admin/version", None), ("POST", "/api/flows/filter", {"limit": 1}),
           ("POST", "/api/flow_runs/filter", {"limit": 1}))


def warmed_after_startup(app):
    """``app`` (ASGI) that, once its lifespan has started, sends itself the read-only :data:`WARM_UP` requests in
    the background. FastAPI builds its routes' request models lazily, on the first requests (hundreds of
    pydantic adapters, ~0.3 s of CPU); a temporary server booted early is otherwise idle until the run's client
    has imported its flow, so the run's first API calls find them built. Errors of the warm-up are ignored."""
    import asyncio

    async def warm() -> None:
        import httpx

        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
                for method, path, body in WARM_UP:
                    await c.request(method, path, json=body)
        except Exception:  # noqa: BLE001 - an optimisation only
            pass

    async def asgi(scope, receive, send):
        if scope["type"] != "lifespan":
            return await app(scope, receive, send)

        async def send_and_warm(message):
            await send(message)
            if message["type"] == "lifespan.startup.complete":
                tasks.add(asyncio.get_running_loop().create_task(warm()))

        tasks: set = set()  # a reference keeps the task alive
        return await app(scope, receive, send_and_warm)

    return asgi


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def startup_timeout() -> float:
    """Seconds to wait for the temporary server: :data:`STARTUP_TIMEOUT_S`, or Prefect's setting if longer."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as STARTUP

    return float(max(STARTUP.value(), STARTUP_TIMEOUT_S))


def launch_temporary_server() -> TemporaryServer | None:
    """The first half of :func:`prefect_api`, so that the temporary server boots while the run imports its flow:
    with no ``PREFECT_API_URL`` (and the temporary server allowed) the server's process is launched now and
    returned; otherwise None. Call it in the main thread before the heavy imports."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return None
    return TemporaryServer()


def start_temporary_server() -> TemporaryServer:
    """A temporary server, answering (for scripts that need its URL, e.g. to hand it to worker processes)."""
    server = TemporaryServer()
    server.wait(startup_timeout())
    return server


@contextmanager
def prefect_api(server: TemporaryServer | None = None) -> Iterator[None]:
    """The Prefect API the flow reports to, ready (call in the main thread; run the flow inside).

    A set ``PREFECT_API_URL`` must answer (else :class:`~tda_clean.errors.InputError` naming it). Otherwise the
    temporary server (``server``, launched by :func:`launch_temporary_server`, or one launched now) is waited
    for, and Prefect's settings point its client at it inside the block (``PREFECT_API_URL``, and
    :data:`TEMPORARY_CLIENT_DEFAULTS` unless set); leaving the block drains Prefect's log and event workers into
    it and stops it (the block owns the temporary server's life). Prefect then never starts its own temporary server nor
    imports its server modules into this process."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED, temporary_settings

    from tda_clean.errors import InputError

    if server is None and PREFECT_API_URL.value():
        from .deploy import prefect_api_url

        prefect_api_url()
        yield
        return
    if server is None:
        if not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
            raise InputError("PREFECT_API_URL is not set and Prefect's temporary server is disabled "
                             "(PREFECT_SERVER_ALLOW_EPHEMERAL_MODE): set PREFECT_API_URL or use --engine local")
        server = TemporaryServer()
    try:
        server.wait(startup_timeout())
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}, set_defaults=TEMPORARY_CLIENT_DEFAULTS):
            yield
    finally:  # in-process callers (tests, scripts) too: no server outlives the block
        if server.announced:
            drain_prefect_workers()
        server.stop()


def drain_prefect_workers() -> None:
    """Send what Prefect's log and event workers still hold to the API before its server stops (as Prefect's
    test harness does); they start again on the next run's first log line or event."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=5)
        except RuntimeError:  # never started
            pass
