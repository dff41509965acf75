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
    cols = list(features) + ([text[0]] if text else [])
    X = frame[cols].set_axis([str(c) for c in cols], axis=1)  # sklearn needs one type of column name (int -> str)
    pre = make_preprocessor(X, tuple(map(str, features)), (str(text[0]), text[1]) if text else None)
    pre.fit(X.iloc[splits[0]])
    out = [np.asarray(pre.transform(X.iloc[idx]), dtype=np.float32) for idx in splits]
    return out, tuple(str(n) for n in pre.get_feature_names_out())
