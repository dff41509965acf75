"""Process lifetime of ``tda-clean run`` under the Prefect engine: the temporary Prefect server dies with its run.

- SIGINT/SIGTERM handling itself is the library's (:mod:`tda_clean.interrupt`), shared with ``--engine local``.
- :func:`prefect_api` readies the Prefect engine's API before the flow starts. A set ``PREFECT_API_URL`` must
  answer (else :class:`~tda_clean.errors.InputError` naming it). With none, the temporary server Prefect would
  start on first use is started here instead, as Prefect's own singleton with its own command line, but in its
  own session (Ctrl-C on the terminal reaches only the run, which then still reports to a live server) and,
  on Linux, with ``PR_SET_PDEATHSIG`` (the kernel kills it when the run's main thread dies, even by SIGKILL).
  Prefect stops it at interpreter exit, after its log and event workers have drained. Its database is
  Prefect's usual one under ``PREFECT_HOME``. :func:`launch_prefect_api` does the same in two halves (what
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
    import prefect
    from prefect.settings import get_current_settings

    return subprocess.Popen(  # the command line of Prefect 3.8's SubprocessASGIServer
        [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
         "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
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
        if not server.running:
            server.port = port  # start() takes the launched process (or relaunches if it has exited)
        server.start()

    return adopt


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
    _run_server_class()().start()
