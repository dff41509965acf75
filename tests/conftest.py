"""Session-wide test setup: offline Prefect settings, a session-scoped Prefect test harness, an MLflow
SQLite store migrated once per session and copied per test, and a check that no test leaves a process behind."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

# Before anything imports prefect: no telemetry, a private PREFECT_HOME, patience for the temporary server.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_HOME", str(Path(os.environ.get("TMPDIR", "/tmp")) / f"tda-clean-prefect-{os.getpid()}"))
os.environ.pop("MLFLOW_RUN_ID", None)


#: Helpers of multiprocessing / joblib that exit with the interpreter on their own (they watch their parent).
POOL_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver", "joblib.externals.loky",
                "loky.backend")


def live_descendants(pid: int) -> dict[int, str]:
    """``{pid: command line}`` of the running (not zombie) descendants of ``pid``, read from ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:  # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces and parentheses
            state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue
        if state != "Z":
            children.setdefault(int(ppid), []).append(int(entry.name))
    found: dict[int, str] = {}
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        try:
            found[child] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        todo += children.get(child, [])
    return found


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind():
    """Fails the session if a test left a child process running (servers, flow runs, workers), after a grace."""
    yield
    if not Path("/proc/self/stat").is_file():  # not Linux: nothing to read
        return
    deadline = time.monotonic() + 15
    while True:
        left = {pid: cmd for pid, cmd in live_descendants(os.getpid()).items()
                if not any(helper in cmd for helper in POOL_HELPERS)}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not left, "processes left behind by the tests: " + "; ".join(f"{p}: {c[:160]}" for p, c in left.items())


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
