"""The Prefect flow end to end: a real flow run under the test harness, MLflow on a temporary SQLite store,
results read back through the MLflow client and compared with report.json."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tda_clean.config import parse_config
from tda_clean.errors import InputError
from tda_clean.tracking import mlflow_key
from tests.tables import table_config, write_table

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _runs(uri: str):
    client = _client(uri)
    exp = client.get_experiment_by_name("test")
    return client, client.search_runs([exp.experiment_id]) if exp else []


@pytest.mark.parametrize("detector", [
    {"kind": "cleanlab", "folds": 3},
    {"kind": "self_influence", "damping": 0.0, "max_flagged": 60},
    {"kind": "harmful", "objective": "worst_group_loss", "damping": 0.0, "fraction": 0.05},
], ids=lambda d: d["kind"])
def test_flow_logs_parent_and_identical_children(tmp_path: Path, mlflow_uri: str, detector: dict):
    from flows.clean import clean

    csv = write_table(tmp_path / "table.csv")
    before_bytes = csv.read_bytes()
    action = {"kind": "remove"} if detector["kind"] == "harmful" else {"kind": "relabel"}
    config = parse_config(table_config(csv, mlflow_uri, detector=detector, action=action))
    report = clean(config, output=str(tmp_path / "run"))

    on_disk = json.loads((tmp_path / "run" / "report.json").read_text())
    assert on_disk["before"] == report["before"] and on_disk["after"] == report["after"]
    for key in ("config_hash", "dataset", "before", "after", "selection", "actions", "gate", "timings_s", "mlflow"):
        assert key in on_disk
    assert set(on_disk["before"]) == set(on_disk["after"])
    assert {"accuracy", "balanced_accuracy", "worst_group_accuracy", "accuracy_sex=F", "accuracy_sex=M&region=north",
            "demographic_parity_difference", "equalized_odds_difference"} <= set(on_disk["before"])
    assert on_disk["selection"]["n_flagged"] > 0 and 0 <= on_disk["selection"]["recall"] <= 1
    assert csv.read_bytes() == before_bytes  # input untouched
    assert on_disk["release"] == report["release"] and on_disk["release"]["servable"] is True  # the exported pyfunc

    client, runs = _runs(mlflow_uri)
    parent_id = report["mlflow"]["parent_run_id"]
    parent = client.get_run(parent_id)
    assert parent.info.status == ("FINISHED" if report["gate"]["passed"] else "FAILED")  # a failed gate shows red
    assert parent.info.run_name.startswith(f"table-test · {detector['kind']} → {action['kind']} · ")
    assert parent.data.tags["config_hash"] == config.config_hash()
    assert parent.data.tags["prefect_flow_run_id"] not in ("", "None")
    assert "git_commit" in parent.data.tags
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id}
    assert set(children) == {"before", "after"}
    assert len(runs) == 3  # no orphan runs from worker threads
    b, a = children["before"].data.metrics, children["after"].data.metrics
    assert set(b) == set(a) == {mlflow_key(k) for k in report["before"]}
    for name, value in report["before"].items():
        assert b[mlflow_key(name)] == pytest.approx(value)
        assert a[mlflow_key(name)] == pytest.approx(report["after"][name])
        assert parent.data.metrics[mlflow_key(f"delta_{name}")] == pytest.approx(report["after"][name] - value)
    assert parent.data.params["scenario.rate"] == "0.3"
    artifacts = {f.path for f in client.list_artifacts(parent_id)}
    assert {"report.json", "audit.csv", "manifest.json", "before_after.png", "config.yaml"} <= artifacts
    assert [d.dataset.name for d in parent.inputs.dataset_inputs] == ["table-train"]

    from prefect.artifacts import Artifact

    table = Artifact.get("before-after")  # the latest flow run's table
    assert str(table.flow_run_id) == parent.data.tags["prefect_flow_run_id"]
    rows = json.loads(table.data)
    assert {r["metric"]: r["after"] for r in rows}["accuracy"] == pytest.approx(report["after"]["accuracy"], abs=1e-4)


def test_flow_failure_marks_parent_failed(tmp_path: Path, mlflow_uri: str):
    from flows.clean import clean

    csv = write_table(tmp_path / "table.csv")
    bad = table_config(csv, mlflow_uri, scenario={"kind": "group_flip", "column": "sex", "value": "X", "rate": 0.3})
    with pytest.raises(InputError, match="'X' not found in group 'sex'"):
        clean(parse_config(bad), output=str(tmp_path / "run"))
    _, runs = _runs(mlflow_uri)
    assert len(runs) == 1
    assert runs[0].info.status == "FAILED"
    assert "'X' not found" in runs[0].data.tags["error"]
    assert not (tmp_path / "run" / "report.json").exists()
