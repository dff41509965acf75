"""Corruption scenarios with ground truth: label flips and two backdoors (BadNets patch of any position, size,
pattern and blending; blended full-image pattern).

Each scenario takes the clean bundle and returns a NEW bundle whose training split is corrupted, plus the
ground-truth mask of corrupted training rows. The clean arrays are never written to.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

from tda_clean.config import BadNets, Blended, ClassFlip, GroupFlip, NoScenario, UniformFlip
from tda_clean.data.dataset import DataBundle, IndexedDataset
from tda_clean.errors import InputError


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, 0x5CE7A])


def _choose(rng: np.random.Generator, candidates: np.ndarray, rate: float, what: str, k: int | None = None) -> np.ndarray:
    """``k`` (default ``round(rate * len(candidates))``) distinct candidates, sorted."""
    k = int(round(rate * len(candidates))) if k is None else min(k, len(candidates))
    if k == 0:
        raise InputError(f"scenario: rate {rate} of {len(candidates)} {what} selects no rows")
    return np.sort(rng.choice(candidates, size=k, replace=False))


def _check_class(value: int, n_classes: int, key: str) -> None:
    if not 0 <= value < n_classes:
        raise InputError(f"scenario.{key}: class {value} not in 0..{n_classes - 1}")


def _flip(bundle: DataBundle, rows: np.ndarray, new_labels: np.ndarray, kind: str) -> DataBundle:
    train = bundle.train
    y = train.y.copy()
    y[rows] = new_labels
    emptied = sorted(set(train.y.tolist()) - set(y.tolist()))
    if emptied:
        raise InputError(f"scenario.rate: {kind} relabels every training row of class {emptied[0]}; lower the rate")
    mask = np.zeros(len(train), dtype=bool)
    mask[rows] = True
    info = {**bundle.info, "scenario": kind, "n_corrupted": int(mask.sum())}
    return replace(bundle, train=replace(train, y=y), corrupted_mask=mask, clean_train_y=train.y.copy(), info=info)


def uniform_flip(bundle: DataBundle, cfg: UniformFlip, seed: int) -> DataBundle:
    rng = _rng(seed)
    train = bundle.train
    rows = _choose(rng, np.arange(len(train)), cfg.rate, "training rows")
    shift = rng.integers(1, train.n_classes, size=len(rows))
    return _flip(bundle, rows, (train.y[rows] + shift) % train.n_classes, cfg.kind)


def class_flip(bundle: DataBundle, cfg: ClassFlip, seed: int) -> DataBundle:
    _check_class(cfg.source, bundle.train.n_classes, "source")
    _check_class(cfg.target, bundle.train.n_classes, "target")
    rows = _choose(_rng(seed), np.flatnonzero(bundle.train.y == cfg.source), cfg.rate, f"class-{cfg.source} rows")
    return _flip(bundle, rows, np.full(len(rows), cfg.target), cfg.kind)


def group_flip(bundle: DataBundle, cfg: GroupFlip, seed: int) -> DataBundle:
    train = bundle.train
    if cfg.column not in train.groups.columns:
        raise InputError(f"scenario.column: {cfg.column!r} is not a group column (groups: {list(train.groups.columns)})")
    values = train.groups[cfg.column].to_numpy(dtype=str)
    if cfg.value not in set(values):
        raise InputError(f"scenario.value: {cfg.value!r} not found in group {cfg.column!r} (values: {sorted(map(str, set(values)))})")
    _check_class(cfg.source, train.n_classes, "source")
    _check_class(cfg.target, train.n_classes, "target")
    candidates = np.flatnonzero((values == cfg.value) & (train.y == cfg.source))
    rows = _choose(_rng(seed), candidates, cfg.rate, f"{cfg.column}={cfg.value} rows with label {cfg.source}")
    return _flip(bundle, rows, np.full(len(rows), cfg.target), cfg.kind)


def stamp_trigger(X: np.ndarray, patch_size: int, value: float) -> np.ndarray:
    """Copy of images ``X`` (n, H, W) or (n, C, H, W) with a square patch in the bottom-right corner."""
    out = X.copy()
    out[..., -patch_size:, -patch_size:] = value
    return out


def trigger_geometry(cfg: BadNets, image_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(row, col, height, width)`` of the configured patch in ``image_hw`` images; InputError naming the key
    when it does not fit or lies outside."""
    H, W = image_hw
    h, w = (cfg.patch_size, cfg.patch_size) if isinstance(cfg.patch_size, int) else cfg.patch_size
    if h >= H or w >= W:
        raise InputError(f"scenario.patch_size: {cfg.patch_size} does not fit images of size {(H, W)}")
    if isinstance(cfg.position, str):
        row = {"t": 0, "b": H - h, "c": (H - h) // 2}[cfg.position[0]]
        col = {"l": 0, "r": W - w, "c": (W - w) // 2}[cfg.position.split("-")[-1][0]]
    else:
        row, col = cfg.position
        if row + h > H or col + w > W:
            raise InputError(f"scenario.position: a {h}x{w} patch at [{row}, {col}] lies outside the {H}x{W} images")
    return int(row), int(col), int(h), int(w)


def trigger_patch(cfg: BadNets, h: int, w: int) -> np.ndarray:
    """The (h, w) float32 patch of the configured ``pattern`` (broadcast over channels when stamped)."""
    if cfg.pattern == "random":
        return np.random.default_rng(cfg.pattern_seed).uniform(0, 1, (h, w)).astype(np.float32)
    patch = np.full((h, w), cfg.patch_value, dtype=np.float32)
    if cfg.pattern == "checkerboard":
        odd = (np.add.outer(np.arange(h), np.arange(w)) % 2).astype(bool)
        patch[odd] = 1.0 - cfg.patch_value
    return patch


def trigger_mask(cfg: BadNets, image_hw: tuple[int, int]) -> np.ndarray:
    """Bool (H, W) mask of the pixels the configured trigger covers."""
    row, col, h, w = trigger_geometry(cfg, image_hw)
    mask = np.zeros(image_hw, dtype=bool)
    mask[row:row + h, col:col + w] = True
    return mask


def apply_trigger(X: np.ndarray, cfg: BadNets) -> np.ndarray:
    """Copy of images ``X`` (n, [C,] H, W) with the configured patch: ``(1 - alpha) x + alpha patch`` inside it
    (``alpha == 1``: the patch's values exactly), the rest unchanged (input dtype)."""
    row, col, h, w = trigger_geometry(cfg, X.shape[-2:])
    patch = trigger_patch(cfg, h, w)
    out = X.copy()
    region = out[..., row:row + h, col:col + w]
    if cfg.alpha == 1.0:
        region[...] = patch
    else:
        region[...] = ((1 - cfg.alpha) * region + cfg.alpha * patch).astype(X.dtype)
    return out


def blend_pattern(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """The blended trigger: a fixed seeded uniform [0, 1) pattern of one image's ``shape``."""
    return np.random.default_rng(seed).uniform(0, 1, shape).astype(np.float32)


def blend_trigger(X: np.ndarray, pattern: np.ndarray, alpha: float) -> np.ndarray:
    """Copy of images ``X`` blended with ``pattern``: ``(1 - alpha) X + alpha pattern`` (input dtype)."""
    return ((1 - alpha) * X + alpha * pattern).astype(X.dtype)


def _backdoor(bundle: DataBundle, target: int, rate: float, seed: int, apply: Callable[[np.ndarray], np.ndarray],
              kind: str) -> DataBundle:
    """Poison ``round(rate * n)`` training images from non-target classes with ``apply`` and relabel them
    ``target``; the test set's non-target rows get a triggered copy (TRUE labels) to measure attack success."""
    train, test = bundle.train, bundle.test
    if train.X.ndim < 3:
        raise InputError(f"scenario.kind={kind} needs image data; {bundle.name} has feature shape {train.feature_shape}")
    _check_class(target, train.n_classes, "target")
    # rate is the share of the WHOLE training set that is poisoned, drawn from the non-target classes
    rows = _choose(_rng(seed), np.flatnonzero(train.y != target), rate, "non-target training rows",
                   k=int(round(rate * len(train))))
    X = train.X.copy()
    X[rows] = apply(train.X[rows])
    flipped = _flip(bundle, rows, np.full(len(rows), target), kind)
    victims = test.subset(test.y != target)
    return replace(flipped, train=replace(flipped.train, X=X), triggered_test=replace(victims, X=apply(victims.X)),
                   attack_target=target, info={**flipped.info, "attack_target": target})


def badnets(bundle: DataBundle, cfg: BadNets, seed: int) -> DataBundle:
    if bundle.train.X.ndim >= 3:
        trigger_geometry(cfg, bundle.train.X.shape[-2:])          # refuse a patch that does not fit, first
    return _backdoor(bundle, cfg.target, cfg.rate, seed, lambda X: apply_trigger(X, cfg), cfg.kind)


def blended(bundle: DataBundle, cfg: Blended, seed: int) -> DataBundle:
    pattern = blend_pattern(bundle.train.X.shape[1:], cfg.pattern_seed) if bundle.train.X.ndim >= 3 else None
    return _backdoor(bundle, cfg.target, cfg.rate, seed, lambda X: blend_trigger(X, pattern, cfg.alpha), cfg.kind)


SCENARIOS: dict[type, Callable] = {
    NoScenario: lambda bundle, cfg, seed: bundle,
    UniformFlip: uniform_flip,
    ClassFlip: class_flip,
    GroupFlip: group_flip,
    BadNets: badnets,
    Blended: blended,
}


def apply_scenario(bundle: DataBundle, cfg, seed: int) -> DataBundle:
    """Apply the configured scenario to the training split (and build the triggered test set for backdoors)."""
    return SCENARIOS[type(cfg)](bundle, cfg, seed)
