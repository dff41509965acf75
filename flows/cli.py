"""The ``tda-clean`` command: the library's commands (:mod:`tda_clean.cli`) composed with the Prefect flow
(``run --engine prefect``, the default) and ``serve``. Installed as ``tda_clean_flows.cli``; from a checkout:
``python -m flows.cli run CONFIG``."""
from __future__ import annotations

import sys
from typing import Any

from tda_clean import cli


def run_flow(config, *, output: str | None, fresh: bool) -> dict[str, Any]:
    from .lifetime import launch_prefect_api

    ready = launch_prefect_api()  # a temporary server boots while the flow's modules import
    from .clean import clean  # imports prefect: only for the commands that need it

    ready()  # PREFECT_API_URL answers, or a temporary server that dies with this process
    return clean(config, output=output, fresh=fresh)


def serve(config_path: str, cron: str, *, name: str | None, overrides: list[str]) -> None:
    from .deploy import serve_clean

    serve_clean(config_path, cron, name=name, overrides=overrides)


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv, flow=run_flow, serve=serve)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
