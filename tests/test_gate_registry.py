"""The release gate through the MLflow model registry: every after-model is registered; the `release` alias moves
only to a version whose gate passed."""
from __future__ import annotations

import pytest

from tda_clean.config import parse_config
from tda_clean.pipeline import run_pipeline
from tests.tables import table_config, write_table


def test_alias_moves_only_when_gate_passes(tmp_path, mlflow_uri, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    elsewhere = tmp_path / "elsewhere"  # cwd away from the store: MLflow's global default must not be used
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    csv = write_table(tmp_path / "t.csv")
    client = MlflowClient(tracking_uri=mlflow_uri)

    blocked = run_pipeline(parse_config({**table_config(csv, mlflow_uri), "gate": {"min_accuracy": 0.999}}),
                           tmp_path / "blocked")
    assert blocked["gate"]["passed"] is False
    versions = client.search_model_versions("name='table-test'")
    assert [str(v.version) for v in versions] == ["1"]
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias("table-test", "release")

    passed = run_pipeline(parse_config({**table_config(csv, mlflow_uri), "seed": 1, "gate": {"min_accuracy": 0.5}}),
                          tmp_path / "passed")
    assert passed["gate"]["passed"] is True
    release = client.get_model_version_by_alias("table-test", "release")
    assert str(release.version) == "2"
    after_child = [r for r in client.search_runs([passed["mlflow"]["experiment_id"]])
                   if r.data.tags.get("mlflow.parentRunId") == passed["mlflow"]["parent_run_id"] and r.info.run_name == "after"]
    assert release.run_id == after_child[0].info.run_id

    again_blocked = run_pipeline(parse_config({**table_config(csv, mlflow_uri), "seed": 2, "gate": {"min_accuracy": 0.999}}),
                                 tmp_path / "blocked2")
    assert again_blocked["gate"]["passed"] is False
    assert not (elsewhere / "mlflow.db").exists()
    assert str(client.get_model_version_by_alias("table-test", "release").version) == "2"  # still the last good one


def test_gate_blocks_a_backdoored_model_and_releases_the_cleaned_one(tmp_path, mlflow_uri, monkeypatch):
    """Issue 5: BadNets on digits (1% poisons). Without cleaning the attack works and the gate blocks the release;
    Δ-influence + unlearning (retrain) drives attack success under the gate and the `release` alias moves."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    monkeypatch.chdir(tmp_path)
    base = {
        "name": "digits-gate", "seed": 1, "data": {"kind": "digits"},
        "scenario": {"kind": "badnets", "target": 0, "rate": 0.01, "patch_size": 2, "patch_value": 1.0},
        "model": {"kind": "cnn", "channels": [16, 32], "hidden": 64},
        "train": {"optimizer": "adam", "lr": 0.003, "l2": 0.0001, "epochs": 60, "batch_size": 64, "patience": 8,
                  "device": "cpu"},
        "gate": {"max_attack_success_rate": 0.02, "min_accuracy": 0.9},
        "tracking": {"enabled": True, "tracking_uri": mlflow_uri, "experiment": "gate"},
    }
    client = MlflowClient(tracking_uri=mlflow_uri)
    blocked = run_pipeline(parse_config({**base, "detector": {"kind": "random", "fraction": 0.01},
                                         "action": {"kind": "none"}}), tmp_path / "blocked")
    assert blocked["after"]["attack_success_rate"] > 0.5
    assert blocked["gate"]["passed"] is False
    assert any("attack_success_rate" in r for r in blocked["gate"]["reasons"])
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias("digits-gate", "release")

    cleaned = run_pipeline(parse_config({**base, "detector": {"kind": "delta_influence"},
                                         "action": {"kind": "unlearn", "method": "retrain"}}), tmp_path / "cleaned")
    assert cleaned["selection"]["n_flagged"] >= 1
    assert cleaned["after"]["attack_success_rate"] <= 0.02, cleaned["after"]
    assert cleaned["gate"]["passed"] is True
    release = client.get_model_version_by_alias("digits-gate", "release")
    assert str(release.version) == "2"
