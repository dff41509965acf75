"""MLflow's schema of a logged DataFrame, computed column-wise instead of cell by cell.

``mlflow.data.from_pandas(df)`` infers the dataset's schema (``mlflow.types.utils._infer_schema``) when the
dataset is logged; its ``required`` flag of each column walks every cell in Python (``_infer_required``), which
for a training split of tens of thousands of rows and ~100 one-hot columns costs seconds. For numeric numpy
columns (``float``, ``int``, ``uint``, ``bool``) that flag is ``not isna().any()`` (NaN is the only missing value
such a column can hold), computed vectorised; other columns, and every column's type, go through MLflow's own
functions. The result equals ``_infer_schema(df)`` (tests/test_tracking_schema.py checks it).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

NUMERIC_KINDS = "fiub"  # numpy dtype kinds whose only missing value is NaN (float) or none at all


def pandas_schema(df: pd.DataFrame):
    """The ``mlflow.types.Schema`` MLflow infers for ``df`` (one ``ColSpec`` per column, in order)."""
    from mlflow.types import ColSpec, Schema
    from mlflow.types.utils import _infer_pandas_column, _infer_required

    specs = []
    for name in df.columns:
        col = df[name]
        numeric = isinstance(col.dtype, np.dtype) and col.dtype.kind in NUMERIC_KINDS  # not extension dtypes
        required = not bool(col.isna().any()) if numeric else _infer_required(col)
        specs.append(ColSpec(type=_infer_pandas_column(col), name=name, required=required))
    return Schema(specs)


def with_schema(dataset, df: pd.DataFrame):
    """``dataset`` (an ``mlflow.data`` PandasDataset of ``df``) with its cached schema filled by
    :func:`pandas_schema`; unchanged if MLflow no longer caches ``schema`` per instance."""
    if "schema" not in vars(type(dataset)) or not hasattr(type(dataset).schema, "attrname"):
        return dataset  # not a functools.cached_property: MLflow computes it its own way
    dataset.__dict__["schema"] = pandas_schema(df)
    return dataset
