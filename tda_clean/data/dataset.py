"""The indexed dataset every stage passes around, and the bundle of splits a run works on."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

GROUP_SEP = "&"


def intersection_keys(groups: pd.DataFrame) -> np.ndarray:
    """(n,) str, ``col=value`` joined by ``&`` over all group columns of ``groups`` (n, g), g >= 1."""
    keys = (f"{groups.columns[0]}=" + groups.iloc[:, 0].astype(str)).to_numpy(dtype=object)
    for c in groups.columns[1:]:
        keys = keys + GROUP_SEP + (f"{c}=" + groups[c].astype(str)).to_numpy(dtype=object)
    return keys.astype(str)


def small_cells(keys: np.ndarray, y: np.ndarray, n_classes: int, min_rows: int, min_label_rows: int = 1) -> list[str]:
    """Group cells (values of ``keys`` (n,) str, ``''`` = no groups, never small) with fewer than ``min_rows``
    rows or, when the labels ``y`` (n,) are binary (``n_classes == 2``), fewer than ``min_label_rows`` rows of
    either class (the cell's true- or false-positive rate would be undefined or noise), in sorted order."""
    keys, y = np.asarray(keys, dtype=str), np.asarray(y)
    out = []
    for k in np.unique(keys):
        in_cell = keys == k
        per_label = [int((in_cell & (y == c)).sum()) for c in range(n_classes)] if n_classes == 2 else []
        if k and (in_cell.sum() < min_rows or min(per_label, default=min_label_rows) < min_label_rows):
            out.append(str(k))
    return out


@dataclass(frozen=True)
class IndexedDataset:
    """Rows with a stable identity.

    row_id:  (n,) int64, stable across splits, corruptions and cleaning (an action never renumbers rows).
    X:       (n, *feature_shape) float32 features (tabular: (n, d); images: (n, H, W) or (n, C, H, W)).
    y:       (n,) int64 class ids in ``range(len(classes))``.
    groups:  DataFrame (n, g) of string group values (``sex``, ``race``...), possibly with no columns.
    classes: class names, ``classes[k]`` is the original label of class id ``k``.
    weight:  (n,) float64 training weights or None (all ones).
    """

    row_id: np.ndarray
    X: np.ndarray
    y: np.ndarray
    groups: pd.DataFrame
    classes: tuple[str, ...]
    feature_names: tuple[str, ...] = ()
    weight: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.y)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.X.shape[1:])

    def subset(self, positions: np.ndarray) -> "IndexedDataset":
        """Rows at ``positions`` (int array or boolean mask), as a new dataset."""
        positions = np.asarray(positions)
        if positions.dtype == bool:
            positions = np.flatnonzero(positions)
        return replace(
            self, row_id=self.row_id[positions], X=self.X[positions], y=self.y[positions],
            groups=self.groups.iloc[positions].reset_index(drop=True),
            weight=None if self.weight is None else self.weight[positions],
        )

    def group_keys(self) -> np.ndarray:
        """(n,) str: the intersectional group of each row, e.g. ``sex=Female&race=White`` ('' when no groups)."""
        return intersection_keys(self.groups) if self.groups.shape[1] else np.full(len(self), "")

    def fingerprint(self) -> str:
        """Hash of ids, features, labels, weights and groups (16 hex digits)."""
        h = hashlib.sha256()
        for arr in (self.row_id, self.X, self.y) + (() if self.weight is None else (self.weight,)):
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update(self.groups.to_csv(index=False).encode())
        return h.hexdigest()[:16]

    def frame(self) -> pd.DataFrame:
        """Flat DataFrame view (row_id, features, label, groups), e.g. for MLflow dataset logging."""
        flat = self.X.reshape(len(self), -1)
        names = list(self.feature_names) if len(self.feature_names) == flat.shape[1] else [f"x{i}" for i in range(flat.shape[1])]
        df = pd.DataFrame(flat, columns=names)
        df.insert(0, "row_id", self.row_id)
        df["label"] = self.y
        for c in self.groups.columns:
            df[f"group_{c}"] = self.groups[c].to_numpy()
        return df

    # ---------------------------------------------------------------- persistence (no pickle)
    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        out = {f"{prefix}row_id": self.row_id, f"{prefix}X": self.X, f"{prefix}y": self.y}
        if self.weight is not None:
            out[f"{prefix}weight"] = self.weight
        for c in self.groups.columns:
            out[f"{prefix}group:{c}"] = self.groups[c].to_numpy(dtype=str)
        return out

    @classmethod
    def from_arrays(cls, arrays: Any, prefix: str, classes: tuple[str, ...], feature_names: tuple[str, ...]) -> "IndexedDataset":
        keys = [k for k in arrays.files if k.startswith(f"{prefix}group:")]
        groups = pd.DataFrame({k.split(":", 1)[1]: arrays[k].astype(str) for k in keys})
        if not keys:
            groups = pd.DataFrame(index=range(len(arrays[f"{prefix}y"])))
        w = f"{prefix}weight"
        return cls(
            row_id=arrays[f"{prefix}row_id"], X=arrays[f"{prefix}X"], y=arrays[f"{prefix}y"], groups=groups,
            classes=classes, feature_names=feature_names, weight=arrays[w] if w in arrays.files else None,
        )


