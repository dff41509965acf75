"""Process lifetime of ``tda-clean run`` under the Prefect engine: the temporary Prefect server dies with its run.

- SIGINT/SIGTERM handling itself is the library's (:mod:`tda_clean.interrupt`), shared with ``--engine local``.
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
        from .deploy import prefect_api_url

        prefect_api_url()
        return
    if not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        raise InputError("PREFECT_API_URL is not set and Prefect's temporary server is disabled "
                         "(PREFECT_SERVER_ALLOW_EPHEMERAL_MODE): set PREFECT_API_URL or use --engine local")
    _run_server_class()().start()
