"""The pipeline stages as plain functions, and ``run_pipeline`` which sequences them.

Each stage takes a :class:`RunContext`, reads its inputs from the run folder, writes its outputs there and
returns a small JSON-able dict — so the Prefect flow can wrap each stage in a task whose result is tiny.
``run_pipeline(config, stage_runner=...)`` is the one place the order is written down; the flow passes a
runner that turns each stage into a Prefect task.
"""
from __future__ import annotations

import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from tda_clean.actions import action_summary, apply_action
from tda_clean.config import RunConfig
from tda_clean.data import DataBundle, IndexedDataset, load_bundle
from tda_clean.data.export import write_cleaned
from tda_clean.evaluation import detection_metrics, evaluate_model
from tda_clean.evaluation.gate import check_gate, check_gate_measurable
from tda_clean.models.given import given_model
from tda_clean.models.trainer import fit as fit_model
from tda_clean.errors import InputError
from tda_clean.redact import redact
from tda_clean.review import write_review
from tda_clean.run_dir import (APPROVALS, AUDIT, BUDGET_PLOT, CLEANED, CLEANED_DATA, CONFIG, DATA, MANIFEST, PLOT, REPORT, SELECTION, TRACKING,
                               XDA, RunContext, cleaned_train, discard_new_run_dir, load_model, make_model, open_run_dir, read_json, save_model,
                               write_json_atomic)
from tda_clean.selection import FitContext, Selection, make_detector
from tda_clean.selection.base import serial_map
from tda_clean.selection.budget_curve import check_budget_curve
from tda_clean.spreadsheet import write_safe_csv

RELEASE_ALIAS = "release"
#: Stages whose results depend on the reviewers' decisions: recomputed when ``apply`` brings other decisions.
AFTER_REVIEW = ("act", "train_after", "evaluate_after", "log", "log_models")


# -------------------------------------------------------------------------------------------- stages
def stage_load(ctx: RunContext) -> dict[str, Any]:
    """Load, split, preprocess, corrupt (scenario) -> ``data.npz``."""
    bundle = load_bundle(ctx.config)
    check_gate_measurable(ctx.config.gate, bundle.test.group_keys(), ctx.config.evaluation.min_group_size,
                          bundle.info["n_classes"])
    check_budget_curve(ctx.config.detector, len(bundle.train), len(bundle.val))
    ctx.write(DATA, bundle.save)
    return {**bundle.info, "fingerprint": bundle.train.fingerprint()}


def stage_train(ctx: RunContext, which: str) -> dict[str, Any]:
    """Train on the corrupted (``before``) or cleaned (``after``) training set, same seed and settings; a
    ``python`` model's ``checkpoint`` is the before-model (not trained here)."""
    bundle = DataBundle.load(ctx.path(DATA))
    train = bundle.train if which == "before" else cleaned_train(ctx, bundle)
    if which == "after" and ctx.config.action.kind == "unlearn":
        return _unlearn_after(ctx, bundle, train)
    if which == "before" and (given := given_model(ctx.config.model)) is not None:  # the user's trained nn.Module
        return save_model(ctx, which, given) or {"n_train": len(train), "epochs": 0, "given": True}
    model = make_model(ctx, bundle)
    checkpoint = getattr(ctx.config.model, "checkpoint", None)
    if which == "before" and checkpoint is not None:
        from tda_clean.models.trainer import resolve_dtype
        from tda_clean.models.user import load_checkpoint

        save_model(ctx, which, load_checkpoint(model.to(dtype=resolve_dtype(ctx.config.train.dtype)), checkpoint))
        return {"n_train": len(train), "epochs": 0, "checkpoint": str(checkpoint)}
    result = fit_model(model, train.X, train.y, ctx.config.train, ctx.config.seed,
                       X_val=bundle.val.X, y_val=bundle.val.y, sample_weight=train.weight)
    save_model(ctx, which, model)
    return {"n_train": len(train), "epochs": len(result.train_loss), "final_train_loss": result.train_loss[-1]}


