"""The review page: one self-contained HTML file (no network, no CDN) that shows each flagged row as a reviewer
can judge it, and writes the approvals CSV ``tda-clean apply`` reads.

``render_page(frame, train_views, val_views, meta)`` fills the template ``review_page.html`` (package data)
with the candidates frame of :func:`tda_clean.review.candidates_frame` as JSON inside a
``<script type="application/json">`` block (``<``, ``>``, ``&``, U+2028/9 escaped, so no value can close the
block). The page script builds every cell with ``textContent`` (never ``innerHTML``) and only shows images
given as ``data:image/png;base64,`` URIs; the page's Content-Security-Policy allows no network access and runs
only that script (by its SHA-256), so no inline handler could run either. It filters (score range, group, detector, action, decision, text),
sorts, pages, counts candidates per group, keeps decisions in the browser's local storage, and downloads
``approvals.csv`` (``row_id,approved,label,suggested_label,suggested_action``; ``approved`` is yes/no; text
cells starting with ``= + - @ '``, tab or CR get a leading ``'``).

A row view (``row_views``) is ``{"label": class name, "image": data URI}`` for images, or
``{"label", "values": [[column, text], ...]}`` for tables: the raw columns of the user's table (``raw_table``)
when it can be read again, else the model's encoded features.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import re
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd

from tda_clean.data.dataset import GROUP_SEP, IndexedDataset

MAX_VALUES, MAX_TEXT = 40, 300  # encoded features shown per row (non-zero first), characters per value
_VAL = re.compile(r"(\d+):([-+0-9.eE]+|nan)")


def thumbnail(image: np.ndarray) -> str:
    """``data:image/png;base64,...`` of one image (H, W) or (C, H, W), contrast stretched to its own range."""
    from PIL import Image

    img = np.asarray(image, dtype=np.float64)
    img = img if img.ndim == 2 else np.moveaxis(img, 0, -1)
    img = img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img
    lo, hi = float(img.min()), float(img.max())
    pixels = np.uint8(np.round(255 * (img - lo) / (hi - lo))) if hi > lo else np.zeros(img.shape, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def raw_table(data_config) -> pd.DataFrame | None:
    """The user's table (feature and text columns) indexed by ``row_id``, or None: images, in-memory data of
    another process, or a source that cannot be read again. Label and group columns are shown separately."""
    from tda_clean.config import AdultSource, TableSource
    from tda_clean.data.sources import RawTable, load_source
    from tda_clean.errors import TdaCleanError

    if not isinstance(data_config, (AdultSource, TableSource)) or getattr(data_config, "image_column", None):
        return None
    try:
        raw = load_source(data_config)
    except (TdaCleanError, OSError, ImportError, ValueError):
        return None
    if not isinstance(raw, RawTable):
        return None
    columns = list(raw.features) + ([raw.text[0]] if raw.text and raw.text[0] not in raw.features else [])
    return raw.frame[columns].set_axis(pd.Index(raw.row_id), axis=0)


def _text(value: Any) -> str:
    if isinstance(value, float):
        value = "" if math.isnan(value) else f"{value:.6g}"
    text = str(value)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT - 1] + "…"


def row_views(data: IndexedDataset, positions: np.ndarray, raw: pd.DataFrame | None = None) -> dict[int, dict]:
    """``{row_id: view}`` for the rows of ``data`` at ``positions`` (see the module docstring)."""
    views, names = {}, np.asarray(data.classes, dtype=object)
    flat = data.X.reshape(len(data), -1) if data.X.ndim == 2 else None
    features = list(data.feature_names) if flat is not None and len(data.feature_names) == flat.shape[1] else None
    for p in map(int, np.unique(positions)):
        row_id, view = int(data.row_id[p]), {"label": str(names[data.y[p]])}
        if flat is None:
            view["image"] = thumbnail(data.X[p])
        elif raw is not None and row_id in raw.index:
            view["values"] = [[str(c), _text(v)] for c, v in raw.loc[row_id].items()]
        else:
            x = flat[p]
            order = np.concatenate([np.flatnonzero(x != 0), np.flatnonzero(x == 0)])[:MAX_VALUES]
            view["values"] = [[features[j] if features else f"x{j}", _text(float(x[j]))] for j in sorted(order)]
        views[row_id] = view
    return views


def influenced(text: Any) -> list[list]:
    """``"12:+1.0e-03 7:-2.0e-04"`` (the ``most_influenced_val_rows`` cell) -> ``[[12, 0.001], [7, -0.0002]]``."""
    if not isinstance(text, str):
        return []
    return [[int(i), _number(float(v))] for i, v in _VAL.findall(text)]


def _number(x) -> float | None:
    return float(x) if x is not None and not pd.isna(x) and math.isfinite(float(x)) else None


def _optional(record: dict, key: str) -> str | None:
    value = record.get(key)
    return None if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)


def page_rows(frame: pd.DataFrame) -> list[dict]:
    """The candidates frame as the page's row objects (missing suggestions -> null, NaN scores -> null)."""
    group_columns = [c for c in frame.columns if c.startswith("group_")]
    rows = []
    for record in frame.to_dict("records"):
        action = str(record["suggested_action"])
        why_image = _optional(record, "why_image")
        rows.append({
            "id": int(record["row_id"]), "rank": int(record["rank"]), "detector": str(record["detector"]),
            "score": _number(record["score"]), "label": str(record["label"]),
            "suggested": _optional(record, "suggested_label"), "suggested_action": action,
            "action": action.split(" ", 1)[0], "reason": _optional(record, "reason") or "",
            "detail": _optional(record, "reason_detail"),
            "group": GROUP_SEP.join(f"{c[len('group_'):]}={record[c]}" for c in group_columns),
            "why": _optional(record, "why"),
            "why_image": why_image if why_image and why_image.startswith("data:image/png;base64,") else None,
            "val": influenced(record.get("most_influenced_val_rows")),
        })
    return rows


def script_json(payload: Any) -> str:
    """JSON that is safe inside ``<script type="application/json">``: no ``<``, ``>``, ``&``, U+2028/2029."""
    text = json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                         ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return text


def render_page(frame: pd.DataFrame, train_views: dict[int, dict], val_views: dict[int, dict],
                meta: dict[str, Any]) -> str:
    """The page for ``frame``; ``meta``: ``name``, ``action``, ``apply_command``, ``storage_key``."""
    import html

    payload = {
        "meta": {**meta, "detectors": sorted(set(map(str, frame["detector"]))) or ["-"],
                 "group_columns": [c[len("group_"):] for c in frame.columns if c.startswith("group_")]},
        "rows": page_rows(frame),
        "train": {str(k): v for k, v in train_views.items()},
        "val": {str(k): v for k, v in val_views.items()},
    }
    template = resources.files("tda_clean").joinpath("review_page.html").read_text(encoding="utf-8")
    script = re.search(r"<script>(.*?)</script>", template, flags=re.S).group(1)  # the page script (no fields)
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode()
    fields = {"title": html.escape(f"tda-clean review: {meta['name']}"), "data": script_json(payload),
              "script_hash": f"sha256-{digest}"}
    return re.sub(r"\{\{(\w+)\}\}", lambda m: fields[m.group(1)], template)
