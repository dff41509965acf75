"""One tracking script, run against both trackers and read back (MLflow through MlflowClient)."""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from tda_clean.tracking import ERROR_TAG, PARENT_TAG, STAGE_TAG, log_before_after

BEFORE = {
    "accuracy": 0.80,
    "worst_group_accuracy": 0.55,
    "accuracy_sex=Female": 0.70,
    "accuracy_sex=Female&race=White": 0.65,
    "demographic_parity_difference": 0.20,
}
AFTER = {
    "accuracy": 0.82,
    "worst_group_accuracy": 0.61,
    "accuracy_sex=Female": 0.76,
    "accuracy_sex=Female&race=White": 0.70,
    "demographic_parity_difference": 0.12,
}
LONG_VALUE = "x" * 7000


def run_script(tracker: Any, workdir: Path) -> dict[str, str]:
    """What the pipeline does: parent run, params, before/after, artifact, dataset, model, end."""
    parent = tracker.start_run("clean", tags={"prefect.flow_run_id": "fr-1", "config_hash": "abc"})
    tracker.log_params(parent, {"model.kind": "logistic", "train.lr": "0.1", "long": LONG_VALUE})
    children = log_before_after(tracker, parent, BEFORE, AFTER)

    report = workdir / "report.json"
    report.write_text(json.dumps({"before": BEFORE, "after": AFTER}))
    tracker.log_artifact(parent, report, "reports")
    df = pd.DataFrame({"x": [0.5, 1.5, 2.5], "sex": ["F", "M", "F"], "label": [0, 1, 1]})
    tracker.log_dataset(parent, df, name="adult-train", targets="label", context="training")

    errors: list[BaseException] = []

    def worker() -> None:  # a Prefect task in a worker thread
        try:
            torch.manual_seed(0)
            tracker.log_model(parent, torch.nn.Linear(3, 2), name="model")
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    tracker.end_run(parent, "FINISHED")

    failed = tracker.start_run("broken")
    tracker.end_run(failed, "FAILED", "column 'label' not found")
    return {"parent": parent, "failed": failed, **children}


def test_scenario(tracked: tuple[Any, Any], tmp_path: Path) -> None:
    tracker, reader = tracked
    ids = run_script(tracker, tmp_path)
    key = reader.key
    runs = reader.runs()

    # exactly the runs we made: no orphan from the worker thread
    assert set(runs) == {ids["parent"], ids["before"], ids["after"], ids["failed"]}
    parent, before, after, failed = (runs[ids[k]] for k in ("parent", "before", "after", "failed"))

    # parent/child linkage and stage tags
    for stage, child in (("before", before), ("after", after)):
        assert child.name == stage
        assert child.tags[PARENT_TAG] == ids["parent"]
        assert child.tags[STAGE_TAG] == stage
        assert child.status == "FINISHED"
    assert PARENT_TAG not in parent.tags and PARENT_TAG not in failed.tags
    assert parent.tags["prefect.flow_run_id"] == "fr-1"

    # identical metric keys in both children, values as given
    assert set(before.metrics) == set(after.metrics) == {key(k) for k in BEFORE}
    for name, value in BEFORE.items():
        assert before.metrics[key(name)] == pytest.approx(value)
        assert after.metrics[key(name)] == pytest.approx(AFTER[name])

    # before_/after_/delta_ on the parent, nothing else
    expected = {}
    for name in BEFORE:
        expected[key(f"before_{name}")] = BEFORE[name]
        expected[key(f"after_{name}")] = AFTER[name]
        expected[key(f"delta_{name}")] = AFTER[name] - BEFORE[name]
    assert parent.metrics == pytest.approx(expected)

    # params, with the long value truncated to MLflow's limit
    assert parent.params["model.kind"] == "logistic" and parent.params["train.lr"] == "0.1"
    assert len(parent.params["long"]) <= 6000 and parent.params["long"].startswith("xxx")

    # artifact round-trip, dataset input, model output
    assert json.loads(reader.artifact(ids["parent"], "reports/report.json")) == {
        "before": BEFORE, "after": AFTER}
    assert parent.datasets == [("adult-train", "training")]
    assert parent.models == ["model"]

    # statuses and the error tag
    assert parent.status == "FINISHED" and ERROR_TAG not in parent.tags
    assert failed.status == "FAILED"
    assert failed.tags[ERROR_TAG] == "column 'label' not found"


def test_mismatched_keys_raise_before_logging(tracked: tuple[Any, Any]) -> None:
    tracker, reader = tracked
    parent = tracker.start_run("clean")
    with pytest.raises(ValueError, match="only in after"):
        log_before_after(tracker, parent, {"accuracy": 0.5}, {"accuracy": 0.6, "extra": 1.0})
    assert set(reader.runs()) == {parent}
    assert reader.runs()[parent].metrics == {}


def test_bad_status_rejected(tracked: tuple[Any, Any]) -> None:
    tracker, _ = tracked
    run_id = tracker.start_run("x")
    with pytest.raises(ValueError, match="FINISHED"):
        tracker.end_run(run_id, "KILLED")


def test_param_cannot_change(tracked: tuple[Any, Any]) -> None:
    tracker, reader = tracked
    run_id = tracker.start_run("x")
    tracker.log_params(run_id, {"seed": "0"})
    tracker.log_params(run_id, {"seed": "0"})  # same value again is fine
    with pytest.raises(ValueError, match="seed"):
        tracker.log_params(run_id, {"seed": "1"})
    assert reader.runs()[run_id].params == {"seed": "0"}


def test_log_before_after_again_reuses_the_children(tracked: tuple[Any, Any]) -> None:
    """A log stage killed after the children were created and run again: still one ``before`` and one ``after``."""
    tracker, reader = tracked
    parent = tracker.start_run("parent")
    first = log_before_after(tracker, parent, {"accuracy": 0.5}, {"accuracy": 0.6})
    assert tracker.child_runs(parent) == first
    again = log_before_after(tracker, parent, {"accuracy": 0.5}, {"accuracy": 0.7})
    assert again == first
    runs = reader.runs()
    assert sorted(r.name for r in runs.values()) == ["after", "before", "parent"]
    assert runs[first["after"]].metrics[reader.key("accuracy")] == 0.7
