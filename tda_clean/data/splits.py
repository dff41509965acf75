"""Deterministic stratified train / validation / test split."""
from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from tda_clean.config import SplitConfig
from tda_clean.errors import InputError


def stratified_split(y: np.ndarray, config: SplitConfig, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions (sorted int arrays) of train, validation and test rows, stratified by label.

    A pure function of ``(y, config, seed)``: the same inputs give the same split on every machine.
    """
    positions = np.arange(len(y))
    try:
        n_test = int(round(config.test_fraction * len(y)))
        n_val = int(round(config.val_fraction * len(y)))
        rest, test = train_test_split(positions, test_size=n_test, stratify=y, random_state=seed)
        train, val = train_test_split(rest, test_size=n_val, stratify=y[rest], random_state=seed + 1)
    except ValueError as exc:
        counts = np.bincount(y)
        raise InputError(
            f"split: cannot stratify {len(y)} rows with class counts {counts.tolist()} ({exc})"
        ) from None
    return np.sort(train), np.sort(val), np.sort(test)


def user_split(split: np.ndarray, y: np.ndarray, classes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions of the user's own train / validation / test rows (``split`` (n,) codes 0 / 1 / 2).

    Raises InputError for an empty split or a class with validation or test rows but no training rows.
    """
    parts = tuple(np.flatnonzero(split == k) for k in range(3))
    for name, idx in zip(("train", "validation", "test"), parts):
        if not len(idx):
            raise InputError(f"data: the {name} split has no rows")
    for name, idx in zip(("validation", "test"), parts[1:]):
        unseen = np.setdiff1d(y[idx], y[parts[0]])
        if len(unseen):
            raise InputError(f"data: class {classes[unseen[0]]!r} has {int((y[idx] == unseen[0]).sum())} rows in the "
                             f"{name} split but none in train")
    return parts  # type: ignore[return-value]
