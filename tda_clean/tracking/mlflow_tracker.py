"""The MLflow tracker: ``MlflowClient`` with explicit run ids; mlflow is imported lazily.

No call here touches MLflow's fluent state (active run, global tracking URI, active experiment),
so the tracker is safe in Prefect worker threads and leaves no orphan or dangling active runs.
Metric, param and tag keys go through :func:`tda_clean.tracking.keys.mlflow_key`; param and tag values, error
messages and :meth:`MlflowTracker.info` go through :func:`tda_clean.redact.redact` (no credentials stored or printed).
"""
from __future__ import annotations

import os
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tda_clean.errors import InputError
from tda_clean.redact import redact
from tda_clean.tracking.base import ERROR_TAG, PARENT_TAG, RunStatus, check_status
from tda_clean.tracking.keys import MAX_PARAM_VALUE_LENGTH, MAX_TAG_VALUE_LENGTH, mlflow_keys, truncate

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import torch
    from mlflow import MlflowClient

    from tda_clean.tracking.servable import ServingInput

#: Seconds to wait for an http(s) tracking server before giving up (MLflow itself retries for minutes).
REACHABILITY_TIMEOUT_S = 3.0
_BATCH = 1000  # MLflow's MAX_ENTITIES_PER_BATCH (and 100 params/tags per batch)


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<cwd>/mlflow.db`` (artifacts in ./mlruns)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def check_reachable(uri: str, timeout: float = REACHABILITY_TIMEOUT_S) -> None:
    """Raise :class:`InputError` naming ``uri`` if an http(s) server does not answer in ``timeout`` s.

    Any HTTP answer (even 401/404) counts as reachable; other schemes are not checked. Credentials in the URI
    (``http://user:password@host``) are left out of the probe (urllib would read them as part of the host name).
    """
    if not uri.lower().startswith(("http://", "https://")):
        return
    parts = urllib.parse.urlsplit(uri)
    probe = urllib.parse.urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path.rstrip("/") + "/health",
                                     "", ""))
    try:
        with urllib.request.urlopen(probe, timeout=timeout):
            return
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InputError(
            f"MLflow tracking server {redact(uri)} is not reachable ({redact(reason)}); start it, fix "
            "tracking.tracking_uri / MLFLOW_TRACKING_URI, or set tracking.enabled=false"
        ) from None