def _unlearn_after(ctx: RunContext, bundle: DataBundle, retained: IndexedDataset) -> dict[str, Any]:
    """The after-model of an ``unlearn`` action: the before-model with the removed rows unlearned."""
    from tda_clean.actions.unlearn import unlearn

    forget = ~np.isin(bundle.train.row_id, retained.row_id)  # what the act stage removed (review-aware)
    model, info = unlearn(ctx.config.action, load_model(ctx, "before", bundle), bundle.train.X, bundle.train.y,
                          forget, ctx.config.train, ctx.config.seed, make_model=lambda s: make_model(ctx, bundle, s),
                          X_val=bundle.val.X, y_val=bundle.val.y, sample_weight=bundle.train.weight)
    save_model(ctx, "after", model)
    return {"n_train": len(retained), "unlearn": info}


def stage_detect(ctx: RunContext, mapper=serial_map) -> dict[str, Any]:
    """Run the configured detector on the training split -> ``selection.npz``; detection quality when known.

    ``mapper(fn, shards)`` runs the detector's independent shards (serially here; the flow maps them as tasks).
    """
    bundle = DataBundle.load(ctx.path(DATA))
    cfg = ctx.config
    context = FitContext(
        seed=cfg.seed, make_model=lambda s: make_model(ctx, bundle, s), train_config=cfg.train,
        model=load_model(ctx, "before", bundle), X_val=bundle.val.X, y_val=bundle.val.y,
        groups_val=bundle.val.groups, n_classes=bundle.train.n_classes,
        map=mapper, shard_rows=cfg.runner.shard_rows, action=cfg.action.kind,
    )
    selection = make_detector(cfg.detector).fit(bundle.train.X, bundle.train.y, context).to_selection()
    ctx.write(SELECTION, selection.save)
    summary: dict[str, Any] = {"detector": selection.detector, "n_flagged": selection.n_flagged,
                               "threshold": selection.threshold, **selection.info}
    if bundle.corrupted_mask is not None:
        summary.update(detection_metrics(selection.mask, bundle.corrupted_mask))
    return summary


def stage_review(ctx: RunContext) -> dict[str, Any]:
    """Write the candidates for human review (``review: required``)."""
    return write_review(ctx, DataBundle.load(ctx.path(DATA)), Selection.load(ctx.path(SELECTION)))


def stage_act(ctx: RunContext) -> dict[str, int]:
    """Apply the action -> ``train_cleaned.npz`` + ``audit.csv`` + ``manifest.json``; the input stays as it was.

    Under ``review: required`` only approved candidates are acted on; rejected ones are audited as ``keep``.
    """
    bundle = DataBundle.load(ctx.path(DATA))
    selection = Selection.load(ctx.path(SELECTION))
    rejected_audit = None
    if ctx.config.review == "required":
        from tda_clean.actions import reject_rows

        decisions = pd.read_csv(ctx.path(APPROVALS))
        approved = np.isin(bundle.train.row_id, decisions.loc[decisions["approved"], "row_id"])
        rejected = selection.indices[~approved[selection.indices]]
        rejected_audit = reject_rows(bundle.train, selection, rejected)
        selection = selection.restrict(approved)
    result = apply_action(bundle.train, selection, ctx.config.action)
    audit = result.audit if rejected_audit is None else pd.concat([result.audit, rejected_audit], ignore_index=True)
    ctx.write(CLEANED, lambda tmp: np.savez(tmp, **result.train.to_arrays("train/")))
    ctx.write(AUDIT, lambda tmp: write_safe_csv(audit, tmp))  # text cells escaped against spreadsheet formulas
    write_json_atomic(ctx.path(MANIFEST), {
        "source_fingerprint": bundle.train.fingerprint(), "cleaned_fingerprint": result.train.fingerprint(),
        "n_rows_before": len(bundle.train), "n_rows_after": len(result.train), "audit": AUDIT, **result.counts,
        **write_cleaned(ctx.config.data, audit, ctx.path(CLEANED_DATA)),  # the user's own format: cleaned/<file>
    })
    return result.counts


def stage_evaluate(ctx: RunContext, which: str) -> dict[str, float]:
    """Held-out metrics of the ``before`` or ``after`` model on the same test set."""
    bundle = DataBundle.load(ctx.path(DATA))
    return evaluate_model(load_model(ctx, which, bundle), bundle)


