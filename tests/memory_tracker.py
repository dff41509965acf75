"""An in-memory tracker (a test double): records everything, with the MLflow tracker's semantics."""
from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tda_clean.tracking.base import ERROR_TAG, PARENT_TAG, RunStatus, check_status
from tda_clean.tracking.keys import MAX_PARAM_VALUE_LENGTH, MAX_TAG_VALUE_LENGTH, truncate

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import torch


@dataclass
class RunRecord:
    """Everything logged to one run. ``artifacts`` maps artifact paths (posix) to file bytes."""

    run_id: str
    name: str
    parent_run_id: str | None
    status: str = "RUNNING"
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, bytes] = field(default_factory=dict)
    datasets: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)


class InMemoryTracker:
    """Keeps runs in ``self.runs`` (id -> :class:`RunRecord`); safe to call from several threads.

    Like MLflow: child runs carry the ``mlflow.parentRunId`` tag, re-logging a param with a
    different value raises ``ValueError``, unknown run ids raise ``KeyError``, and a FAILED run
    gets its message as the ``error`` tag. Metric names are stored as given (no key mapping).
    """

    def __init__(self, experiment: str = "tda-clean") -> None:
        self.experiment = experiment
        self.runs: dict[str, RunRecord] = {}
        #: registered model name -> {"versions": [(version, run_id, model_id)], "aliases": {alias: version}}
        self.registry: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def _run(self, run_id: str) -> RunRecord:
        try:
            return self.runs[run_id]
        except KeyError:
            raise KeyError(f"unknown run id {run_id!r}") from None

    def start_run(
        self, name: str, *, parent_run_id: str | None = None, tags: dict[str, str] | None = None
    ) -> str:
        with self._lock:
            if parent_run_id is not None:
                self._run(parent_run_id)
            run_id = uuid.uuid4().hex
            record = RunRecord(run_id=run_id, name=name, parent_run_id=parent_run_id)
            record.tags["mlflow.runName"] = name
            if parent_run_id is not None:
                record.tags[PARENT_TAG] = parent_run_id
            record.tags.update({k: truncate(v, MAX_TAG_VALUE_LENGTH) for k, v in (tags or {}).items()})
            self.runs[run_id] = record
            return run_id

    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        with self._lock:
            run = self._run(run_id)
            new = {k: truncate(v, MAX_PARAM_VALUE_LENGTH) for k, v in params.items()}
            for key, value in new.items():
                if key in run.params and run.params[key] != value:
                    raise ValueError(
                        f"param {key!r} already logged as {run.params[key]!r}, cannot change to {value!r}"
                    )
            run.params.update(new)

    def child_runs(self, parent_run_id: str) -> dict[str, str]:
        with self._lock:
            found = [r for r in self.runs.values() if r.parent_run_id == parent_run_id]
        return {r.name: r.run_id for r in reversed(found)}

    def log_metrics(self, run_id: str, metrics: dict[str, float]) -> None:
        with self._lock:
            self._run(run_id).metrics.update({k: float(v) for k, v in metrics.items()})

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        with self._lock:
            self._run(run_id).tags.update({k: truncate(v, MAX_TAG_VALUE_LENGTH) for k, v in tags.items()})

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        src = Path(path)
        if not src.exists():
            raise FileNotFoundError(f"artifact {src} does not exist")
        prefix = f"{artifact_path.strip('/')}/" if artifact_path else ""
        files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
        base = src.parent
        blobs = {prefix + p.relative_to(base).as_posix(): p.read_bytes() for p in files}
        with self._lock:
            self._run(run_id).artifacts.update(blobs)

    def log_dataset(
        self, run_id: str, df: pd.DataFrame, *, name: str, targets: str | None, context: str
    ) -> None:
        if targets is not None and targets not in df.columns:
            raise ValueError(f"targets column {targets!r} not in dataset {name!r}")
        entry = {"name": name, "targets": targets, "context": context,
                 "n_rows": int(len(df)), "columns": [str(c) for c in df.columns]}
        with self._lock:
            self._run(run_id).datasets.append(entry)

    def log_model(self, run_id: str, model: torch.nn.Module, *, name: str, serving=None) -> str:
        n_params = sum(int(p.numel()) for p in model.parameters())
        model_id = f"m-{uuid.uuid4().hex}"
        entry = {"name": name, "class": type(model).__name__, "n_parameters": n_params, "model_id": model_id,
                 "serving": serving}
        with self._lock:
            self._run(run_id).models.append(entry)
        return model_id

    def model_tags(self, model_id: str) -> dict[str, str]:
        return {}  # nothing is exported here: no servable tags

    def register_model(self, run_id: str, model_id: str, *, name: str, alias: str | None = None) -> str:
        with self._lock:
            self._run(run_id)
            entry = self.registry.setdefault(name, {"versions": [], "aliases": {}})
            version = str(len(entry["versions"]) + 1)
            entry["versions"].append((version, run_id, model_id))
            if alias is not None:
                entry["aliases"][alias] = version
        return version

    def end_run(self, run_id: str, status: RunStatus, message: str | None = None) -> None:
        check_status(status)
        with self._lock:
            run = self._run(run_id)
            run.status = status
            if status == "FAILED" and message is not None:
                run.tags[ERROR_TAG] = truncate(message, MAX_TAG_VALUE_LENGTH)

    def info(self) -> dict[str, Any]:
        return {"tracking_uri": "memory:", "experiment_id": self.experiment}
