"""Human review before acting: candidates to CSV + a static HTML page; approvals validated and applied.

``write_review(ctx)`` lists every flagged row with its scores, the suggested action, its groups, the
validation rows it influences most (influence of the before-model with the detector's influence spec, else
exact last-layer influence, ``REVIEW_SPEC``; sign convention: positive = removing the row INCREASES that
validation row's loss), the detector's reason in plain words (``reason``; its own text in ``reason_detail``),
for the top candidates why (``why``, ``why_image``: XDA feature attribution, :mod:`tda_clean.review_why`). The CSV's text cells are
escaped against spreadsheet formulas (:mod:`tda_clean.spreadsheet`); the page (:mod:`tda_clean.review_page`)
shows each row's values or thumbnail next to the validation rows it names.
``read_approvals(ctx, path)`` validates a filled-in file (columns ``row_id``, ``approved``) against the
candidates; the pipeline's act stage then touches approved rows only and audits the rejected ones.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tda_clean.actions import resolve_action
from tda_clean.config.influence import ExactSettings, GradientSettings, InfluenceSpec
from tda_clean.data.dataset import DataBundle
from tda_clean.errors import InputError
from tda_clean.review_reasons import plain_reason
from tda_clean.review_why import why_columns
from tda_clean.run_dir import CANDIDATES, PAGE, XDA, RunContext, load_model, write_json_atomic
from tda_clean.selection.base import Selection
from tda_clean.spreadsheet import write_safe_csv

REVIEW_SPEC = InfluenceSpec(solver=ExactSettings(damping=0.0), gradients=GradientSettings(params="head", dtype="float64"))
_YES, _NO = {"yes", "y", "true", "1", "approve", "approved"}, {"no", "n", "false", "0", "reject", "rejected"}


def candidates_frame(ctx: RunContext, bundle: DataBundle, selection: Selection, top_val: int = 3) -> pd.DataFrame:
    """One row per flagged training row, most suspicious first."""
    train, idx = bundle.train, selection.indices
    action = resolve_action(ctx.config.action, selection).kind  # ``recommended``: the detector's
    suggested, names = selection.suggested_labels, np.asarray(train.classes, dtype=object)  # labels as class names
    frame = pd.DataFrame({
        "row_id": train.row_id[idx], "rank": np.arange(len(idx)), "detector": selection.detector,
        "score": selection.scores[idx], "label": names[train.y[idx]],
        "suggested_label": names[suggested[idx]] if suggested is not None else pd.NA,
        "suggested_action": [_action_text(action, names[train.y[i]], None if suggested is None else names[suggested[i]])
                             for i in idx],
    })
    for column in train.groups.columns:
        frame[f"group_{column}"] = train.groups[column].to_numpy()[idx]
    spec = getattr(ctx.config.detector, "influence", REVIEW_SPEC)
    engine = review_engine(load_model(ctx, "before", bundle), bundle, spec, ctx.config.train)  # one curvature fit
    frame["most_influenced_val_rows"] = _influenced_val_rows(engine, bundle, idx, top_val)
    why, records = why_columns(engine, bundle, idx, top_val)  # the top candidates only
    frame = frame.assign(**why)
    frame.attrs["xda"] = records  # for review/xda.json
    frame["reason"] = [plain_reason(selection.detector, text, label, None if pd.isna(suggestion) else suggestion)
                       for text, label, suggestion in zip(selection.reasons, frame["label"], frame["suggested_label"])]
    frame["reason_detail"] = list(selection.reasons)
    frame["approved"] = ""
    return frame


def _action_text(kind: str, label: int, suggestion: int | None) -> str:
    if kind == "relabel" and suggestion is not None:
        return "keep (suggestion equals label)" if suggestion == label else f"relabel {label} -> {suggestion}"
    return kind


def review_engine(model, bundle: DataBundle, spec: InfluenceSpec, train_config):
    """The one :class:`~tda_clean.influence.InfluenceEngine` the review's influence columns share."""
    from tda_clean.influence import InfluenceEngine
    from tda_clean.models.trainer import training_objective

    return InfluenceEngine(model, (bundle.train.X, bundle.train.y), spec, training_objective(train_config))


