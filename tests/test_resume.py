"""Resume after a crash: the Prefect flow SIGKILLed during the influence (detection) stage and started again reuses
the completed stages and produces the same report as an uninterrupted run; a folder made by another config is
refused; --fresh recomputes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tda_clean.config import parse_config
from tda_clean.errors import InputError
from tda_clean.pipeline import run_pipeline
from tests.commands import command_env, tda_clean

CONFIG = {
    "name": "resume-test",
    "data": {"kind": "digits"},
    "scenario": {"kind": "uniform_flip", "rate": 0.1},
    "model": {"kind": "mlp", "hidden": [32]},
    "train": {"optimizer": "adam", "lr": 0.01, "epochs": 40, "patience": 5, "batch_size": 64},
    "detector": {"kind": "self_influence", "params": "all", "damping": 0.01, "dtype": "float64", "max_flagged": 60},
    "action": {"kind": "relabel"},
    # about resuming, not the gate: relabeling costs this model ~0.4 accuracy points, which the default
    # no-regression gate rightly blocks (exit 3); the runs here must finish (exit 0) to be compared
    "gate": {"no_regression": False},
}
SAME = ("dataset", "before", "after", "selection", "actions", "gate", "config_hash")


def _config(tmp_path: Path, mlflow_uri: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, "tracking": {"tracking_uri": mlflow_uri, "experiment": "resume"}}))
    return path


def _cli(*args: str, cwd: Path) -> subprocess.Popen:
    """``tda-clean run`` as a user runs it: the Prefect flow (temporary local server), output to files."""
    log = cwd / f"log-{time.monotonic_ns()}.txt"
    with open(log, "w") as out:
        proc = subprocess.Popen(tda_clean("run", *args), cwd=cwd, env=command_env(), stdout=out,
                                stderr=subprocess.STDOUT, text=True)
    proc.log_path = log  # type: ignore[attr-defined]
    return proc


def _output(proc: subprocess.Popen) -> str:
    return proc.log_path.read_text()  # type: ignore[attr-defined]


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path: Path, mlflow_uri: str):
    config = _config(tmp_path, mlflow_uri)
    reference = _cli(str(config), "--output", str(tmp_path / "reference"), cwd=tmp_path)
    assert reference.wait(timeout=300) == 0, _output(reference)

    crashed = tmp_path / "crashed"
    victim = _cli(str(config), "--output", str(crashed), cwd=tmp_path)
    deadline = time.time() + 240
    while not (crashed / "stages" / "train_before.json").exists():  # influence starts right after this marker
        assert victim.poll() is None and time.time() < deadline, "run ended before it could be killed"
        time.sleep(0.02)
    time.sleep(0.5)  # inside the influence computation (it takes seconds), not between stages
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert not (crashed / "stages" / "detect.json").exists() and not (crashed / "report.json").exists()

    resumed = _cli(str(config), "--output", str(crashed), cwd=tmp_path)
    assert resumed.wait(timeout=300) == 0, _output(resumed)
    assert "resumed (not recomputed): load, train_before" in _output(resumed)
    got = json.loads((crashed / "report.json").read_text())
    want = json.loads((tmp_path / "reference" / "report.json").read_text())
    assert got["resumed_stages"] == ["load", "train_before"]
    for key in SAME:
        assert got[key] == want[key], key
    assert got["timings_s"]["train_before"] == json.loads((crashed / "stages" / "train_before.json").read_text())["seconds"]

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("resume").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    # the killed run's parent was continued, not duplicated: reference + crashed/resumed = 2 parents, all ended
    # (FAILED when the release gate failed: both runs have the same results)
    assert len(parents) == 2 and {r.info.status for r in parents} == {"FINISHED" if got["gate"]["passed"] else "FAILED"}
    assert {r.info.status for r in runs if r not in parents} == {"FINISHED"}
    assert got["mlflow"]["parent_run_id"] in {p.info.run_id for p in parents}


def test_other_config_is_refused_and_fresh_recomputes(tmp_path: Path):
    cfg = parse_config({**CONFIG, "train": {**CONFIG["train"], "epochs": 3}, "detector": {"kind": "cleanlab", "folds": 2},
                        "action": {"kind": "remove"}, "tracking": {"enabled": False}})
    first = run_pipeline(cfg, tmp_path / "run")
    assert first["resumed_stages"] == []
    again = run_pipeline(cfg, tmp_path / "run")
    assert again["resumed_stages"] == ["load", "train_before", "detect", "act", "train_after", "evaluate_before",
                                       "evaluate_after"]
    assert again["after"] == first["after"]
    other = cfg.model_copy(update={"seed": 1})
    with pytest.raises(InputError, match=r"--output .*run: holds another run \(config_hash .* pass --fresh"):
        run_pipeline(other, tmp_path / "run")
    assert run_pipeline(other, tmp_path / "run", fresh=True)["resumed_stages"] == []


def test_non_run_folder_is_refused(tmp_path: Path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "precious.txt").write_text("keep me")
    cfg = parse_config({**CONFIG, "tracking": {"enabled": False}})
    with pytest.raises(InputError, match="not a tda-clean run folder"):
        run_pipeline(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "precious.txt").read_text() == "keep me"


def test_log_stage_killed_then_resumed_logs_one_before_and_one_after(tmp_path: Path):
    """The log stage dies after the child runs were created (as a SIGKILL would leave them); the rerun on the
    same folder continues the same parent and reuses its children instead of adding a second pair."""
    from tests.memory_tracker import InMemoryTracker

    class DiesOnce(InMemoryTracker):
        died = False

        def log_artifact(self, run_id, path, artifact_path=None):
            if not self.died:
                self.died = True
                raise RuntimeError("killed in the log stage")
            super().log_artifact(run_id, path, artifact_path)

    cfg = parse_config({**CONFIG, "train": {**CONFIG["train"], "epochs": 3}, "detector": {"kind": "cleanlab", "folds": 2},
                        "action": {"kind": "remove"}, "tracking": {"log_models": False}})
    tracker = DiesOnce()
    with pytest.raises(RuntimeError, match="killed in the log stage"):
        run_pipeline(cfg, tmp_path / "run", tracker=tracker)
    (parent,) = [r.run_id for r in tracker.runs.values() if r.parent_run_id is None]
    assert sorted(tracker.child_runs(parent)) == ["after", "before"]
    report = run_pipeline(cfg, tmp_path / "run", tracker=tracker)
    assert report["mlflow"]["parent_run_id"] == parent
    children = [r for r in tracker.runs.values() if r.parent_run_id == parent]
    assert sorted(r.name for r in children) == ["after", "before"] and len(tracker.runs) == 3
    assert {r.status for r in children} == {"FINISHED"}
    assert tracker.runs[parent].status == ("FINISHED" if report["gate"]["passed"] else "FAILED")


def test_log_stage_killed_while_registering_logs_each_model_once(tmp_path: Path):
    """Killed after both models were logged, before the registration: the rerun registers once, logs no model
    again (what the log stage did is recorded in the run folder as it happens)."""
    from tests.memory_tracker import InMemoryTracker

    class DiesOnce(InMemoryTracker):
        died = False

        def register_model(self, run_id, model_id, *, name, alias=None):
            if not self.died:
                self.died = True
                raise RuntimeError("killed while registering")
            return super().register_model(run_id, model_id, name=name, alias=alias)

    cfg = parse_config({**CONFIG, "train": {**CONFIG["train"], "epochs": 3}, "detector": {"kind": "cleanlab", "folds": 2},
                        "action": {"kind": "remove"}})
    tracker = DiesOnce()
    with pytest.raises(RuntimeError, match="killed while registering"):
        run_pipeline(cfg, tmp_path / "run", tracker=tracker)
    report = run_pipeline(cfg, tmp_path / "run", tracker=tracker)
    assert sorted((r.name.split(" · ")[0], len(r.models)) for r in tracker.runs.values()) == [
        ("after", 1), ("before", 1), ("resume-test", 0)]  # the parent: "resume-test · cleanlab → remove · <date>"
    assert [v[0] for v in tracker.registry["resume-test"]["versions"]] == ["1"]
    # report.json's release section (this tracker exports nothing: servable unknown), also when the log stage
    # itself is resumed and report.json is written anew
    (after,) = [r.models[0]["model_id"] for r in tracker.runs.values() if r.name == "after"]
    release = {"model_id": after, "registered_version": "1", "alias": "release" if report["gate"]["passed"] else None,
               "servable": None}
    again = run_pipeline(cfg, tmp_path / "run", tracker=tracker)
    assert report["release"] == again["release"] == release
    assert json.loads((tmp_path / "run" / "report.json").read_text())["release"] == release