def stage_report(ctx: RunContext, parts: dict[str, Any]) -> dict[str, Any]:
    """The report, in the one shape ``run_pipeline`` returns: every key always present. A run stopped for review
    has ``status`` ``"awaiting_review"``, empty ``before``/``after``/``actions`` and ``gate`` ``None``; a completed
    one is also written to ``report.json`` (schema in docs/architecture.md) with the before/after plot."""
    from tda_clean.evaluation.plots import plot_before_after

    from tda_clean.selection.group_selectors import explain_selection

    done = "after" in parts
    passed, reasons = check_gate(ctx.config.gate, parts["after"], parts["before"]) if done else (None, [])
    bundle, selection = DataBundle.load(ctx.path(DATA)), Selection.load(ctx.path(SELECTION))
    contributions = selection.contributions
    groups = bundle.train.groups if bundle.train.groups.shape[1] else None
    report = {
        "status": "completed" if done else "awaiting_review",
        "config_hash": ctx.config.config_hash(),
        "name": ctx.config.name,
        "dataset": parts["dataset"],
        "before": parts.get("before", {}),
        "after": parts.get("after", {}),
        "selection": parts["selection"],
        # which groups (and labels) the flagged rows come from, and their share of the predicted change
        "selection_explanation": explain_selection(selection, groups, contributions, labels=bundle.train.y),
        "actions": parts.get("actions", {}),
        "action": action_summary(ctx.config.action, selection),  # which action, and why (``recommended``)
        "gate": {"passed": passed, "reasons": reasons} if done else None,
        "review": parts.get("review"),
        "timings_s": dict(parts["timings_s"]),
        "resumed_stages": list(parts["resumed_stages"]),
        "mlflow": parts["mlflow"],
        "release": None,  # the logged after-model, once stage_log has logged it
        "run_dir": str(ctx.run_dir),
    }
    if not done:
        return report
    from tda_clean.tracking.describe import what_was_done

    title = f"{ctx.config.name}: {what_was_done(ctx.config)} · gate {'passed' if passed else 'FAILED'}"
    ctx.write(PLOT, lambda tmp: plot_before_after(report["before"], report["after"], tmp, title=title))
    if "auto_budget" in report["selection"]:  # the automatic budget's evidence
        from tda_clean.evaluation.plots import plot_budget_curve

        ctx.write(BUDGET_PLOT, lambda tmp: plot_budget_curve(report["selection"]["auto_budget"], tmp,
                                                             title=f"{ctx.config.name}: automatic budget"))
    write_json_atomic(ctx.path(REPORT), report)
    return report


