"""The ``clean`` Prefect flow: each pipeline stage runs as a task; the order lives in ``run_pipeline``.

Run it with ``tda-clean run CONFIG`` (from a checkout: ``python -m flows.cli run CONFIG``). With no
``PREFECT_API_URL`` set, Prefect starts its temporary local server; with no ``MLFLOW_TRACKING_URI``, MLflow
writes ``./mlflow.db``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from tda_clean.config import RunConfig, load_config
from tda_clean.errors import TdaCleanError
from tda_clean.pipeline import run_pipeline, stage_detect, stage_load, stage_log, stage_report

from .redaction import redact_exception, redact_prefect_logs, redacting
from .runners import check_dask_address, prefect_mapper

redact_prefect_logs()  # Prefect logs a failed task's or flow's exception itself: no credentials in those lines

IO_STAGES = (stage_load, stage_report, stage_log)  # read or write files / servers: worth a retry
MAPPED_STAGES = (stage_detect,)  # run in the flow itself; their shards become tasks on the configured runner


def _retry_unless_user_error(task, task_run, state) -> bool:
    """Retry transient I/O failures, never bad input (it would fail the same way again)."""
    return not isinstance(state.result(raise_on_failure=False), TdaCleanError)


def as_task(stage: Callable[..., Any], ctx, *args: Any) -> Any:
    """Stage runner for ``run_pipeline``: run ``stage`` as a Prefect task named after it (``train-before``...)."""
    if stage in MAPPED_STAGES:
        return stage(ctx, *args, mapper=prefect_mapper(ctx.config.runner))
    suffix = [a for a in args if isinstance(a, str) and a in ("before", "after")]
    name = "-".join([stage.__name__.removeprefix("stage_"), *suffix])
    io = stage in IO_STAGES
    wrapped = task(redacting(stage), name=name, cache_policy=NO_CACHE, persist_result=False,
                   retries=2 if io else 0, retry_delay_seconds=1, retry_condition_fn=_retry_unless_user_error)
    return wrapped(ctx, *args)


@flow(name="clean", log_prints=True)
def clean(config: RunConfig | str, output: str | None = None, overrides: list[str] | None = None,
          fresh: bool = False) -> dict[str, Any]:
    """Detect -> act -> retrain -> evaluate -> log. ``config`` is a RunConfig or a path to a YAML file.

    Stages a killed run on the same folder completed are reused unless ``fresh``."""
    redact_prefect_logs()  # again: handlers Prefect's logging set up since the import
    cfg = config if isinstance(config, RunConfig) else load_config(Path(config), overrides or [])
    if cfg.runner.kind == "dask" and cfg.runner.address:
        check_dask_address(cfg.runner.address)  # before any compute
    try:
        report = run_pipeline(cfg, output, fresh=fresh, stage_runner=as_task,
                              tags={"prefect_flow_run_id": str(flow_run.get_id())})
    except Exception as exc:  # Prefect stores its text as the flow run's state message
        raise redact_exception(exc)
    if report["status"] != "completed":  # awaiting human review: nothing to compare yet
        return report
    create_table_artifact(
        key="before-after",
        table=[{"metric": k, "before": round(v, 4), "after": round(report["after"][k], 4),
                "delta": round(report["after"][k] - v, 4)} for k, v in report["before"].items()],
        description=f"{cfg.name}: {report['selection']['detector']} flagged {report['selection']['n_flagged']} rows; "
                    f"gate {'passed' if report['gate']['passed'] else 'FAILED: ' + '; '.join(report['gate']['reasons'])}",
    )
    return report
