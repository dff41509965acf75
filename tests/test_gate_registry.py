"""The release gate through the MLflow model registry: every after-model is registered; the `release` alias moves
only to a version whose gate passed — by default, one that does not regress against its before-model — and the
MLflow runs say what happened (name, status, tags, description, the registered model on the parent)."""
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

    passed = run_pipeline(parse_config({**table_config(csv, mlflow_uri), "seed": 2, "gate": {"min_accuracy": 0.5}}),
                          tmp_path / "passed")
    assert passed["gate"]["passed"] is True, passed["gate"]
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


def _parent(client, report):
    return client.get_run(report["mlflow"]["parent_run_id"])


def test_default_gate_keeps_the_alias_off_a_regressed_model_and_the_run_says_so(tmp_path, mlflow_uri):
    """No thresholds: seed 0 does not regress (released); with seed 1 relabeling worsens a fairness gap, so the
    alias stays on the earlier version, the parent run ends FAILED, named and tagged ``gate FAILED``."""
    from mlflow import MlflowClient

    csv = write_table(tmp_path / "t.csv")
    client = MlflowClient(tracking_uri=mlflow_uri)
    good = run_pipeline(parse_config(table_config(csv, mlflow_uri)), tmp_path / "good")
    assert good["gate"] == {"passed": True, "reasons": []}
    assert str(client.get_model_version_by_alias("table-test", "release").version) == "1"

    worse = run_pipeline(parse_config({**table_config(csv, mlflow_uri), "seed": 1}), tmp_path / "worse")
    gaps = [k for k in ("demographic_parity_difference", "equalized_odds_difference")
            if worse["after"][k] > worse["before"][k]]
    assert gaps, "this scenario must worsen a fairness gap (lower is better)"  # what the gate has to catch
    assert worse["gate"]["passed"] is False
    assert sorted(r.split(" ")[0] for r in worse["gate"]["reasons"]) == sorted(gaps)
    assert str(client.get_model_version_by_alias("table-test", "release").version) == "1"  # not moved
    assert [str(v.version) for v in client.search_model_versions("name='table-test'")] in (["2", "1"], ["1", "2"])

    ok, failed = _parent(client, good), _parent(client, worse)
    assert ok.info.status == "FINISHED" and failed.info.status == "FAILED"
    assert ok.info.run_name.startswith("table-test · cleanlab → relabel · ") and ok.info.run_name.endswith("gate passed")
    assert failed.info.run_name.endswith(" · gate FAILED")
    assert ok.data.tags["gate"] == "passed" and failed.data.tags["gate"] == "failed"
    assert "regressed" in failed.data.tags["gate_reasons"] and "regressed" in failed.data.tags["error"]
    note = failed.data.tags["mlflow.note.content"]
    assert note.startswith("### table-test: cleanlab → relabel") and "**Gate FAILED**" in note
    assert "`release` alias was **not** moved" in note and "| accuracy | ↑ higher |" in note
    # the registered model is linked from the parent; the children carry the config's parameters too
    assert failed.data.tags["registered_model_uri"] == "models:/table-test/2"
    assert failed.data.tags["release_alias"] == "not moved" and ok.data.tags["release_alias"] == "release"
    assert ok.data.tags["registered_model_uri"] == "models:/table-test/1"
    children = client.search_runs([worse["mlflow"]["experiment_id"]],
                                  f"tags.`mlflow.parentRunId` = '{failed.info.run_id}'")
    assert sorted(c.info.run_name for c in children) == ["after", "before"]
    for child in children:
        assert child.data.params["detector.kind"] == "cleanlab" and child.data.params == failed.data.params
        assert child.data.tags["mlflow.note.content"].startswith(f"{child.info.run_name.capitalize()}-model of")


def test_a_run_awaiting_review_stays_open_and_says_so(tmp_path, mlflow_uri):
    from mlflow import MlflowClient

    csv = write_table(tmp_path / "t.csv")
    waiting = run_pipeline(parse_config({**table_config(csv, mlflow_uri), "review": "required"}), tmp_path / "r")
    assert waiting["status"] == "awaiting_review"
    parent = _parent(MlflowClient(tracking_uri=mlflow_uri), waiting)
    assert parent.info.status == "RUNNING" and parent.info.run_name.endswith(" · awaiting review")
    assert parent.data.tags["gate"] == "pending" and parent.data.tags["status"] == "awaiting_review"
    assert "tda-clean apply" in parent.data.tags["mlflow.note.content"]


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
