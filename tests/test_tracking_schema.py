"""The column-wise MLflow dataset schema (tda_clean.tracking.dataset_schema) equals MLflow's own inference."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("mlflow")


def _frame(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    with_nan = rng.normal(size=n)
    with_nan[7] = np.nan
    strings = rng.choice(["a", "b", "c"], n).astype(object)
    strings[3] = None
    nullable = pd.array(rng.integers(0, 5, n), dtype="Int64")
    nullable[11] = pd.NA
    return pd.DataFrame({
        "f64": rng.normal(size=n), "f64_nan": with_nan, "f32": rng.normal(size=n).astype(np.float32),
        "i64": rng.integers(0, 9, n), "u8": rng.integers(0, 9, n).astype(np.uint8), "flag": rng.random(n) > 0.5,
        "text": rng.choice(["x", "y"], n), "text_none": strings, "nullable_int": nullable,
        "when": pd.date_range("2020-01-01", periods=n, freq="h"),
    })


def test_column_wise_schema_equals_mlflows_inference():
    from mlflow.types.utils import _infer_schema

    from tda_clean.tracking.dataset_schema import pandas_schema

    df = _frame()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = _infer_schema(df)
        got = pandas_schema(df)
    assert got == expected
    assert got.to_dict() == expected.to_dict()
    required = {c["name"]: c["required"] for c in got.to_dict()}
    assert required["f64_nan"] is False and required["text_none"] is False and required["nullable_int"] is False
    assert required["f64"] is True and required["i64"] is True


def test_dataset_entity_is_unchanged():
    import mlflow.data

    from tda_clean.tracking.dataset_schema import with_schema

    df = _frame(seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = mlflow.data.from_pandas(df, name="t", targets="i64")._to_mlflow_entity()
        fast = with_schema(mlflow.data.from_pandas(df, name="t", targets="i64"), df)._to_mlflow_entity()
    fields = ("name", "digest", "source_type", "source", "schema", "profile")
    assert [getattr(fast, f) for f in fields] == [getattr(plain, f) for f in fields]
    assert '"required": false' in fast.schema  # the JSON schema carries the missing-value flags
