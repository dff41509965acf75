"""Fixtures (the migrated MLflow store ``mlflow_uri`` comes from tests/conftest.py):
``tracked``: each tracker (in-memory, MLflow) with a reader that returns what it recorded in one shape.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from tda_clean.tracking import mlflow_key
from tda_clean.tracking.mlflow_tracker import MlflowTracker
from tests.memory_tracker import InMemoryTracker


@dataclass
class RunView:
    run_id: str
    name: str
    status: str
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]
    datasets: list[tuple[str, str]] = field(default_factory=list)  # (name, context)
    models: list[str] = field(default_factory=list)  # logged model names


class MemoryReader:
    """Reads an :class:`InMemoryTracker`; metric keys are the original names."""

    key: Callable[[str], str] = staticmethod(lambda name: name)

    def __init__(self, tracker: InMemoryTracker) -> None:
        self.tracker = tracker

    def runs(self) -> dict[str, RunView]:
        return {
            r.run_id: RunView(r.run_id, r.name, r.status, dict(r.tags), dict(r.params),
                              dict(r.metrics), [(d["name"], d["context"]) for d in r.datasets],
                              [m["name"] for m in r.models])
            for r in self.tracker.runs.values()
        }

    def artifact(self, run_id: str, path: str) -> bytes:
        return self.tracker.runs[run_id].artifacts[path]


class MlflowReader:
    """Reads an :class:`MlflowTracker`'s store back through a fresh ``MlflowClient``."""

    key: Callable[[str], str] = staticmethod(mlflow_key)

    def __init__(self, tracker: MlflowTracker) -> None:
        from mlflow import MlflowClient

        self.tracker = tracker
        self.client = MlflowClient(tracking_uri=tracker.tracking_uri)

    def runs(self, experiment_ids: list[str] | None = None) -> dict[str, RunView]:
        out: dict[str, RunView] = {}
        for run in self.client.search_runs(experiment_ids or [self.tracker.experiment_id]):
            datasets = [
                (d.dataset.name, {t.key: t.value for t in d.tags}.get("mlflow.data.context", ""))
                for d in run.inputs.dataset_inputs
            ]
            outputs = run.outputs.model_outputs if run.outputs else []
            models = [self.client.get_logged_model(o.model_id).name for o in outputs]
            out[run.info.run_id] = RunView(
                run.info.run_id, run.info.run_name, run.info.status, dict(run.data.tags),
                dict(run.data.params), dict(run.data.metrics), datasets, models,
            )
        return out

    def artifact(self, run_id: str, path: str) -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            local = self.client.download_artifacts(run_id, path, tmp)
            return Path(local).read_bytes()

    def logged_models(self) -> list[Any]:
        return list(self.client.search_logged_models(experiment_ids=[self.tracker.experiment_id]))


@pytest.fixture(params=["memory", "mlflow"])
def tracked(request: pytest.FixtureRequest) -> tuple[Any, Any]:
    """``(tracker, reader)`` for each tracker kind; the MLflow one on a private SQLite store."""
    if request.param == "memory":
        tracker = InMemoryTracker()
        return tracker, MemoryReader(tracker)
    uri = request.getfixturevalue("mlflow_uri")
    tracker = MlflowTracker(uri, "tda-clean-test")
    return tracker, MlflowReader(tracker)
