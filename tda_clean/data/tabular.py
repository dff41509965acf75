"""Checks and preprocessing for tables: label encoding, NaN checks, scaling/one-hot fitted on train only."""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from tda_clean.errors import InputError


def encode_labels(values: pd.Series, column: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Integer class ids ``(n,)`` and class names (sorted; ``classes[k]`` is ``str`` of the label of id ``k``).

    Numeric labels must be integers (a float column is more likely a regression target); any other hashable
    label (strings such as 'yes' / 'cat') is a class by its ``str``. Raises InputError (naming ``column``) for
    missing, non-integer numeric or single-class labels.
    """
    if values.isna().any():
        raise InputError(f"label column {column!r}: {int(values.isna().sum())} missing values")
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        as_float = values.to_numpy(dtype=float)
        if not np.all(np.equal(np.mod(as_float, 1), 0)):
            raise InputError(f"label column {column!r} must hold integer class ids or names; found non-integer numbers")
        classes, y = np.unique(as_float.astype(np.int64), return_inverse=True)
    else:
        classes, y = np.unique(values.map(str).to_numpy(dtype=str), return_inverse=True)
    if len(classes) < 2:
        raise InputError(f"label column {column!r} has a single class ({classes[0]}); need at least two")
    return y.astype(np.int64), tuple(str(c) for c in classes)


def check_no_missing(frame: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    """InputError naming the columns among ``columns`` with NaN (or else +-inf), how many, and the first data row
    (0-based, header not counted)."""
    sub = frame[list(columns)]
    for problem, bad in (("missing", sub.isna()), ("infinite", np.isinf(sub.select_dtypes("number")))):
        counts = bad.sum()
        listed = "; ".join(f"{c!r} ({n}) first at row {int(np.argmax(bad[c].to_numpy()))}"
                           for c, n in counts[counts > 0].items())
        if listed:
            raise InputError(f"{what} columns with {problem} values: {listed}")


def make_preprocessor(frame: pd.DataFrame, features: tuple[str, ...],
                      text: tuple[str, int] | None = None) -> ColumnTransformer:
    """Standardise numeric (and boolean) features, one-hot encode the rest (unseen categories -> zeros); a free-text
    column ``text = (column, n)`` becomes TF-IDF weights of at most ``n`` terms. Dense output."""
    numeric = [c for c in features if pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c])]
    categorical = [c for c in features if c not in numeric]
    return ColumnTransformer(
        [("num", StandardScaler(), numeric),
         ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical)]
        + ([("text", TfidfVectorizer(max_features=text[1]), text[0])] if text else []),
        verbose_feature_names_out=False, sparse_threshold=0,
    )


def fit_transform_splits(
    frame: pd.DataFrame, features: tuple[str, ...], splits: tuple[np.ndarray, ...],
    text: tuple[str, int] | None = None,
) -> tuple[list[np.ndarray], tuple[str, ...]]:
    """Fit the preprocessor on ``frame.iloc[splits[0]]`` (train) and transform every split: float32 (n_s, d)."""
    return fit_preprocessing(frame, features, splits, text)[:2]


def fit_preprocessing(
    frame: pd.DataFrame, features: tuple[str, ...], splits: tuple[np.ndarray, ...],
    text: tuple[str, int] | None = None,
) -> tuple[list[np.ndarray], tuple[str, ...], dict]:
    """:func:`fit_transform_splits` plus the fitted preprocessing as JSON (:func:`preprocessing_spec`)."""
    cols = list(features) + ([text[0]] if text else [])
    X = frame[cols].set_axis([str(c) for c in cols], axis=1)  # sklearn needs one type of column name (int -> str)
    pre = make_preprocessor(X, tuple(map(str, features)), (str(text[0]), text[1]) if text else None)
    pre.fit(X.iloc[splits[0]])
    out = [np.asarray(pre.transform(X.iloc[idx]), dtype=np.float32) for idx in splits]
    names = tuple(str(n) for n in pre.get_feature_names_out())
    return out, names, preprocessing_spec(pre, X, names, X.iloc[splits[0][:2]])


def preprocessing_spec(pre: ColumnTransformer, X: pd.DataFrame, names: tuple[str, ...],
                       example: pd.DataFrame) -> dict:
    """The fitted ``pre`` as plain JSON, enough to rebuild its output (n, d) float32 from raw rows without sklearn
    (``tda_clean/tracking/serving_model.py`` does): ``columns`` the raw input columns and their ``types``
    (``double``/``long``/``boolean``/``string``), ``numeric`` (columns, ``mean``, ``scale``: ``(x - mean) / scale``
    computed in ``dtype``), ``categorical`` (columns, ``categories``: one indicator per category, compared as
    strings; an unseen value gives zeros), ``text`` (TF-IDF ``vocabulary`` term -> position, ``idf``, lower-cased
    ``token_pattern`` matches, l2-normalised rows) or None; blocks in that order, ``feature_names`` (d,); ``example``
    a few raw rows as records."""
    spec: dict = {"kind": "table", "columns": [str(c) for c in X.columns],
                  "types": {str(c): _column_type(X[c]) for c in X.columns},
                  "numeric": None, "categorical": None, "text": None, "feature_names": list(names)}
    for name, fitted, cols in pre.transformers_:
        cols = [cols] if isinstance(cols, str) else list(cols)
        if name == "num" and cols:
            dtype = "float32" if X[cols].iloc[:1].to_numpy().dtype == np.float32 else "float64"  # as sklearn sees it
            spec["numeric"] = {"columns": cols, "mean": fitted.mean_.tolist(), "scale": fitted.scale_.tolist(),
                               "dtype": dtype}
        elif name == "cat" and cols:
            spec["categorical"] = {"columns": cols, "categories": [[str(v) for v in c] for c in fitted.categories_]}
        elif name == "text" and cols:
            vocabulary = {str(k): int(v) for k, v in fitted.vocabulary_.items()}
            spec["text"] = {"column": cols[0], "vocabulary": vocabulary, "idf": fitted.idf_.tolist(),
                            "token_pattern": fitted.token_pattern, "lowercase": bool(fitted.lowercase)}
    spec["example"] = json_records(example)
    return spec


def _column_type(values: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(values):
        return "boolean"
    if pd.api.types.is_integer_dtype(values):
        return "long"
    return "double" if pd.api.types.is_numeric_dtype(values) else "string"


def json_records(frame: pd.DataFrame) -> list[dict]:
    """Rows as JSON-able records (numpy scalars -> Python; non-numeric values -> str)."""
    out = []
    for row in frame.to_dict(orient="records"):
        out.append({str(k): (v.item() if isinstance(v, np.generic) else v if isinstance(v, (bool, int, float))
                             else str(v)) for k, v in row.items()})
    return out