def stage_log(ctx: RunContext, tracker, parent_run_id: str, report: dict[str, Any]) -> dict[str, str]:
    """Everything to the tracker, with explicit run ids (safe from worker threads). Run again after a kill, it
    duplicates nothing: the parent's child runs are reused and the models logged so far are recorded. The parent
    gets its outcome in its name, the ``gate`` tags, a Markdown description and the registered model's tags."""
    from tda_clean.tracking import describe
    from tda_clean.tracking.layout import log_before_after

    children = log_before_after(tracker, parent_run_id, report["before"], report["after"])
    params = ctx.config.flat()  # JSON values: the tracking URI without its password; the tracker redacts too
    for which in ("before", "after"):
        tracker.log_params(children[which], params)
        tracker.set_tags(children[which], {describe.NOTE_TAG: describe.child_description(ctx.config, which)})
    tracker.log_params(parent_run_id, params)
    tracker.log_metrics(parent_run_id, {f"selection_{k}": float(v) for k, v in report["selection"].items()
                                        if isinstance(v, (int, float)) and not isinstance(v, bool)})
    tracker.log_metrics(parent_run_id, {f"actions_{k}": float(v) for k, v in report["actions"].items()})
    passed = report["gate"]["passed"]
    tracker.set_tags(parent_run_id, {"gate_passed": str(passed).lower(), "status": "completed",
                                     describe.GATE_TAG: "passed" if passed else "failed",
                                     "gate_reasons": "; ".join(report["gate"]["reasons"])})
    bundle = DataBundle.load(ctx.path(DATA))
    tracker.log_dataset(parent_run_id, bundle.train.frame(), name=f"{bundle.name}-train", targets="label",
                        context="training")
    out = dict(children)
    if ctx.config.tracking.log_models:
        done = read_json(ctx.marker("log_models")) if ctx.marker("log_models").is_file() else {}

        def once(key: str, call: Callable[[], str]) -> str:
            if key not in done:
                done[key] = call()
                write_json_atomic(ctx.marker("log_models"), done)
            return done[key]

        from tda_clean.tracking.servable import serving_input

        serving = serving_input(ctx.config, bundle)  # loads without tda_clean, predicts on raw rows
        models = {which: once(f"model_{which}:{children[which]}", lambda: tracker.log_model(  # called at once
            children[which], load_model(ctx, which, bundle), name=f"model_{which}", serving=serving))
            for which in ("before", "after")}
        # the after-model is always registered; the `release` alias only moves to it when the gate passes
        alias = RELEASE_ALIAS if report["gate"]["passed"] else None
        out["registered_version"] = once(f"version:{models['after']}", lambda: tracker.register_model(
            children["after"], models["after"], name=ctx.config.name, alias=alias))
        out["release_alias"] = alias or ""
        tracker.set_tags(parent_run_id, {"registered_model": ctx.config.name,
                                         "registered_model_version": out["registered_version"],
                                         "registered_model_uri": f"models:/{ctx.config.name}/{out['registered_version']}",
                                         "release_alias": out["release_alias"] or "not moved",
                                         "model_after": models["after"], "model_before": models["before"]})
        if models["after"]:  # report.json says whether the release is servable (docs/serving.md)
            from tda_clean.tracking.servable import servability

            out["release"] = {"model_id": models["after"], "registered_version": out["registered_version"],
                              "alias": alias, **servability(tracker.model_tags(models["after"]))}
            write_json_atomic(ctx.path(REPORT), {**report, "release": out["release"]})
    for name in (REPORT, AUDIT, MANIFEST, PLOT) + tuple(n for n in (XDA, BUDGET_PLOT) if ctx.path(n).is_file()):
        tracker.log_artifact(parent_run_id, ctx.path(name))
    with tempfile.TemporaryDirectory(prefix="tda-clean-config-") as tmp:  # the config without credentials
        (Path(tmp) / CONFIG).write_text(redact(ctx.path(CONFIG).read_text()))
        tracker.log_artifact(parent_run_id, Path(tmp) / CONFIG)
    title = read_json(ctx.path(TRACKING)).get("run_name", ctx.config.name)
    tracker.set_tags(parent_run_id, {
        describe.NAME_TAG: describe.outcome_name(title, "passed" if passed else "failed"),
        describe.NOTE_TAG: describe.description(ctx.config, report, out.get("registered_version"),
                                                out.get("release_alias") or None)})
    return out


# ---------------------------------------------------------------------------------------- sequencing
StageRunner = Callable[..., Any]


