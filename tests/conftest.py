"""Session-wide test setup: offline Prefect settings, a session-scoped Prefect test harness, and an MLflow
SQLite store migrated once per session and copied per test."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Before anything imports prefect: no telemetry, a private PREFECT_HOME, patience for the temporary server.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_HOME", str(Path(os.environ.get("TMPDIR", "/tmp")) / f"tda-clean-prefect-{os.getpid()}"))
os.environ.pop("MLFLOW_RUN_ID", None)


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API for the whole session (~10 s once, then ~1.5 s per flow call)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="session")
def migrated_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly migrated, otherwise empty SQLite tracking store (migrations cost 1-2 s)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_uri(tmp_path: Path, migrated_mlflow_db: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """URI of a private copy of the migrated store; cwd is ``tmp_path`` so ./mlruns lands there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    db = tmp_path / "mlflow.db"
    shutil.copyfile(migrated_mlflow_db, db)
    return f"sqlite:///{db}"