def _influenced_val_rows(engine, bundle: DataBundle, idx: np.ndarray, top: int) -> list[str]:
    """``row_id:influence`` of the ``top`` validation rows whose loss each candidate's removal moves most
    (:func:`tda_clean.influence.xda.query_influence`: positive = removing the candidate increases that loss)."""
    if len(idx) == 0:
        return []
    from tda_clean.influence.xda import query_influence

    scores, _ = query_influence(engine, bundle.train.X[idx], bundle.train.y[idx], bundle.val.X, bundle.val.y)
    order = np.argsort(-np.abs(scores), axis=1)[:, :top]
    return [" ".join(f"{bundle.val.row_id[j]}:{scores[r, j]:+.2e}" for j in order[r]) for r in range(len(idx))]


def write_review(ctx: RunContext, bundle: DataBundle, selection: Selection,
                 frame: pd.DataFrame | None = None) -> dict[str, str]:
    """Write ``review/candidates.csv`` and ``review/index.html``; return their paths. ``frame``: the candidates
    (default :func:`candidates_frame`; a caller may add ``why`` / ``why_image`` columns)."""
    from tda_clean.review_page import influenced, raw_table, render_page, row_views

    frame = candidates_frame(ctx, bundle, selection) if frame is None else frame
    raw = raw_table(ctx.config.data) if bundle.train.X.ndim == 2 else None
    val_ids = {int(i) for cell in frame["most_influenced_val_rows"] for i, _ in influenced(cell)}
    val_positions = np.flatnonzero(np.isin(bundle.val.row_id, list(val_ids)))
    meta = {"name": ctx.config.name, "action": resolve_action(ctx.config.action, selection).kind,
            "storage_key": str(ctx.path(PAGE)),
            "apply_command": f"tda-clean apply {ctx.run_dir} --approved approvals.csv"}
    page = render_page(frame, row_views(bundle.train, selection.indices, raw),
                       row_views(bundle.val, val_positions, raw), meta)
    ctx.write(CANDIDATES, lambda tmp: write_safe_csv(frame, tmp))
    write_json_atomic(ctx.path(XDA), frame.attrs.get("xda", []))  # "why this row": XDA attributions
    ctx.write(PAGE, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return {"candidates": str(ctx.path(CANDIDATES)), "page": str(ctx.path(PAGE)), "n_candidates": len(frame)}


def read_approvals(ctx: RunContext, path: str | Path) -> pd.DataFrame:
    """Validate an approvals file against the candidates; return ``row_id, approved (bool)`` for every candidate.

    Raises InputError (nothing is applied) naming the file, and the line and column where it applies, for a
    missing, empty, non-UTF-8 or non-CSV file, missing columns, a row id that is not a whole number, unknown or
    duplicated row ids, values other than yes/no, or candidates left undecided.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--approved: file not found: {path}")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False, encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"--approved {path}: not UTF-8 text (byte {exc.start})") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        text = str(exc).replace("\n", " ")
        raise InputError(f"--approved {path}: not a CSV table with columns row_id, approved ({text})") from None
    table = table[(table != "").any(axis=1)]  # blank lines are no rows; the index + 2 stays the line number
    missing = [c for c in ("row_id", "approved") if c not in table.columns]
    if missing:
        raise InputError(f"--approved {path}: missing column {missing[0]!r} (columns: {', '.join(table.columns)})")
    whole = table["row_id"].str.strip().str.fullmatch(r"\d{1,18}")
    if not whole.all():
        line = table.index[~whole][0]
        raise InputError(f"--approved {path}: line {line + 2}, column row_id: {table.loc[line, 'row_id']!r} is not a "
                         "row id (a whole number)")
    row_id = table["row_id"].astype(np.int64)
    known = set(pd.read_csv(ctx.path(CANDIDATES))["row_id"].astype(int))
    unknown = sorted(set(row_id) - known)
    if unknown:
        raise InputError(f"--approved {path}: row_id {unknown[0]} is not a candidate of this run ({len(unknown)} unknown)")
    if row_id.duplicated().any():
        raise InputError(f"--approved {path}: row_id {row_id[row_id.duplicated()].iloc[0]} appears twice")
    answer = table["approved"].str.strip().str.lower()
    bad = table.index[~answer.isin(_YES | _NO)]
    if len(bad):
        raise InputError(f"--approved {path}: line {bad[0] + 2}, column approved: row_id {row_id[bad[0]]} has "
                         f"approved={table.loc[bad[0], 'approved']!r}; use yes or no")
    undecided = sorted(known - set(row_id))
    if undecided:
        raise InputError(f"--approved {path}: {len(undecided)} candidates have no decision (e.g. row_id {undecided[0]})")
    return pd.DataFrame({"row_id": row_id.to_numpy(), "approved": answer.isin(_YES).to_numpy()})
