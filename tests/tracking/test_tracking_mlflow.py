"""MLflow-specific behaviour: models from worker threads, URIs, fail-fast, lazy import."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from tda_clean.config import TrackingConfig
from tda_clean.errors import InputError
from tda_clean.tracking import NullTracker, Tracker, make_tracker
from tda_clean.tracking.mlflow_tracker import MlflowTracker
from tests.memory_tracker import InMemoryTracker


def test_log_model_in_worker_thread_ignores_global_state(
    mlflow_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from mlflow import MlflowClient

    tracker = MlflowTracker(mlflow_uri, "models")
    # The fluent/global URI points elsewhere: the tracker must not follow it.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    run_id = tracker.start_run("clean")
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            tracker.log_model(run_id, model, name="model")
            assert mlflow.active_run() is None
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert not errors, errors
    tracker.end_run(run_id, "FINISHED")
    assert mlflow.active_run() is None
    assert not (tmp_path / "elsewhere.db").exists()

    client = MlflowClient(tracking_uri=mlflow_uri)
    runs = client.search_runs([tracker.experiment_id, "0"])
    assert [r.info.run_id for r in runs] == [run_id]  # no orphan, not even in Default
    (logged,) = client.search_logged_models(experiment_ids=[tracker.experiment_id])
    assert logged.source_run_id == run_id and logged.name == "model"
    assert str(logged.status) == "READY"
    assert [o.model_id for o in client.get_run(run_id).outputs.model_outputs] == [logged.model_id]

    local = mlflow.artifacts.download_artifacts(artifact_uri=logged.artifact_location,
                                                dst_path=str(tmp_path / "dl"))
    requirements = (Path(local) / "requirements.txt").read_text()
    assert f"torch=={torch.__version__}" in requirements
    loaded = mlflow.pytorch.load_model(local)
    x = torch.randn(5, 4)
    torch.testing.assert_close(loaded(x), model(x))


def test_default_uri_is_sqlite_in_cwd(mlflow_uri: str, tmp_path: Path) -> None:
    tracker = MlflowTracker(None, "defaults")
    assert tracker.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}" == mlflow_uri
    again = MlflowTracker(None, "defaults")  # existing experiment is reused
    assert again.info() == tracker.info() == {
        "tracking_uri": mlflow_uri, "experiment_id": tracker.experiment_id}


def test_env_uri_wins(mlflow_uri: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path / "..")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    assert MlflowTracker(None, "env").tracking_uri == mlflow_uri


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_http_uri_fails_fast() -> None:
    uri = f"http://127.0.0.1:{_free_port()}"
    start = time.monotonic()
    with pytest.raises(InputError, match=uri.replace(".", r"\.")) as info:
        make_tracker(TrackingConfig(tracking_uri=uri, experiment="x"))
    assert time.monotonic() - start < 10
    assert info.value.exit_code == 2


def test_make_tracker(mlflow_uri: str) -> None:
    assert isinstance(make_tracker(TrackingConfig(enabled=False)), NullTracker)
    tracker = make_tracker(TrackingConfig(tracking_uri=mlflow_uri, experiment="made"))
    assert isinstance(tracker, MlflowTracker) and tracker.experiment == "made"
    for obj in (tracker, NullTracker(), InMemoryTracker()):
        assert isinstance(obj, Tracker)


def test_null_tracker_accepts_everything(tmp_path: Path) -> None:
    null = NullTracker()
    run_id = null.start_run("x", parent_run_id=None, tags={"a": "b"})
    assert run_id == ""
    null.log_params(run_id, {"a": "b"})
    null.log_metrics(run_id, {"accuracy_sex=Female": 1.0})
    null.log_artifact(run_id, tmp_path / "missing.txt")
    null.end_run(run_id, "FAILED", "boom")
    assert null.info() == {"tracking_uri": None, "experiment_id": None}


def test_import_does_not_load_mlflow_or_prefect() -> None:
    code = ("import sys, tda_clean, tda_clean.tracking; from tda_clean.tracking import make_tracker; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'prefect')); "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_any_http_answer_counts_as_reachable() -> None:
    """A server answering 404 on /health is up; only silence or refusal fails."""
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from tda_clean.tracking.mlflow_tracker import check_reachable

    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            self.send_error(404)

        def log_message(self, *args: object) -> None:
            return None

    server = HTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        check_reachable(f"http://127.0.0.1:{server.server_address[1]}/")
    finally:
        server.shutdown()
        server.server_close()
    check_reachable("sqlite:///nowhere/mlflow.db")  # non-http schemes are not probed
