"""The tracker interface: every call names its run explicitly, so it works from any thread.

MLflow's fluent "active run" is thread-local; Prefect runs tasks in worker threads, where a bare
``mlflow.log_metric`` silently starts an orphan run. The library therefore never relies on an
active run: :meth:`Tracker.start_run` returns an id and every later call takes it.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover - typing only; keeps pandas/torch out of import time
    import pandas as pd
    import torch

    from tda_clean.tracking.servable import ServingInput

RunStatus = Literal["FINISHED", "FAILED"]
TERMINAL_STATUSES: tuple[str, ...] = ("FINISHED", "FAILED")
#: Tag that links a child run to its parent (MLflow's own name, used by every tracker).
PARENT_TAG = "mlflow.parentRunId"
#: Tag holding the failure message of a FAILED run.
ERROR_TAG = "error"


def check_status(status: str) -> None:
    """Raise ``ValueError`` unless ``status`` is ``"FINISHED"`` or ``"FAILED"``."""
    if status not in TERMINAL_STATUSES:
        raise ValueError(f"run status must be one of {TERMINAL_STATUSES}, got {status!r}")


@runtime_checkable
class Tracker(Protocol):
    """Experiment tracking with explicit run ids (thread-safe by construction)."""

    def start_run(
        self, name: str, *, parent_run_id: str | None = None, tags: dict[str, str] | None = None
    ) -> str:
        """Create a run (a child of ``parent_run_id`` when given) and return its id."""

    def child_runs(self, parent_run_id: str) -> dict[str, str]:
        """``{run name: run id}`` of the child runs of ``parent_run_id`` (the first one when names repeat)."""

    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        """Log parameters; values longer than MLflow's limit (6,000 chars) are truncated."""

    def log_metrics(self, run_id: str, metrics: dict[str, float]) -> None:
        """Log several metrics in one batch."""

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        """Set tags (values truncated to MLflow's 8,000-char limit)."""

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a local file (or folder) under ``artifact_path`` of the run's artifacts."""

    def log_dataset(
        self, run_id: str, df: pd.DataFrame, *, name: str, targets: str | None, context: str
    ) -> None:
        """Record ``df`` as an input of the run (``context``: e.g. ``"training"``)."""

    def log_model(self, run_id: str, model: torch.nn.Module, *, name: str, serving: ServingInput | None = None) -> str:
        """Log a torch model as an output of the run, without touching any active run; return its model id.
        With ``serving`` (:class:`tda_clean.tracking.servable.ServingInput`) it is logged to load without
        tda_clean and predict on raw rows."""

    def model_tags(self, model_id: str) -> dict[str, str]:
        """The tags of a logged model (``{}`` for none): :data:`tda_clean.tracking.servable.SERVABLE_TAG` and
        :data:`~tda_clean.tracking.servable.FALLBACK_TAG` when it was logged with ``serving``."""

    def register_model(self, run_id: str, model_id: str, *, name: str, alias: str | None = None) -> str:
        """Register a logged model as a new version of registered model ``name`` (created if missing);
        point ``alias`` at that version when given. Returns the version."""

    def end_run(self, run_id: str, status: RunStatus, message: str | None = None) -> None:
        """Mark the run terminated; a FAILED run gets ``message`` as its ``error`` tag."""

    def info(self) -> dict[str, Any]:
        """``{"tracking_uri": ..., "experiment_id": ...}`` (``None`` values when disabled); the URI without credentials
        (:func:`tda_clean.redact.redact`): it is printed and stored in ``report.json``."""


class NullTracker(Tracker):
    """Tracking disabled: every call is accepted and ignored (the protocol's bodies do nothing); ids are ``""``."""

    def start_run(
        self, name: str, *, parent_run_id: str | None = None, tags: dict[str, str] | None = None
    ) -> str:
        return ""

    def child_runs(self, parent_run_id: str) -> dict[str, str]:
        return {}

    def log_model(self, run_id: str, model: torch.nn.Module, *, name: str, serving: ServingInput | None = None) -> str:
        return ""

    def model_tags(self, model_id: str) -> dict[str, str]:
        return {}

    def register_model(self, run_id: str, model_id: str, *, name: str, alias: str | None = None) -> str:
        return ""

    def end_run(self, run_id: str, status: RunStatus, message: str | None = None) -> None:
        check_status(status)

    def info(self) -> dict[str, Any]:
        return {"tracking_uri": None, "experiment_id": None}
