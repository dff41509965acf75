"""What a person reads in the MLflow UI: run names, the Markdown description (``mlflow.note.content``), the gate
and model tags. Pure functions of the config and the report; nothing here talks to a tracker.

Parent run name: ``<name> · <detector> → <action> · <YYYY-MM-DD HH:MM>`` at start, then an outcome suffix
(``· gate passed``, ``· gate FAILED``, ``· awaiting review``). Every value goes through
:func:`tda_clean.redact.redact` when the tracker stores it.
"""
from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Mapping

from tda_clean.config import RunConfig
from tda_clean.evaluation.directions import direction, improvement

NOTE_TAG = "mlflow.note.content"  # MLflow's run description, rendered as Markdown
NAME_TAG = "mlflow.runName"  # setting it renames the run
GATE_TAG = "gate"  # "passed" | "failed" | "pending" (awaiting review)
OUTCOME = {"passed": "gate passed", "failed": "gate FAILED", "pending": "awaiting review"}
_MAX_GROUP_ROWS = 12  # per-group accuracy rows in the description table (they can be many)


def what_was_done(config: RunConfig) -> str:
    """``<detector> → <action>`` (``unlearn`` with its method)."""
    action = config.action.kind
    if method := getattr(config.action, "method", None):
        action = f"{action} ({method})"
    return f"{config.detector.kind} → {action}"


def run_title(config: RunConfig, started: datetime) -> str:
    """The parent run's name without the outcome suffix."""
    return f"{config.name} · {what_was_done(config)} · {started:%Y-%m-%d %H:%M}"


def outcome_name(title: str, outcome: str) -> str:
    """``title`` with the outcome (a key of :data:`OUTCOME`) appended."""
    return f"{title} · {OUTCOME[outcome]}"


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def _verdict(metric: str, before: float, after: float) -> str:
    gain = improvement(metric, before, after)
    if gain is None:
        return ""
    return "better" if gain > 0 else "worse" if gain < 0 else "same"


def metrics_table(before: Mapping[str, float], after: Mapping[str, float]) -> list[str]:
    """Markdown table rows: metric, which way is better, before, after, change and better/worse/same."""
    keys = [k for k in before if not k.startswith("accuracy_")]
    groups = [k for k in before if k.startswith("accuracy_")]
    rows = ["| metric | better | before | after | change | |", "|---|---|---|---|---|---|"]
    for key in keys + groups[:_MAX_GROUP_ROWS]:
        b, a = float(before[key]), float(after[key])
        way = {"higher": "↑ higher", "lower": "↓ lower"}.get(direction(key) or "", "")
        rows.append(f"| {key} | {way} | {_fmt(b)} | {_fmt(a)} | {a - b:+.4f} | {_verdict(key, b, a)} |")
    if len(groups) > _MAX_GROUP_ROWS:
        rows.append(f"\n({len(groups) - _MAX_GROUP_ROWS} more per-group rows in report.json)")
    return rows


def selection_line(report: Mapping[str, Any]) -> str:
    sel = report["selection"]
    quality = (f" (precision {sel['precision']:.3f}, recall {sel['recall']:.3f} on {sel['n_true']} corrupted rows)"
               if "precision" in sel else "")
    acts = ", ".join(f"{k} {v}" for k, v in report.get("actions", {}).items() if v) or "none"
    action = report.get("action") or {}
    why = f" (`{action['kind']}`: {action['reason']})" if action.get("recommended") else ""
    return f"`{sel['detector']}` flagged {sel['n_flagged']} training rows{quality}; actions: {acts}{why}."


def model_line(name: str, version: str | None, alias: str | None) -> str:
    if not version:
        return "No model registered (`tracking.log_models: false`)."
    where = f"[`{name}` version {version}](#/models/{name}/versions/{version}) (`models:/{name}/{version}`)"
    moved = (f"alias `{alias}` now points to it (`models:/{name}@{alias}`)." if alias
             else "the `release` alias was **not** moved.")
    return f"After-model registered as {where}; {moved}"


def description(config: RunConfig, report: Mapping[str, Any], version: str | None = None,
                alias: str | None = None) -> str:
    """The parent run's Markdown description of a completed run: gate decision and reasons first, then what was
    done, the registered model and the before/after table."""
    gate = report["gate"]
    head = ["**Gate passed**" if gate["passed"] else "**Gate FAILED**"]
    head += [f"- {reason}" for reason in gate["reasons"]]
    if gate["passed"]:
        guard = (f"no regression beyond gate.tolerance {config.gate.tolerance} of "
                 f"{', '.join(config.gate.regression_metrics)} (those measured)" if config.gate.no_regression
                 else "no-regression check off (gate.no_regression: false)")
        thresholds = [k for k, v in config.gate.model_dump().items() if k.startswith(("min_", "max_")) and v is not None]
        head.append(f"- {guard}" + (f"; thresholds met ({', '.join(f'gate.{k}' for k in thresholds)})"
                                    if thresholds else ""))
    return "\n".join([
        f"### {config.name}: {what_was_done(config)}", "", *head, "", selection_line(report), "",
        model_line(config.name, version, alias) if config.tracking.log_models else "Models not logged.", "",
        *metrics_table(report["before"], report["after"]), "", f"Run folder: `{report['run_dir']}`",
    ])


def review_description(config: RunConfig, report: Mapping[str, Any]) -> str:
    """The parent run's description while it waits for the reviewers' decisions."""
    review = report["review"]
    return "\n".join([
        f"### {config.name}: {what_was_done(config)}", "", "**Awaiting review** — nothing acted on yet; this run "
        "stays open and continues with `tda-clean apply`.", "", selection_line(report), "",
        f"Candidates: `{review['candidates']}`  ", f"Page: `{review['page']}`  ",
        f"Then: `tda-clean apply {report['run_dir']} --approved FILE`",
    ])


def child_description(config: RunConfig, which: str) -> str:
    if which == "before":
        return f"Before-model of **{config.name}**: the model before cleaning (trained on the data as loaded, or given)."
    return f"After-model of **{config.name}**: {what_was_done(config)} on the flagged rows, same seed and settings."