@dataclass(frozen=True)
class DataBundle:
    """Everything a run trains and evaluates on.

    train/val/test:    the splits; ``train`` carries the scenario's corruption (if any), val/test are clean.
    corrupted_mask:    (n_train,) bool ground truth of corrupted training rows, or None (no scenario).
    clean_train_y:     (n_train,) labels before corruption, or None.
    triggered_test:    test rows (non-target classes) with the backdoor trigger and their TRUE labels, or None.
    attack_target:     class id the backdoor sends triggered inputs to, or None.
    info:              small JSON-able description (source, sizes, scenario).
    preprocessing:     JSON-able recipe from the user's raw rows to model input (fitted on train; the ``input``
                       of :func:`tda_clean.tracking.servable.serving_spec`), or None (a folder from before it existed).
    """

    name: str
    train: IndexedDataset
    val: IndexedDataset
    test: IndexedDataset
    corrupted_mask: np.ndarray | None = None
    clean_train_y: np.ndarray | None = None
    triggered_test: IndexedDataset | None = None
    attack_target: int | None = None
    info: dict[str, Any] = field(default_factory=dict)
    preprocessing: dict[str, Any] | None = None

    @property
    def classes(self) -> tuple[str, ...]:
        return self.train.classes

    def save(self, path: str | Path) -> None:
        arrays: dict[str, np.ndarray] = {}
        for split in ("train", "val", "test"):
            arrays.update(getattr(self, split).to_arrays(f"{split}/"))
        if self.triggered_test is not None:
            arrays.update(self.triggered_test.to_arrays("triggered/"))
        if self.corrupted_mask is not None:
            arrays["corrupted_mask"] = self.corrupted_mask
            arrays["clean_train_y"] = self.clean_train_y
        meta = {"name": self.name, "classes": list(self.classes), "feature_names": list(self.train.feature_names),
                "attack_target": self.attack_target, "info": self.info, "preprocessing": self.preprocessing}
        np.savez(path, meta=np.array(json.dumps(meta)), **arrays)

    @classmethod
    def load(cls, path: str | Path) -> "DataBundle":
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            classes, names = tuple(meta["classes"]), tuple(meta["feature_names"])
            split = {s: IndexedDataset.from_arrays(f, f"{s}/", classes, names) for s in ("train", "val", "test")}
            triggered = IndexedDataset.from_arrays(f, "triggered/", classes, names) if "triggered/y" in f.files else None
            return cls(
                name=meta["name"], **split, triggered_test=triggered,
                corrupted_mask=f["corrupted_mask"] if "corrupted_mask" in f.files else None,
                clean_train_y=f["clean_train_y"] if "clean_train_y" in f.files else None,
                attack_target=meta["attack_target"], info=meta["info"], preprocessing=meta.get("preprocessing"),
            )
