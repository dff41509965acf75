"""CSV files a person may open in a spreadsheet: text cells that a spreadsheet would run as a formula are
written with a leading ``'`` (OWASP "CSV injection").

A text cell starting with ``= + - @``, a tab or a carriage return gets a ``'`` in front; so does one that
already starts with ``'``, which makes the escape reversible: :func:`unescape_cell` drops exactly one leading
``'``. Numeric columns are written as numbers (``-0.5`` is a value, not a formula). Used for the review's
``candidates.csv`` and the run's ``audit.csv`` (read back with :func:`read_safe_csv`); the cleaned data written in
the user's own format (``cleaned/``) is left exactly as the user's file was.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def escape_cell(value):
    """``value`` with a leading ``'`` when it is text starting with one of :data:`FORMULA_START`."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_START) else value


def unescape_cell(value):
    """Inverse of :func:`escape_cell` for a cell read back from a file it wrote."""
    return value[1:] if isinstance(value, str) and value.startswith("'") else value


def escape_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy with every text cell escaped (column names too); numeric columns unchanged."""
    out = frame.rename(columns=lambda c: escape_cell(c) if isinstance(c, str) else c)
    for column in out.columns:
        if _text(out[column]):
            out[column] = out[column].map(escape_cell)
    return out


def _text(column: pd.Series) -> bool:
    return not pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def write_safe_csv(frame: pd.DataFrame, path: Path) -> None:
    """``frame`` (index dropped) as UTF-8 CSV with escaped text cells and CRLF line ends (RFC 4180; with ``\n``
    alone the csv module would leave a bare CR in a cell unquoted and split the record)."""
    escape_frame(frame).to_csv(path, index=False, lineterminator="\r\n")


def read_safe_csv(path: Path) -> pd.DataFrame:
    """A file :func:`write_safe_csv` wrote, text cells unescaped (the values as they were written)."""
    frame = pd.read_csv(path)
    frame = frame.rename(columns=unescape_cell)
    for column in frame.columns:
        if _text(frame[column]):
            frame[column] = frame[column].map(unescape_cell)
    return frame
