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
