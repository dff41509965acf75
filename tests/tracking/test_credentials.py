"""Credentials in a tracking URI are never printed or stored: the redactor itself, the error of an unreachable or
wrong server, and a whole run whose config and tracker URI hold a password (stdout, report.json, tracking.json,
params, tags, artifacts)."""
from __future__ import annotations

import json
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest
import yaml

from tda_clean.config import TrackingConfig, parse_config
from tda_clean.errors import InputError
from tda_clean.redact import redact
from tests.commands import command_env, tda_clean
from tests.tables import table_config, write_table

SECRET = "s3cret-Pa55"


@pytest.mark.parametrize("text, expected", [
    (f"http://alice:{SECRET}@mlflow.example:5000", "http://alice:***@mlflow.example:5000"),
    (f"postgresql://alice:{SECRET}@db/mlflow", "postgresql://alice:***@db/mlflow"),
    (f"postgresql://alice:p@ss:{SECRET}@db:5432/mlflow", "postgresql://alice:***@db:5432/mlflow"),  # raw "@"
    (f"https://{SECRET}@example.com/repo", "https://***@example.com/repo"),  # a bare token as userinfo
    (f"https://h/x?token={SECRET}&run=1", "https://h/x?token=***&run=1"),
    (f"https://h/x?a=1&X-Amz-Signature={SECRET}", "https://h/x?a=1&X-Amz-Signature=***"),
    (f"server http://u:{SECRET}@127.0.0.1:1 is not reachable", "server http://u:***@127.0.0.1:1 is not reachable"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ("http://127.0.0.1:5000/#/experiments/1", "http://127.0.0.1:5000/#/experiments/1"),
    ("name=table-test&key=1 plain", "name=table-test&key=1 plain"),  # not a URI: unchanged
    (None, "None"),
])
def test_redact(text, expected):
    assert redact(text) == expected
    assert redact(redact(text)) == expected  # idempotent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_server_error_names_it_without_the_password(tmp_path):
    uri = f"http://alice:{SECRET}@127.0.0.1:{_free_port()}"
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(table_config(write_table(tmp_path / "t.csv"), uri)))
    proc = subprocess.run(tda_clean("run", str(config), "--engine", "local", "--output", str(tmp_path / "run")),
                          cwd=tmp_path, env=command_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "alice:***@127.0.0.1" in proc.stderr
    assert SECRET not in proc.stdout + proc.stderr


def test_a_server_that_is_not_mlflow_fails_without_the_password():
    """MLflow's own error (a 404 from the wrong server) goes through the redactor too."""
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from tda_clean.tracking import make_tracker

    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            self.send_error(404)

        do_POST = do_GET

        def log_message(self, *args: object) -> None:
            return None

    server = HTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(InputError) as info:
            make_tracker(TrackingConfig(tracking_uri=f"http://alice:{SECRET}@127.0.0.1:{server.server_address[1]}",
                                        experiment="x"))
    finally:
        server.shutdown()
        server.server_close()
    assert "not reachable" not in str(info.value)  # it got past the health probe: MLflow itself refused
    assert "404" in str(info.value) and "\n" not in str(info.value)  # MLflow's error, on one line
    assert "alice:***@127.0.0.1" in str(info.value) and SECRET not in str(info.value)


def test_a_run_with_a_password_in_its_tracking_uri_stores_and_prints_it_nowhere(tmp_path, mlflow_uri, capsys):
    """The config names a password-protected server (a tracker on the test store stands in for it, and reports that
    URI as its own): the password is in no MLflow param, tag or artifact, nor in report.json, tracking.json or
    the printed table."""
    from mlflow import MlflowClient

    from tda_clean.cli import format_table
    from tda_clean.pipeline import run_pipeline
    from tda_clean.tracking.mlflow_tracker import MlflowTracker

    uri = f"http://alice:{SECRET}@mlflow.example:5000"
    config = parse_config(table_config(write_table(tmp_path / "t.csv"), uri))
    assert config.tracking.tracking_uri == uri and SECRET not in json.dumps(config.flat())  # JSON dumps hide it
    tracker = MlflowTracker(mlflow_uri, "credentials")
    tracker.tracking_uri = uri  # what a tracker on that server holds; its client stays on the test store
    report = run_pipeline(config, tmp_path / "run", tracker=tracker)
    print(format_table(report))
    out, err = capsys.readouterr()
    assert "alice:***@mlflow.example" in out and SECRET not in out + err
    run_dir = Path(report["run_dir"])
    for name in ("report.json", "tracking.json"):
        assert SECRET not in (run_dir / name).read_text(), name
    assert report["mlflow"]["tracking_uri"] == "http://alice:***@mlflow.example:5000"

    client = MlflowClient(tracking_uri=mlflow_uri)
    runs = client.search_runs([tracker.experiment_id])
    assert len(runs) == 3
    for run in runs:
        assert SECRET not in json.dumps([run.data.params, run.data.tags, run.info.run_name]), run.info.run_name
    parent = client.get_run(report["mlflow"]["parent_run_id"])
    assert parent.data.params["tracking.tracking_uri"] == "http://alice:***@mlflow.example:5000"
    with tempfile.TemporaryDirectory() as tmp:
        for artifact in ("config.yaml", "report.json"):
            text = Path(client.download_artifacts(parent.info.run_id, artifact, tmp)).read_text()
            assert SECRET not in text and "alice:***@mlflow.example" in text, artifact
    assert SECRET in (run_dir / "config.yaml").read_text()  # the local copy keeps it: `apply` reconnects with it


def test_prefect_stores_the_config_parameter_without_the_password():
    """Prefect keeps a flow run's parameters (the config) in its database and UI: it serialises them with the
    function below, which must not see the password; the run folder's copy (context REVEAL_CREDENTIALS) keeps it."""
    from flows.clean import clean

    from tda_clean.config import REVEAL_CREDENTIALS

    uri = f"postgresql://alice:{SECRET}@db.example/mlflow"
    config = parse_config({"data": {"kind": "digits"}, "model": {"kind": "mlp"}, "tracking": {"tracking_uri": uri}})
    stored = clean.serialize_parameters({"config": config})
    assert SECRET not in json.dumps(stored) and stored["config"]["tracking"]["tracking_uri"] == \
        "postgresql://alice:***@db.example/mlflow"
    assert config.tracking.tracking_uri == uri  # the run itself still connects with it
    assert config.model_dump(mode="json", context={REVEAL_CREDENTIALS: True})["tracking"]["tracking_uri"] == uri


def test_an_unexpected_error_prints_its_traceback_without_the_password(monkeypatch, capsys, tmp_path):
    """A bug (not bad input) exits 1 with the traceback, credentials masked."""
    from tda_clean import cli

    def boom(*args, **kwargs):
        raise RuntimeError(f"could not reach http://alice:{SECRET}@mlflow.example:5000")

    monkeypatch.setattr("tda_clean.pipeline.run_pipeline", boom)
    config = tmp_path / "c.yaml"
    config.write_text("data: {kind: digits}\nmodel: {kind: mlp}\n")
    code = cli.main(["run", str(config), "--engine", "local"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" in err and "RuntimeError" in err
    assert SECRET not in err and "alice:***@mlflow.example" in err
