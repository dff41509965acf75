"""The ``tda-clean`` command as tests start it in a subprocess: ``python -m flows.cli`` with this checkout first
on ``PYTHONPATH``, so it runs this tree's code from any working directory."""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tda_clean(*args: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", *args]


def command_env(env: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env
