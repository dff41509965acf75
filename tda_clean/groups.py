"""Candidate groups of training rows for group influence and debiasing (issue 4).

Every builder returns :class:`Group` objects (name, sorted unique ``positions`` into the training split, kind,
small JSON-able ``info``); :func:`tda_clean.influence.group.group_positions` accepts them directly.

* :func:`predicate_group`  rows where a column predicate holds: ``'sex == "Female" and label == 1'``
  (``==, !=, <, <=, >, >=, in, not in`` joined by ``and`` / ``or`` / ``not``; unknown columns or values raise an
  :class:`InputError` that lists the valid ones);
* :func:`cell_groups`      random subsets of one cell of several columns (e.g. sex x race x label);
* :func:`feature_value_groups` random subsets of the rows sharing one feature value (a one-hot column) and
  one label, over all two-valued columns;
* :func:`cluster_groups`   the ``size`` rows nearest to each k-means centre, in feature space or in gradient space
  (pass per-row gradients as ``Z``);
* :func:`random_groups`    uniform random draws;
* :func:`row_id_group`     an explicit list of ``row_id``s.

Sizes are an int number of rows or a float fraction in (0, 1) of the pool (:func:`resolve_size`). Every random
step takes an explicit ``seed``.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from tda_clean.errors import InputError


@dataclass(frozen=True)
class Group:
    """A named set of training-row positions (sorted, unique)."""

    name: str
    positions: np.ndarray
    kind: str = "explicit"
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.positions)


def _make(name: str, positions, kind: str, **info) -> Group:
    pos = np.unique(np.asarray(positions, dtype=np.int64))
    if pos.size == 0:
        raise InputError(f"group {name!r}: no rows (the group is empty)")
    return Group(name, pos, kind, info)


def resolve_size(size: int | float, pool: int, what: str = "size") -> int:
    """Rows for ``size``: an int >= 1, or a float fraction in (0, 1) of ``pool`` (rounded, at least 1)."""
    if isinstance(size, bool) or not isinstance(size, (int, float, np.integer, np.floating)):
        raise InputError(f"{what}: expected a row count or a fraction in (0, 1), got {size!r}")
    if isinstance(size, (float, np.floating)) and not float(size).is_integer():
        if not 0 < size < 1:
            raise InputError(f"{what}: a fraction must lie in (0, 1), got {size}")
        k = max(1, int(round(float(size) * pool)))
    else:
        k = int(size)
    if k < 1:
        raise InputError(f"{what}: must select at least one row, got {size!r}")
    if k > pool:
        raise InputError(f"{what}: {k} rows requested but the candidate pool has only {pool}")
    return k


# ------------------------------------------------------------------------------------------ predicates
_OPS = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.In: "in",
        ast.NotIn: "not in"}


def group_frame(dataset) -> pd.DataFrame:
    """Columns predicates can name for an ``IndexedDataset``: its group columns, ``label`` and ``row_id``."""
    frame = dataset.groups.reset_index(drop=True).copy()
    frame["label"] = np.asarray(dataset.y)
    frame["row_id"] = np.asarray(dataset.row_id)
    return frame


def predicate_mask(frame: pd.DataFrame, expr: str) -> np.ndarray:
    """(n,) bool mask of the rows of ``frame`` where ``expr`` holds (see module docstring for the grammar)."""
    if not isinstance(expr, str) or not expr.strip():
        raise InputError(f"predicate: expected a non-empty expression string, got {expr!r}")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as exc:
        raise InputError(f"predicate {expr!r}: not a valid expression ({exc.msg})") from None
    return np.asarray(_eval(tree.body, frame, expr), dtype=bool)


def _eval(node, frame: pd.DataFrame, expr: str) -> np.ndarray:
    if isinstance(node, ast.BoolOp):
        parts = [_eval(v, frame, expr) for v in node.values]
        return np.logical_and.reduce(parts) if isinstance(node.op, ast.And) else np.logical_or.reduce(parts)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return ~_eval(node.operand, frame, expr)
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _OPS:
        if not isinstance(node.left, ast.Name):
            raise InputError(f"predicate {expr!r}: the left side of a comparison must be a column name")
        column, op = node.left.id, _OPS[type(node.ops[0])]
        if column not in frame.columns:
            raise InputError(f"predicate {expr!r}: unknown column {column!r} (valid columns: "
                             f"{', '.join(map(str, frame.columns))})")
        try:
            value = ast.literal_eval(node.comparators[0])
        except ValueError:
            raise InputError(f"predicate {expr!r}: the right side of {column} {op} must be a literal") from None
        return _compare(frame[column], column, op, value, expr)
    raise InputError(f"predicate {expr!r}: only comparisons (==, !=, <, <=, >, >=, in, not in) joined by "
                     "and / or / not are supported")


def _compare(col: pd.Series, column: str, op: str, value, expr: str) -> np.ndarray:
    numeric = pd.api.types.is_numeric_dtype(col)
    if op in ("in", "not in"):
        if not isinstance(value, (list, tuple, set)):
            raise InputError(f"predicate {expr!r}: {column} {op} needs a list of values")
        values = list(value)
    else:
        values = [value]
    if op in ("==", "!=", "in", "not in"):
        present = set(col.unique().tolist())
        key = (lambda v: v) if numeric else str
        for v in values:
            if (numeric and not isinstance(v, (int, float))) or key(v) not in {key(p) for p in present}:
                shown = ", ".join(map(repr, sorted(present, key=str)[:20]))
                raise InputError(f"predicate {expr!r}: value {v!r} not found in column {column!r} "
                                 f"(valid values: {shown}{', ...' if len(present) > 20 else ''})")
        data = col.to_numpy() if numeric else col.astype(str).to_numpy()
        vals = values if numeric else [str(v) for v in values]
        hit = np.isin(data, vals)
        return hit if op in ("==", "in") else ~hit
    if not numeric or not isinstance(value, (int, float)):
        raise InputError(f"predicate {expr!r}: {op} needs a numeric column and value ({column!r})")
    data = col.to_numpy()
    return {"<": data < value, "<=": data <= value, ">": data > value, ">=": data >= value}[op]


def predicate_group(frame: pd.DataFrame, expr: str, name: str | None = None) -> Group:
    """Rows where ``expr`` holds on ``frame`` (:func:`group_frame` of the training split)."""
    mask = predicate_mask(frame, expr)
    if not mask.any():
        raise InputError(f"predicate {expr!r}: selects no rows (the group is empty)")
    return _make(name or expr, np.flatnonzero(mask), "predicate", predicate=expr)


# ------------------------------------------------------------------------------------------ draws
def random_groups(n: int, size: int | float, count: int, seed: int,
                  candidates: np.ndarray | None = None) -> list[Group]:
    """``count`` uniform random groups of ``size`` rows (among ``candidates`` positions when given)."""
    pool = np.arange(n) if candidates is None else np.asarray(candidates, dtype=np.int64)
    k = resolve_size(size, len(pool))
    rng = np.random.default_rng(seed)
    return [_make(f"random{j}", rng.choice(pool, size=k, replace=False), "random", size=k, seed=seed)
            for j in range(count)]


def cell_groups(frame: pd.DataFrame, columns: Sequence[str], size: int | float, count: int, seed: int,
                n_total: int | None = None) -> list[Group]:
    """``count`` random groups of ``size`` rows, each inside one cell of ``columns`` (e.g. sex, race, label).

    A fractional ``size`` is a fraction of ALL rows (``n_total``, default ``len(frame)``); cells too small for
    the size are skipped; groups cycle over the eligible cells in a seeded order.
    """
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(f"cell_groups: unknown column {missing[0]!r} (valid columns: {', '.join(map(str, frame.columns))})")
    keys = frame[list(columns)].astype(str).agg("&".join, axis=1).to_numpy()
    cells = {c: np.flatnonzero(keys == c) for c in sorted(set(keys))}
    return _groups_in_cells(cells, size, count, seed, len(frame) if n_total is None else n_total, "cell",
                            "cell_groups", f"cell of {list(columns)}")


def feature_value_groups(X: np.ndarray, feature_names: Sequence[str], labels: np.ndarray, size: int | float,
                         count: int, seed: int) -> list[Group]:
    """``count`` random groups of ``size`` rows sharing one feature value and one label (Koh et al. 2019).

    ``X`` (n, d): every column with exactly two distinct values (a one-hot category or a binary feature, also
    after standardisation) defines, per label in ``labels`` (n,), the cell of rows at its larger value, named
    ``"<feature>&label=<y>"``. A fractional
    ``size`` is a fraction of all n rows; cells too small are skipped; groups cycle over the eligible cells of
    ALL indicator columns in a seeded order.
    """
    X, labels = np.asarray(X), np.asarray(labels)
    if len(X) == 0:
        raise InputError("feature_value_groups: X has no rows")
    X = X.reshape(len(X), -1)
    if len(feature_names) != X.shape[1] or len(labels) != len(X):
        raise InputError(f"feature_value_groups: X has {X.shape[1]} columns and {len(X)} rows but "
                         f"{len(feature_names)} feature names and {len(labels)} labels")
    cells = {}
    for j, name in enumerate(feature_names):
        values = np.unique(X[:, j])
        if len(values) != 2 or np.isnan(values).any():
            continue
        for label in np.unique(labels):
            cells[f"{name}&label={label}"] = np.flatnonzero((X[:, j] == values[1]) & (labels == label))
    if not cells:
        raise InputError("feature_value_groups: X has no two-valued (indicator) column to form feature-value groups")
    return _groups_in_cells(cells, size, count, seed, len(X), "feature", "feature_value_groups",
                            "feature-value x label cell")


def _groups_in_cells(cells: dict[str, np.ndarray], size: int | float, count: int, seed: int, n_total: int,
                     kind: str, caller: str, what: str) -> list[Group]:
    """``count`` random ``size``-row subsets of the cells large enough, cycling over them in a seeded order."""
    k = resolve_size(size, n_total)
    eligible = [c for c, rows in cells.items() if len(rows) >= k]
    if not eligible:
        raise InputError(f"{caller}: no {what} has {k} rows (largest: {max(len(r) for r in cells.values())})")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(eligible))
    out = []
    for j in range(count):
        cell = eligible[order[j % len(eligible)]]
        out.append(_make(f"{kind}{j}:{cell}", rng.choice(cells[cell], size=k, replace=False), kind, cell=cell, size=k))
    return out


def cluster_groups(Z: np.ndarray, size: int | float, count: int, seed: int, n_clusters: int | None = None,
                   kind: str = "kmeans") -> list[Group]:
    """``count`` coherent groups: the ``size`` rows nearest to k-means centres of ``Z`` (n, d).

    ``Z`` is a feature matrix (feature-space clusters) or per-row gradients (gradient-space clusters, Koh et
    al. 2019). ``n_clusters`` defaults to ``count``; centres are used in a seeded order (cycled if needed).
    """
    from sklearn.cluster import KMeans

    Z = np.asarray(Z, dtype=np.float64).reshape(len(Z), -1)
    k = resolve_size(size, len(Z))
    n_clusters = count if n_clusters is None else n_clusters
    if n_clusters < 1 or n_clusters > len(Z):
        raise InputError(f"cluster_groups: n_clusters must lie in [1, {len(Z)}], got {n_clusters}")
    scale = Z.std(0)
    Zs = (Z - Z.mean(0)) / np.where(scale > 0, scale, 1.0)
    km = KMeans(n_clusters=n_clusters, random_state=seed, n_init=1).fit(Zs)
    order = np.random.default_rng(seed).permutation(n_clusters)
    out = []
    for j in range(count):
        c = order[j % n_clusters]
        dist = ((Zs - km.cluster_centers_[c]) ** 2).sum(1)
        out.append(_make(f"{kind}{j}:c{c}", np.argpartition(dist, k - 1)[:k], kind, cluster=int(c), size=k))
    return out


def row_id_group(row_id: np.ndarray, ids: Sequence[int], name: str = "row_ids") -> Group:
    """Positions of the given ``row_id`` values (unknown ids raise, listing a few)."""
    row_id = np.asarray(row_id)
    ids = np.asarray(list(ids), dtype=np.int64)
    if ids.size == 0:
        raise InputError(f"group {name!r}: no row ids given (the group is empty)")
    where = {int(r): i for i, r in enumerate(row_id)}
    unknown = [int(i) for i in ids if int(i) not in where]
    if unknown:
        raise InputError(f"group {name!r}: row_id {unknown[:5]} not in the training split ({len(unknown)} unknown)")
    return _make(name, [where[int(i)] for i in ids], "row_ids")
