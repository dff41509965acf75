""""Why this row": XDA explanations of the top review candidates (docs/methods.md#xda-why-a-training-row-is-relevant).

:func:`why_columns` explains, for each of the ``rows`` most suspicious candidates, its total influence on the
``top_val`` validation rows it influences most (the same influence as the review's ``most_influenced_val_rows``:
the detector's influence spec, else :data:`tda_clean.review.REVIEW_SPEC`) in terms of the candidate's own input
features, by integrated gradients from the training mean (:mod:`tda_clean.influence.xda`). It returns

- ``why`` (str per candidate): the ``TOP_FEATURES`` largest signed shares ``e_k / sum |e|`` — for tables per original
  column (one-hot features summed back into their column), for images per pixel ``(row,col)``; positive = that
  feature's value makes the row MORE influential on those validation rows; ``""`` beyond the explained rows;
- ``why_image`` (images only): a ``data:image/png;base64`` heat map of ``e`` summed over channels (red positive,
  blue negative, symmetric scale); ``""`` beyond the explained rows;
- records for ``review/xda.json``: per explained row its row id, validation rows, relevance, completeness gap and
  attributions.

Cost: the review's one curvature fit (shared with ``most_influenced_val_rows``), ``2 * rows`` inverse products, the validation rows' gradients and ``rows * steps``
double-differentiated forward passes — bounded by ``rows``, whatever the number of candidates.
"""
from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from tda_clean.data.dataset import DataBundle

XDA_ROWS, XDA_STEPS, TOP_FEATURES = 10, 16, 5


def why_columns(engine, bundle: DataBundle, idx: np.ndarray, top_val: int = 3,
                rows: int = XDA_ROWS, steps: int = XDA_STEPS) -> tuple[dict[str, list[str]], list[dict[str, Any]]]:
    """``({"why": [...], ["why_image": [...]]}, records)``; lists are aligned with ``idx`` (see module docstring).
    ``engine``: the review's :class:`~tda_clean.influence.InfluenceEngine` (:func:`tda_clean.review.review_engine`)."""
    train, val = bundle.train, bundle.val
    image = train.X.ndim >= 3
    columns: dict[str, list[str]] = {"why": [""] * len(idx), **({"why_image": [""] * len(idx)} if image else {})}
    k = min(rows, len(idx))
    if k == 0 or not np.issubdtype(np.asarray(train.X).dtype, np.floating) or len(val) == 0:
        return columns, []  # nothing to explain, or integer inputs (token ids) have no input gradient
    from tda_clean.influence.xda import completeness, integrated_gradients, relevance_values, top_query_relevances

    chosen = idx[:k]
    relevances, S, top = top_query_relevances(engine, train.X[chosen], train.y[chosen], val.X, val.y, top_val)
    dtype = engine.space.flat().dtype
    baseline = np.asarray(train.X, dtype=np.float64).mean(0)
    groups = feature_columns(train.feature_names, train.X) if not image else None
    records = []
    for r, i in enumerate(chosen):
        relevance = relevances[r]
        x = np.asarray(train.X[i], dtype=np.float64)
        e = integrated_gradients(relevance, x, baseline, steps, dtype=dtype)
        value, at_baseline = relevance_values(relevance, np.stack([x, baseline]), dtype=dtype)
        record = {"row_id": int(train.row_id[i]), "val_row_ids": val.row_id[top[r]].tolist(),
                  "val_influence": S[r, top[r]].tolist(), "relevance": float(value),
                  "relevance_at_baseline": float(at_baseline),
                  "completeness_gap": completeness(relevance, x, baseline, e)}
        if image:
            columns["why"][r] = _pixel_text(e)
            columns["why_image"][r] = heatmap_uri(e)
            record["attribution"] = np.round(e, 10).tolist()
        else:
            shares = column_shares(e, groups)
            columns["why"][r] = _text(list(shares.items())[:TOP_FEATURES])
            record["columns"] = shares
        records.append(record)
    return columns, records


def feature_columns(names, X: np.ndarray) -> list[str]:
    """The original column of each encoded feature: ``col_value`` features (at least two sharing ``col_``, each
    taking at most two values in ``X``: one-hot, possibly standardised) map to ``col``; others to themselves.
    The shortest such prefix wins. Unnamed features are ``x0, x1, ...``."""
    names = list(names) if len(names) == X.shape[1] else [f"x{j}" for j in range(X.shape[1])]
    binary = [len(np.unique(X[:, j])) <= 2 for j in range(X.shape[1])]
    out = list(names)
    for j, name in enumerate(names):
        if not binary[j]:
            continue
        for cut in (p for p, ch in enumerate(name) if ch == "_" and p > 0):
            prefix = name[:cut + 1]
            members = [m for m, other in enumerate(names) if other.startswith(prefix)]
            if len(members) >= 2 and all(binary[m] for m in members):
                out[j] = name[:cut]
                break
    return out


def column_shares(e: np.ndarray, groups: list[str]) -> dict[str, float]:
    """``{column: sum of its features' e / sum |column sums|}``, largest magnitude first."""
    total: dict[str, float] = {}
    for value, column in zip(np.ravel(e), groups):
        total[column] = total.get(column, 0.0) + float(value)
    scale = sum(abs(v) for v in total.values()) or 1.0
    return {c: round(v / scale, 4) for c, v in sorted(total.items(), key=lambda kv: -abs(kv[1]))}


def _pixel_text(e: np.ndarray) -> str:
    """Largest signed pixel shares (channels summed), as ``(row,col) +0.12``."""
    m = e.sum(0) if e.ndim == 3 else e
    order = np.argsort(-np.abs(m), axis=None)[:TOP_FEATURES]
    scale = float(np.abs(m).sum()) or 1.0
    cells = [np.unravel_index(j, m.shape) for j in order]
    return _text([(f"({int(a)},{int(b)})", float(m[a, b] / scale)) for a, b in cells])


def _text(items: list[tuple[str, float]]) -> str:
    return ", ".join(f"{name} {value:+.2f}" for name, value in items)


def heatmap_uri(e: np.ndarray, min_pixels: int = 64) -> str:
    """``data:image/png;base64`` heat map of ``e`` ((H, W) or (C, H, W), summed over C): red = positive, blue =
    negative, white = 0, scale symmetric at the largest magnitude; nearest-neighbour upscaled to ``min_pixels``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = e.sum(0) if e.ndim == 3 else e
    scale = max(1, int(np.ceil(min_pixels / max(m.shape))))
    big = np.kron(m, np.ones((scale, scale)))
    limit = float(np.abs(m).max()) or 1.0
    buf = io.BytesIO()
    plt.imsave(buf, big, cmap="bwr", vmin=-limit, vmax=limit, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
