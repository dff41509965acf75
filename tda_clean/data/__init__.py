"""Data: sources -> checks -> stratified split -> preprocessing (fitted on train) -> scenario."""
from __future__ import annotations

import numpy as np
import pandas as pd

from tda_clean.config import RunConfig
from tda_clean.data.dataset import DataBundle, IndexedDataset, small_cells
from tda_clean.data.scenarios import apply_scenario
from tda_clean.data.sources import RawImages, RawTable, load_source
from tda_clean.data.splits import stratified_split, user_split
from tda_clean.data.tabular import check_no_missing, encode_labels, fit_preprocessing
from tda_clean.errors import InputError

__all__ = ["DataBundle", "IndexedDataset", "load_bundle", "build_bundle"]


def load_bundle(config: RunConfig) -> DataBundle:
    """Load the configured source, split it, preprocess it and apply the scenario. Input files are only read."""
    return apply_scenario(build_bundle(load_source(config.data), config), config.scenario, config.seed)


def build_bundle(raw: RawTable | RawImages, config: RunConfig) -> DataBundle:
    if isinstance(raw, RawImages):
        y, classes = raw.y, raw.classes
        groups = pd.DataFrame(index=range(len(raw.y))) if raw.groups is None else raw.groups.reset_index(drop=True)
    else:
        if raw.frame.empty:
            raise InputError(f"data: {raw.name} has no rows")
        y, classes = encode_labels(raw.frame[raw.label], raw.label)
        check_no_missing(raw.frame, raw.features + raw.text[:1] if raw.text else raw.features, "feature")
        check_no_missing(raw.frame, raw.groups, "group")
        groups = raw.frame[list(raw.groups)].astype(str).reset_index(drop=True)
    parts = stratified_split(y, config.split, config.seed) if raw.split is None else user_split(raw.split, y, classes)
    if isinstance(raw, RawImages):
        X_parts, names = [raw.X[idx] for idx in parts], ()
        preprocessing = array_preprocessing(X_parts[1] if len(X_parts[1]) else X_parts[0], pixel_scale(config.data))
    else:
        X_parts, names, preprocessing = fit_preprocessing(raw.frame, raw.features, parts, raw.text)
    splits = [
        IndexedDataset(raw.row_id[idx], X, y[idx], groups.iloc[idx].reset_index(drop=True), classes, names)
        for idx, X in zip(parts, X_parts)
    ]
    _check_groups_in_test(groups, splits[2])
    objective = getattr(config.detector, "objective", "")
    if objective in ("demographic_parity_gap", "equalized_odds_gap") and len(classes) != 2:
        raise InputError(f"detector.objective: {objective} needs binary labels; the data has {len(classes)} classes")
    info = {"source": raw.name, "n_rows": int(len(y)), "n_train": len(splits[0]), "n_val": len(splits[1]),
            "n_test": len(splits[2]), "n_classes": len(classes), "feature_shape": list(splits[0].feature_shape),
            "classes": list(classes), "groups": list(groups.columns), "scenario": "none", "n_corrupted": 0,
            # test cells left out of worst-group accuracy and the gaps (evaluation.min_group_size, min_label_rows)
            "small_groups": small_cells(splits[2].group_keys(), splits[2].y, len(classes),
                                        config.evaluation.min_group_size, config.evaluation.min_label_rows)}
    return DataBundle(raw.name, *splits, info=info, preprocessing=preprocessing)


def pixel_scale(source) -> float:
    """What the source's raw values are divided by to give the model's input: digits' 0..16 grey levels, 8-bit
    pixels of image files and Fashion-MNIST, 1 for arrays given to :func:`tda_clean.clean` (used as they are)."""
    if source.kind == "digits":
        return 16.0
    if source.kind in ("fashion_mnist", "image_folder") or getattr(source, "image_column", None):
        return 255.0
    return 1.0


def array_preprocessing(X: np.ndarray, scale: float) -> dict:
    """The JSON recipe for array inputs: raw values ``(n, *shape)`` (or flattened ``(n, prod(shape))``) divided by
    ``scale`` give the model input ``(n, *shape)`` of ``dtype`` (float32; integer arrays given as they are stay
    integer); ``example`` one raw row."""
    return {"kind": "array", "shape": list(X.shape[1:]), "scale": scale, "dtype": str(X.dtype),
            "example": np.round(X[:1].astype(np.float64) * scale, 6).tolist()}


def _check_groups_in_test(groups: pd.DataFrame, test: IndexedDataset) -> None:
    """Every group value must have test rows, or its accuracy (and the worst-group figure) is undefined."""
    for column in groups.columns:
        missing = sorted(set(groups[column]) - set(test.groups[column]))
        if missing:
            counts = groups[column].value_counts()
            raise InputError(
                f"group column {column!r}: value {missing[0]!r} ({int(counts[missing[0]])} rows) has no rows in the "
                "test split; merge it into another value or raise split.test_fraction"
            )
