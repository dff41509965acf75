"""Real servers for the integration tests: ``prefect server start`` and ``mlflow server`` (SQLite backend) on
127.0.0.1 at free ports, started once per session in parallel and stopped by process group at teardown.

Deselect these tests with ``-m "not integration"``; they need no network beyond 127.0.0.1.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.servers import Server, start_mlflow, start_prefect


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: starts real Prefect and MLflow servers (slow, ~3 min)")


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Server]:
    """Both servers, healthy. The Prefect scheduler loops every 5 s (instead of 60 s) so that a deployment
    created during a test is scheduled promptly; everything else is Prefect's and MLflow's default."""
    root = tmp_path_factory.mktemp("servers")
    started: dict[str, Server] = {}
    try:
        started["prefect"] = start_prefect(root / "prefect", scheduler_loop_s=5)
        started["mlflow"] = start_mlflow(root / "mlflow")
        for server in started.values():
            server.wait_healthy(timeout=180)
        yield started
    finally:
        for server in started.values():
            server.stop()
        for server in started.values():
            assert server.proc.poll() is not None, f"{server.name} (pid {server.proc.pid}) still running"


@pytest.fixture(scope="session")
def prefect_url(servers: dict[str, Server]) -> str:
    return servers["prefect"].url


@pytest.fixture(scope="session")
def mlflow_url(servers: dict[str, Server]) -> str:
    return servers["mlflow"].url