class MlflowTracker:
    """Tracker on an MLflow tracking store, experiment created on first use.

    Args:
        tracking_uri: store URI; ``None`` means :func:`default_tracking_uri`.
        experiment: experiment name, created if missing.
        artifact_location: artifact root for a *new* experiment (MLflow's default otherwise).
    """

    def __init__(
        self, tracking_uri: str | None, experiment: str, *, artifact_location: str | None = None
    ) -> None:
        self.tracking_uri = tracking_uri or default_tracking_uri()
        check_reachable(self.tracking_uri)
        if redact(self.tracking_uri) != self.tracking_uri:  # MLflow prints "View run ... at: <URI>" when a run ends
            os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        try:
            self.client: MlflowClient = MlflowClient(tracking_uri=self.tracking_uri)
            found = self.client.get_experiment_by_name(experiment)
            if found is None:
                self.experiment_id = self.client.create_experiment(
                    experiment, artifact_location=artifact_location
                )
            elif found.lifecycle_stage == "deleted":
                raise InputError(f"MLflow experiment {experiment!r} is deleted in {redact(self.tracking_uri)}; "
                                 "restore it or set tracking.experiment to another name")
            else:
                self.experiment_id = found.experiment_id
        except MlflowException as exc:
            message = " ".join(redact(exc.message).split())  # one line (a wrong server answers with an HTML page)
            raise InputError(f"MLflow tracking store {redact(self.tracking_uri)}: {truncate(message, 400)}") from None
        except (OSError, ImportError, ValueError) as exc:  # bad path/scheme (InputError passes through)
            if isinstance(exc, InputError):
                raise
            raise InputError(f"MLflow tracking store {redact(self.tracking_uri)}: {redact(exc)}") from None
        self.experiment = experiment

    # ------------------------------------------------------------------ runs
    def start_run(
        self, name: str, *, parent_run_id: str | None = None, tags: dict[str, str] | None = None
    ) -> str:
        """Create a run; a child gets the ``mlflow.parentRunId`` tag. Returns the run id."""
        all_tags = _context_tags()
        all_tags.update({k: truncate(redact(v), MAX_TAG_VALUE_LENGTH) for k, v in (tags or {}).items()})
        if parent_run_id is not None:
            all_tags[PARENT_TAG] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=mlflow_keys(all_tags))
        return str(run.info.run_id)

    def child_runs(self, parent_run_id: str) -> dict[str, str]:
        runs = self.client.search_runs([self.experiment_id], f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
                                       order_by=["attributes.start_time DESC"])
        return {r.info.run_name: r.info.run_id for r in runs}

    def end_run(self, run_id: str, status: RunStatus, message: str | None = None) -> None:
        """Terminate the run; on FAILED the message is stored as the ``error`` tag first."""
        check_status(status)
        if status == "FAILED" and message is not None:
            self.client.set_tag(run_id, ERROR_TAG, truncate(redact(message), MAX_TAG_VALUE_LENGTH))
        self.client.set_terminated(run_id, status=status)

    # ------------------------------------------------------------------ values
    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        """Log params (values truncated); changing an already logged value raises ``ValueError``."""
        from mlflow.entities import Param

        from mlflow.exceptions import MlflowException

        items = [Param(k, truncate(redact(v), MAX_PARAM_VALUE_LENGTH)) for k, v in mlflow_keys(params).items()]
        try:
            for i in range(0, len(items), 100):
                self.client.log_batch(run_id, params=items[i : i + 100])
        except MlflowException as exc:  # e.g. a param re-logged with another value
            raise ValueError(f"run {run_id}: {redact(exc.message)}") from exc

    def log_metrics(self, run_id: str, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, 0) for k, v in mlflow_keys(metrics).items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(run_id, metrics=items[i : i + _BATCH])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, truncate(redact(v), MAX_TAG_VALUE_LENGTH)) for k, v in mlflow_keys(tags).items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, tags=items[i : i + 100])

    # ------------------------------------------------------------------ files, data, models
    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file (or a folder, kept under its own name) to the run's artifacts."""
        src = Path(path)
        if not src.exists():
            raise FileNotFoundError(f"artifact {src} does not exist")
        if src.is_dir():
            dest = f"{artifact_path.strip('/')}/{src.name}" if artifact_path else src.name
            self.client.log_artifacts(run_id, str(src), dest)
        else:
            self.client.log_artifact(run_id, str(src), artifact_path)

    def log_dataset(
        self, run_id: str, df: pd.DataFrame, *, name: str, targets: str | None, context: str
    ) -> None:
        """``mlflow.data.from_pandas`` + ``log_inputs`` with the ``mlflow.data.context`` tag."""
        import mlflow.data
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        from tda_clean.tracking.dataset_schema import with_schema

        if targets is not None and targets not in df.columns:
            raise ValueError(f"targets column {targets!r} not in dataset {name!r}")
        with warnings.catch_warnings():  # "integer column(s)" schema hint on every labelled frame
            warnings.filterwarnings("ignore", message=".*integer column", category=UserWarning)
            dataset = with_schema(mlflow.data.from_pandas(df, name=name, targets=targets), df)
            entity = dataset._to_mlflow_entity()
        tag = InputTag(key=MLFLOW_DATASET_CONTEXT, value=context)
        self.client.log_inputs(run_id, datasets=[DatasetInput(entity, [tag])])

    def log_model(self, run_id: str, model: torch.nn.Module, *, name: str, serving: ServingInput | None = None) -> str:
        """Log ``model`` as a LoggedModel output of ``run_id``: with ``serving``, the servable pyfunc of
        :mod:`tda_clean.tracking.servable` (loads without tda_clean, predicts on raw rows); without, the
        mlflow.pytorch flavor described next.

        Mirrors ``mlflow.pytorch.log_model`` through this tracker's client instead of the global
        tracking URI / active run / active experiment, so it works in any thread and against any
        store. ``pip_requirements`` is explicit (MLflow's inference costs several seconds); the
        format is ``pickle`` (MLflow 3's default ``pt2`` needs an input example to trace).
        Load it back with ``mlflow.pytorch.load_model(f"models:/{model_id}")``.
        """
        import mlflow.pytorch
        import torch
        from mlflow.entities import LoggedModelOutput
        from mlflow.models import Model

        logged = self.client.create_logged_model(self.experiment_id, name=name, source_run_id=run_id)
        try:
            self.client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
            meta = Model(artifact_path=logged.artifact_location, model_uuid=logged.model_id,
                         run_id=run_id, model_id=logged.model_id)
            with tempfile.TemporaryDirectory(prefix="tda-clean-model-") as tmp:
                local = os.path.join(tmp, "model")
                tags = {}
                if serving is not None:
                    from tda_clean.tracking.servable import save_servable

                    tags = save_servable(model, serving, local, mlflow_model=meta)
                else:
                    mlflow.pytorch.save_model(model, local, mlflow_model=meta, serialization_format="pickle",
                                              pip_requirements=[f"torch=={torch.__version__}"])
                self.client.log_model_artifacts(logged.model_id, local)
            if tags:
                self.client.set_logged_model_tags(logged.model_id, tags)
                self.set_tags(run_id, tags)
        except BaseException:
            self.client.finalize_logged_model(logged.model_id, "FAILED")
            raise
        self.client.finalize_logged_model(logged.model_id, "READY")
        return str(logged.model_id)

    def model_tags(self, model_id: str) -> dict[str, str]:
        return dict(self.client.get_logged_model(model_id).tags)

    def register_model(self, run_id: str, model_id: str, *, name: str, alias: str | None = None) -> str:
        """New version of registered model ``name`` from a logged model; ``alias`` moved to it when given."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(name)
        # the logged model's own artifact location: a "models:/<id>" source would be resolved through MLflow's
        # GLOBAL tracking URI, not this client's store
        source = self.client.get_logged_model(model_id).artifact_location
        version = self.client.create_model_version(name, source=source, run_id=run_id, model_id=model_id)
        if alias is not None:
            self.client.set_registered_model_alias(name, alias, version.version)
        return str(version.version)

    def info(self) -> dict[str, Any]:
        return {"tracking_uri": redact(self.tracking_uri), "experiment_id": self.experiment_id}


def _context_tags() -> dict[str, str]:
    """User/source/git tags the fluent ``start_run`` would add (best effort; never raises)."""
    try:
        from mlflow.tracking.context.registry import resolve_tags

        return {str(k): str(v) for k, v in resolve_tags().items()}
    except Exception:  # noqa: BLE001 - context tags are a convenience only
        return {}