def call_stage(stage: Callable[..., Any], *args: Any) -> Any:
    """The plain runner: call the stage."""
    return stage(*args)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_pipeline(
    config: RunConfig,
    output: str | Path | None = None,
    *,
    fresh: bool = False,
    tracker=None,
    stage_runner: StageRunner = call_stage,
    tags: dict[str, str] | None = None,
    approvals: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Run every stage; return the report (:func:`stage_report`; also in ``<run_dir>/report.json``).

    Under ``review: required`` the run stops after detection until ``approvals`` (``row_id``, ``approved``: bool,
    one row per candidate, validated by :func:`tda_clean.review.read_approvals`) are given; decisions other
    than the last ones given recompute the stages in :data:`AFTER_REVIEW`.

    Stages completed by an earlier, interrupted run on the same folder are not run again (their recorded
    results are reused and listed in ``report["resumed_stages"]``); ``fresh=True`` recomputes everything.
    The tracker's parent run is marked FAILED with the message if any stage raises (the exception propagates) or
    when the release gate fails; a run awaiting review leaves it open (``apply`` continues it).
    ``stage_runner(stage, *args)`` lets an orchestrator wrap each stage (the Prefect flow makes them tasks).
    """
    if tracker is None:
        from tda_clean.tracking import make_tracker

        tracker = make_tracker(config.tracking)  # an unreachable server fails here, before any compute
    ctx = open_run_dir(config, output, fresh=fresh)
    parent = _parent_run(ctx, tracker, tags)
    timings: dict[str, float] = {}
    resumed: list[str] = []

    def timed(name: str, stage: Callable[..., Any], *args: Any, resumable: bool = True) -> Any:
        marker = ctx.marker(name)
        if resumable and marker.is_file():
            record = read_json(marker)
            resumed.append(name)
        else:
            start = time.perf_counter()
            out = stage_runner(stage, ctx, *args)
            record = {"seconds": round(time.perf_counter() - start, 3), "result": out}
            write_json_atomic(marker, record)
            record = read_json(marker)  # a fresh run returns exactly what a resumed one would read
        timings[name] = record["seconds"]
        return record["result"]

    try:
        dataset = timed("load", stage_load)
        timed("train_before", stage_train, "before")
        selection = timed("detect", stage_detect)
        parts = {"dataset": dataset, "selection": selection, "timings_s": timings, "resumed_stages": resumed,
                 "mlflow": {**tracker.info(), "parent_run_id": parent}}
        if config.review == "required":
            parts["review"] = timed("review", stage_review)
            if approvals is not None:
                _keep_approvals(ctx, approvals)
            if not ctx.path(APPROVALS).is_file():
                waiting = stage_report(ctx, parts)
                _awaiting_review(ctx, tracker, parent, waiting)  # the parent run stays open until `apply`
                return waiting
        parts["actions"] = timed("act", stage_act)
        timed("train_after", stage_train, "after")
        parts["before"] = timed("evaluate_before", stage_evaluate, "before")
        parts["after"] = timed("evaluate_after", stage_evaluate, "after")
        report = timed("report", stage_report, parts, resumable=False)  # cheap; states what was resumed
        logged = timed("log", stage_log, tracker, parent, report)
        if logged.get("release"):  # also when the log stage is resumed: report.json was written anew
            report["release"] = logged["release"]
            write_json_atomic(ctx.path(REPORT), report)
    except BaseException as exc:
        tracker.end_run(parent, "FAILED", message=f"{type(exc).__name__}: {exc}")
        if isinstance(exc, InputError):
            discard_new_run_dir(ctx)  # bad input leaves no half-written run folder behind
        raise
    gate = report["gate"]
    tracker.end_run(parent, "FINISHED" if gate["passed"] else "FAILED",
                    message=None if gate["passed"] else "gate failed: " + "; ".join(gate["reasons"]))
    return report


def _awaiting_review(ctx: RunContext, tracker, parent: str, report: dict[str, Any]) -> None:
    """Mark the parent run as waiting for review: name suffix, ``gate=pending``, a description of what to do."""
    from tda_clean.tracking import describe

    title = read_json(ctx.path(TRACKING)).get("run_name", ctx.config.name)
    tracker.set_tags(parent, {"status": "awaiting_review", describe.GATE_TAG: "pending",
                              describe.NAME_TAG: describe.outcome_name(title, "pending"),
                              describe.NOTE_TAG: describe.review_description(ctx.config, report)})


def _keep_approvals(ctx: RunContext, decisions: pd.DataFrame) -> None:
    """Store the reviewers' decisions; when they differ from the stored ones, forget the stages that used those."""
    text = decisions.to_csv(index=False)
    if ctx.path(APPROVALS).is_file() and ctx.path(APPROVALS).read_text() == text:
        return
    for stage in AFTER_REVIEW:
        ctx.marker(stage).unlink(missing_ok=True)
    ctx.write(APPROVALS, lambda tmp: tmp.write_text(text))


def _parent_run(ctx: RunContext, tracker, tags: dict[str, str] | None) -> str:
    """The tracker's parent run: the interrupted run's own when resuming on the same tracking store."""
    info, path = tracker.info(), ctx.path(TRACKING)
    if path.is_file():
        previous = read_json(path)
        if previous.get("tracking_uri") == info.get("tracking_uri") and previous.get("parent_run_id"):
            return previous["parent_run_id"]
    from tda_clean.tracking.describe import run_title

    config = ctx.config
    title = run_title(config, datetime.now())
    parent = tracker.start_run(title, tags={"config_hash": config.config_hash(), "git_commit": git_commit(),
                                            "run_dir": str(ctx.run_dir), **(tags or {})})
    write_json_atomic(path, {**info, "parent_run_id": parent, "run_name": title})
    return parent
