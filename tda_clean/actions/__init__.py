"""Actions on flagged rows: each returns a NEW training set plus one audit row per touched row.

Audit columns: ``row_id, action, old_label, new_label, weight, detector, score, rank, reason``, then the
row's ``group_<column>`` values. Labels are class names (``IndexedDataset.classes``), not ids.
``replay_audit(original, audit)`` rebuilds the cleaned training set exactly from the original and the audit.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import pandas as pd

from tda_clean.config import UNLEARN_SPECS, NoAction, RecommendedAction, RelabelAction, RemoveAction, ReweightAction
from tda_clean.data.dataset import IndexedDataset
from tda_clean.errors import InputError
from tda_clean.selection.base import Selection

AUDIT_COLUMNS = ["row_id", "action", "old_label", "new_label", "weight", "detector", "score", "rank", "reason"]


@dataclass(frozen=True)
class ActionResult:
    """The new training set version, its audit table and counts per action kind."""

    train: IndexedDataset
    audit: pd.DataFrame
    counts: dict[str, int]


def _audit(train: IndexedDataset, selection: Selection, positions: np.ndarray, action: str,
           new_labels: np.ndarray | None = None, weights: np.ndarray | None = None) -> pd.DataFrame:
    rank = {int(p): r for r, p in enumerate(selection.indices)}
    reason = dict(zip(map(int, selection.indices), selection.reasons))
    groups = {f"group_{c}": train.groups[c].to_numpy()[positions] for c in train.groups.columns}
    return pd.DataFrame({
        "row_id": train.row_id[positions].astype(np.int64),
        "action": action,
        "old_label": np.asarray(train.classes, dtype=object)[train.y[positions]],  # class names
        "new_label": np.asarray(train.classes, dtype=object)[new_labels] if new_labels is not None else None,
        "weight": weights if weights is not None else np.full(len(positions), np.nan),
        "detector": selection.detector,
        "score": selection.scores[positions],
        "rank": [rank[int(p)] for p in positions],
        "reason": [reason.get(int(p), "") for p in positions],
        **groups,  # the row's group values, so the audit reads by group too (not needed to replay)
    }, columns=AUDIT_COLUMNS + list(groups))


def remove(train: IndexedDataset, selection: Selection, _cfg=None) -> ActionResult:
    positions = selection.indices
    kept = np.setdiff1d(np.arange(len(train)), positions)
    return ActionResult(train.subset(kept), _audit(train, selection, positions, "remove"), {"removed": len(positions)})


def relabel(train: IndexedDataset, selection: Selection, _cfg=None) -> ActionResult:
    """Set each flagged row's label to the detector's suggestion; rows whose suggestion equals their label are untouched."""
    if selection.suggested_labels is None:
        raise InputError(f"action.kind=relabel: detector {selection.detector!r} suggests no labels (use action.kind=remove)")
    positions = selection.indices[selection.suggested_labels[selection.indices] != train.y[selection.indices]]
    y = train.y.copy()
    y[positions] = selection.suggested_labels[positions]
    audit = _audit(train, selection, positions, "relabel", new_labels=y[positions])
    return ActionResult(replace(train, y=y), audit, {"relabeled": len(positions)})


def reweight(train: IndexedDataset, selection: Selection, cfg) -> ActionResult:
    """Set the training weight of flagged rows (detector's suggestion, else ``cfg.weight``); others keep theirs."""
    positions = selection.indices
    weights = np.ones(len(train)) if train.weight is None else train.weight.astype(float).copy()
    new = selection.suggested_weights[positions] if selection.suggested_weights is not None else np.full(len(positions), cfg.weight)
    if np.any((new < 0) | (new > 1)):
        raise InputError(f"action.kind=reweight: detector {selection.detector!r} suggested weights outside [0, 1]")
    weights[positions] = new
    audit = _audit(train, selection, positions, "reweight", weights=new)
    return ActionResult(replace(train, weight=weights), audit, {"reweighted": len(positions)})


def no_action(train: IndexedDataset, selection: Selection, _cfg=None) -> ActionResult:
    return ActionResult(train, pd.DataFrame(columns=AUDIT_COLUMNS), {})


def unlearn(train: IndexedDataset, selection: Selection, cfg) -> ActionResult:
    """Data side of unlearning (flagged rows removed, audited as such); the after-model comes from
    :func:`tda_clean.actions.unlearn.unlearn` in the pipeline's retrain stage."""
    from tda_clean.actions.unlearn import unlearn_action  # imports this package: keep it lazy

    return unlearn_action(train, selection, cfg)


ACTIONS: dict[type, Callable[..., ActionResult]] = {
    RemoveAction: remove, RelabelAction: relabel, ReweightAction: reweight, NoAction: no_action,
    **{spec: unlearn for spec in UNLEARN_SPECS},
}


def resolve_action(cfg, selection: Selection):
    """The action spec applied to ``selection`` under ``cfg`` (the config's ``action``): ``recommended`` becomes the
    detector's ``selection.recommended_action``; any other kind is applied as written."""
    if not isinstance(cfg, RecommendedAction):
        return cfg
    specs = {"relabel": RelabelAction(), "remove": RemoveAction()}
    if selection.recommended_action not in specs:
        raise InputError(f"action.kind=recommended: detector {selection.detector!r} recommends no action "
                         "(use action.kind=remove or relabel)")
    return specs[selection.recommended_action]


def action_summary(cfg, selection: Selection) -> dict[str, str | None]:
    """Which action the run applies to ``selection`` and why: ``kind`` (applied), ``configured`` (``action.kind``),
    ``recommended`` (the detector's, or None) and ``reason`` (one sentence)."""
    applied, recommended = resolve_action(cfg, selection).kind, selection.recommended_action
    rows = f" for {selection.info['chosen']}'s rows" if "chosen" in selection.info else ""
    if isinstance(cfg, RecommendedAction):
        reason = f"recommended by {selection.detector}{rows}"
    elif recommended is not None and recommended != applied:
        reason = f"as configured in action.kind; {selection.detector} recommends {recommended}{rows}"
    else:
        reason = "as configured in action.kind"
    return {"kind": applied, "configured": cfg.kind, "recommended": recommended, "reason": reason}


def reject_rows(train: IndexedDataset, selection: Selection, rejected: np.ndarray) -> pd.DataFrame:
    """Audit rows (action ``keep``) for candidates a reviewer rejected: recorded, not changed."""
    audit = _audit(train, selection, rejected, "keep")
    audit["reason"] = "rejected in review; " + audit["reason"].astype(str)  # str even when empty (all approved)
    return audit


def apply_action(train: IndexedDataset, selection: Selection, cfg) -> ActionResult:
    """Apply the configured action (``recommended``: the detector's, :func:`resolve_action`); ``train`` is not
    modified. Counts always carry all four keys."""
    cfg = resolve_action(cfg, selection)
    result = ACTIONS[type(cfg)](train, selection, cfg)
    counts = {"removed": 0, "relabeled": 0, "reweighted": 0, "unlearned": 0, **result.counts}
    return replace(result, counts=counts)


def replay_audit(original: IndexedDataset, audit: pd.DataFrame) -> IndexedDataset:
    """Rebuild the cleaned training set from the original rows and the audit table alone."""
    missing = [c for c in AUDIT_COLUMNS if c not in audit.columns]
    if missing:
        raise InputError(f"audit table: missing columns {missing}")
    position = {int(r): i for i, r in enumerate(original.row_id)}
    unknown = [int(r) for r in audit["row_id"] if int(r) not in position]
    if unknown:
        raise InputError(f"audit table: row_id {unknown[0]} is not in the original data ({len(unknown)} unknown)")
    y = original.y.copy()
    weight = None if original.weight is None else original.weight.copy()
    drop = []
    for row in audit.itertuples(index=False):
        i = position[int(row.row_id)]
        if row.action == "remove":
            drop.append(i)
        elif row.action == "relabel":
            name = str(int(row.new_label)) if isinstance(row.new_label, float) else str(row.new_label)  # CSV: 1.0
            if name not in original.classes:
                raise InputError(f"audit table: new_label {name!r} of row_id {row.row_id} is not a class")
            y[i] = original.classes.index(name)
        elif row.action == "keep":
            continue  # reviewed and rejected: the row stays as it was
        elif row.action == "reweight":
            weight = np.ones(len(y)) if weight is None else weight
            weight[i] = float(row.weight)
        else:
            raise InputError(f"audit table: unknown action {row.action!r} for row_id {row.row_id}")
    cleaned = replace(original, y=y, weight=weight)
    return cleaned.subset(np.setdiff1d(np.arange(len(y)), drop))
