"""Serve the ``clean`` flow on a cron schedule against a real Prefect server.

    tda-clean serve CONFIG --cron "0 2 * * *" [--name NAME] [--set key.path=value ...]

creates (or updates) the deployment ``clean/NAME`` with the cron schedule and the parameters
``{"config": "<absolute path of CONFIG>", "overrides": [...]}``, then blocks polling the server for
scheduled runs and runs each one in a subprocess. The config file is re-read at every scheduled run, so
edits apply to the next night's run. Ctrl-C pauses the schedule and stops. SIGTERM stops the process
WITHOUT pausing the schedule (observed once: Prefect's SIGTERM handler exits before the pause), so the server
keeps scheduling runs nobody serves. A process started with SIGINT ignored (e.g. ``nohup ... &``) never sees
Ctrl-C at all.

The temporary local server Prefect starts when ``PREFECT_API_URL`` is unset lives only as long as one
process and runs no scheduler, so ``serve_clean`` refuses to run without a reachable server. The worker
route (a ``process`` work pool, ``prefect deploy`` and ``prefect worker start``) is in ``prefect.yaml``.
"""
from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from tda_clean.config import load_config
from tda_clean.errors import InputError

#: Seconds to wait for the Prefect API's ``/health`` before giving up.
SERVER_TIMEOUT_S = 5.0


def validate_cron(cron: str) -> str:
    """Return ``cron`` stripped if Prefect's scheduler accepts it, else raise :class:`InputError`.

    Uses Prefect's own ``CronSchedule`` model (its vendored croniter, no random ``R``/hashed ``H``
    fields), so anything accepted here is accepted by the server.
    """
    from pydantic import ValidationError

    from prefect.client.schemas.schedules import CronSchedule

    text = (cron or "").strip()
    try:
        CronSchedule(cron=text)
    except (ValidationError, ValueError) as exc:  # ValidationError is a ValueError; keep both explicit
        raise InputError(
            f"--cron {cron!r} is not a valid cron expression (five fields: minute hour day-of-month month "
            "day-of-week, e.g. '0 2 * * *')"
        ) from None
    return text


def prefect_api_url() -> str:
    """The configured ``PREFECT_API_URL`` if a server answers there, else :class:`InputError`."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise InputError(
            "PREFECT_API_URL is not set: schedules need a running Prefect server (the temporary local server "
            "runs no scheduler); start one with `prefect server start` and "
            "`export PREFECT_API_URL=http://127.0.0.1:4200/api`"
        )
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=SERVER_TIMEOUT_S):
            pass
    except urllib.error.HTTPError:
        pass  # it answered (auth, proxy...): the server is there
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InputError(f"Prefect server {url} is not reachable ({reason}); start it with "
                         "`prefect server start` or fix PREFECT_API_URL") from None
    return url


def serve_clean(
    config_path: str | Path,
    cron: str,
    *,
    name: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> None:
    """Validate cron, config and server, then serve the ``clean`` flow on ``cron`` until interrupted.

    Raises:
        InputError: the cron expression does not parse, the config is invalid, or no Prefect server
            answers at ``PREFECT_API_URL``. Nothing is created on the server in those cases.
    """
    cron = validate_cron(cron)
    path = Path(config_path).expanduser().absolute()
    config = load_config(path, list(overrides))
    prefect_api_url()
    from .clean import clean

    deployment = name or config.name
    clean.serve(
        name=deployment,
        cron=cron,
        parameters={"config": str(path), "overrides": list(overrides)},
        description=f"tda-clean on {path} at '{cron}'",
        tags=["tda-clean"],
    )
