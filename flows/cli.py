"""The ``tda-clean`` command: the library's commands (:mod:`tda_clean.cli`) composed with the Prefect flow
(``run --engine prefect``, the default) and ``serve``. Installed as ``tda_clean_flows.cli``; from a checkout:
``python -m flows.cli run CONFIG``."""
from __future__ import annotations

import sys
from typing import Any, NoReturn

from tda_clean import cli
from tda_clean.errors import InputError


def run_flow(config, *, output: str | None, fresh: bool) -> dict[str, Any]:
    from .lifetime import launch_temporary_server, prefect_api

    _check_remote_workers_reach_prefect(config)
    server = launch_temporary_server()  # None with PREFECT_API_URL set; else it boots while the flow imports
    from .clean import clean  # imports prefect: only for the commands that need it

    if server is not None:  # the server is still booting: import what the run's tracker imports anyway
        _import_tracking(config)
    with prefect_api(server):  # PREFECT_API_URL answers, or the temporary server does (stopped on leaving)
        return clean(config, output=output, fresh=fresh)


def _check_remote_workers_reach_prefect(config) -> None:
    """InputError naming ``runner.address`` when a Dask cluster on another host would be handed the run's
    temporary Prefect server, which listens on 127.0.0.1 only (its workers could not report to it).

    It lives here, not in :mod:`flows.runners`, because it runs before the temporary server is launched and
    must import only Prefect's settings, not Prefect itself (that would delay the server's boot)."""
    from urllib.parse import urlsplit

    from prefect.settings import PREFECT_API_URL

    address = config.runner.address if config.runner.kind == "dask" else None
    if not address or PREFECT_API_URL.value():
        return
    host = urlsplit(address if "://" in address else f"tcp://{address}").hostname or ""
    if host not in ("localhost", "127.0.0.1", "::1"):
        raise InputError(f"runner.address: the Dask cluster at {address} needs PREFECT_API_URL set to a Prefect "
                         "server its workers can reach (the run's temporary server listens on 127.0.0.1 only)")


def _import_tracking(config) -> None:
    """Import the modules the run's MLflow tracker will import (mlflow, its SQL store for a database URI, the
    dataset and model flavours its log stage uses), so that their import overlaps the temporary server's boot."""
    if not config.tracking.enabled:
        return
    from tda_clean.tracking.mlflow_tracker import default_tracking_uri

    import mlflow.data  # noqa: F401
    uri = config.tracking.tracking_uri or default_tracking_uri()
    if uri.split(":", 1)[0].split("+", 1)[0] in ("sqlite", "postgresql", "mysql", "mssql"):
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    if config.tracking.log_models:
        import mlflow.pytorch  # noqa: F401


def serve(config_path: str, cron: str, *, name: str | None, overrides: list[str]) -> None:
    from .deploy import serve_clean

    serve_clean(config_path, cron, name=name, overrides=overrides)


def main(argv: list[str] | None = None) -> int:
    code = cli.main(argv, flow=run_flow, serve=serve)
    if argv is None:  # the process's own command line (console script, python -m): end the process here
        exit_now(code)
    return code


def exit_now(code: int) -> NoReturn:
    """End the process as ``sys.exit(code)`` would, minus the interpreter's teardown, in the interpreter's own
    order: the threading exit callbacks run (Prefect drains its log and event workers into the API here) and
    non-daemon threads are joined (``threading._shutdown``), then every ``atexit`` handler runs (Prefect stops
    its temporary server, logging flushes), stdout and stderr are flushed, then ``os._exit(code)``. The
    teardown skipped (freeing the modules of torch, Prefect and MLflow one by one) writes nothing and takes
    seconds. The order matters: a log worker drained only after the server stopped loses the run's last logs
    and holds ``logging.shutdown`` for its 5 s flush timeout."""
    import atexit
    import os
    import threading

    shutdown = getattr(threading, "_shutdown", None)  # what Py_Finalize calls first (CPython 3.10-3.13)
    if shutdown is not None and threading.current_thread() is threading.main_thread():
        shutdown()
    else:
        for thread in threading.enumerate():
            if thread is not threading.main_thread() and not thread.daemon:
                thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing left to write to
            pass
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
