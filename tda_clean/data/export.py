"""The cleaned training data written back in the user's own format.

``write_cleaned(source, audit, out_dir)`` takes the run's audit table (class names in ``new_label``) and writes
the rows of the user's training source ``data.path`` minus the removed ones, relabels applied as the original
label values: a CSV keeps every untouched record byte for byte (a relabelled record is re-quoted by the csv
module, only its label field changed), a Parquet file its columns and dtypes, a DataFrame
``train.parquet`` (``train.csv`` without pyarrow) with its index, an image folder becomes a manifest
``path,label`` (absolute paths; readable back as an image-path table). Built-in data sets get nothing here.
"""
from __future__ import annotations

import csv
import importlib.util
import io
from pathlib import Path

import numpy as np
import pandas as pd

from tda_clean.config import ImageFolderSource, TableSource
from tda_clean.data.sources import folder_images, in_memory, read_tables, table_row_ids
from tda_clean.data.tabular import encode_labels
from tda_clean.files import write_atomic


def write_cleaned(source, audit: pd.DataFrame, out_dir: Path) -> dict[str, str]:
    """Write ``out_dir/<file name of data.path>`` (tables) or ``out_dir/manifest.csv`` (image folders) atomically;
    return ``{"cleaned_data": path}`` or ``{}`` for a built-in data set."""
    if not isinstance(source, (TableSource, ImageFolderSource)) or (
            source.kind == "memory" and not isinstance(in_memory("path", source.path), pd.DataFrame)):
        return {}  # built-in data, in-memory arrays: train_cleaned.npz only
    out_dir.mkdir(exist_ok=True)
    if isinstance(source, ImageFolderSource):
        removed, new_name = _decisions(audit)
        files = folder_images("path", source.path)  # row_id = position; the training folder comes first
        out = out_dir / "manifest.csv"
        frame = pd.DataFrame({"path": [str(f.resolve()) for f in files],
                              "label": [new_name.get(i, f.parent.name) for i, f in enumerate(files)]})
        return _atomic(out, lambda tmp: frame.drop(index=list(removed & set(frame.index))).to_csv(tmp, index=False))
    out = out_dir / source.path.name
    if source.kind == "csv":
        records, (names, keep, relabelled, _) = _csv_records(source.path), _table_rows(source, audit)
        if len(records) - 1 == len(names):
            return _atomic(out, lambda tmp: _write_csv(tmp, records, source.label, names, keep, relabelled))
    frame = cleaned_frame(source, audit)
    if source.kind == "memory":  # a DataFrame keeps its index; Parquet only where pyarrow (an extra) is installed
        out = out_dir / f"train.{'parquet' if has_pyarrow() else 'csv'}"
    write = frame.to_csv if out.suffix == ".csv" else frame.to_parquet
    return _atomic(out, lambda tmp: write(tmp, index=source.kind == "memory"))


def has_pyarrow() -> bool:
    return importlib.util.find_spec("pyarrow") is not None


def cleaned_frame(source: TableSource, audit: pd.DataFrame) -> pd.DataFrame:
    """The training rows of a table source minus the removed ones, relabels applied as the user's own label values;
    for ``data.kind: memory`` the registered DataFrame itself (its index, columns and dtypes)."""
    names, keep, relabelled, df = _table_rows(source, audit)
    frame = (in_memory("path", source.path) if source.kind == "memory" else df.iloc[:len(names)]).copy()
    value_of = dict(zip(names, frame[source.label]))  # class name -> the user's own label value
    for p, name in relabelled.items():
        frame.iloc[p, frame.columns.get_loc(source.label)] = value_of[name]
    return frame[keep]


def _decisions(audit: pd.DataFrame) -> tuple[set[int], dict[int, str]]:
    """The removed row_ids and ``{row_id: new class name}`` of the relabelled ones."""
    relabel = audit[audit["action"] == "relabel"]
    return (set(audit.loc[audit["action"] == "remove", "row_id"].astype(int)),
            dict(zip(relabel["row_id"].astype(int), relabel["new_label"].map(_name))))


def _table_rows(source: TableSource, audit: pd.DataFrame):
    """Per row of the training file: class names (n,), kept mask (n,), ``{position: new class name}``; the table."""
    removed, new_name = _decisions(audit)
    df, split, _ = read_tables(source)
    n = len(df) if source.val_path is None else int((split == 0).sum())  # rows of the training file
    row_id, (y, classes) = table_row_ids(df, source)[:n], encode_labels(df[source.label], source.label)
    relabelled = {p: new_name[r] for p, r in enumerate(row_id) if r in new_name}
    return np.asarray(classes)[y[:n]], ~np.isin(row_id, list(removed)), relabelled, df


def _name(value) -> str:
    """A class name as written, or as read back from CSV (``1.0`` for the name ``1``)."""
    return str(int(value)) if isinstance(value, float) else str(value)


def _atomic(out: Path, write) -> dict[str, str]:
    return {"cleaned_data": str(write_atomic(out, write))}


def _csv_records(path: Path) -> list[tuple[str, list[str]]]:
    """Each non-blank CSV record (header first) as its raw text, line ending included, and its fields."""
    lines, taken = iter(io.StringIO(path.read_bytes().decode("utf-8"), newline="")), []

    def feed():
        for line in lines:
            taken.append(line)
            yield line

    records = []
    for fields in csv.reader(feed()):
        text = "".join(taken)
        taken.clear()
        if fields:
            records.append((text, fields))
    return records


def _write_csv(out: Path, records, label: str, names: np.ndarray, keep: np.ndarray, relabelled: dict) -> None:
    """Untouched records verbatim; relabelled ones with the label field set to the text other rows of that class
    use."""
    col = [name.lstrip("\ufeff") for name in records[0][1]].index(label)
    text_of = {name: fields[col] for name, (_, fields) in zip(names, records[1:])}
    with open(out, "w", encoding="utf-8", newline="") as f:
        f.write(records[0][0])
        for p, (text, fields) in enumerate(records[1:]):
            if keep[p] and p in relabelled:
                fields[col] = text_of[relabelled[p]]
                ending = text[len(text.rstrip("\r\n")):]
                buf = io.StringIO()
                csv.writer(buf, lineterminator=ending).writerow(fields)
                text = buf.getvalue()
            f.write(text if keep[p] else "")
