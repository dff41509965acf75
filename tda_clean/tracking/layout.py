"""The before/after run layout the MLflow UI compares well (docs/stack.md#mlflow).

Parent run (one per pipeline/flow run) with child runs ``before`` and ``after`` carrying identical
metric keys, plus ``before_<m>``, ``after_<m>`` and ``delta_<m>`` (after - before) on the parent.
"""
from __future__ import annotations

from collections.abc import Mapping

from tda_clean.tracking.base import Tracker

STAGE_TAG = "stage"
STAGES: tuple[str, str] = ("before", "after")


def log_before_after(
    tracker: Tracker,
    parent_run_id: str,
    before: Mapping[str, float],
    after: Mapping[str, float],
) -> dict[str, str]:
    """Log ``before``/``after`` metrics as two child runs and their summary on the parent.

    Both dicts come from the same evaluation code, so their keys must match exactly; a key
    present on one side only raises ``ValueError`` (listing the offending keys) before anything
    is logged. Child runs are created (or, when a killed log stage runs again, the parent's existing
    ``before``/``after`` children reused: never duplicated), logged and ended FINISHED here.

    Returns:
        ``{"before": child_run_id, "after": child_run_id}``.
    """
    only_before = sorted(set(before) - set(after))
    only_after = sorted(set(after) - set(before))
    if only_before or only_after:
        raise ValueError(
            "before/after metric keys differ: "
            f"only in before {only_before}, only in after {only_after}"
        )
    values = {"before": {k: float(v) for k, v in before.items()},
              "after": {k: float(v) for k, v in after.items()}}
    child_ids: dict[str, str] = {}
    existing = tracker.child_runs(parent_run_id)
    for stage in STAGES:
        run_id = existing.get(stage) or tracker.start_run(stage, parent_run_id=parent_run_id, tags={STAGE_TAG: stage})
        tracker.log_metrics(run_id, values[stage])
        tracker.end_run(run_id, "FINISHED")
        child_ids[stage] = run_id
    summary: dict[str, float] = {}
    for key in sorted(values["before"]):
        b, a = values["before"][key], values["after"][key]
        summary[f"before_{key}"] = b
        summary[f"after_{key}"] = a
        summary[f"delta_{key}"] = a - b  # NaN on either side gives NaN
    tracker.log_metrics(parent_run_id, summary)
    return child_ids
