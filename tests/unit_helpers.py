"""Small shared builders for the unit tests: configs, synthetic tables and tiny in-memory datasets."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tda_clean.config import RunConfig, parse_config
from tda_clean.data.dataset import DataBundle, IndexedDataset


def config(data: dict, **sections) -> RunConfig:
    """A validated RunConfig on ``data`` with tracking off; ``sections`` replace top-level entries."""
    return parse_config({"seed": 0, "data": data, "tracking": {"enabled": False}, **sections})


def digits_config(**sections) -> RunConfig:
    return config({"kind": "digits"}, **sections)


# configs/digits_backdoor.yaml's CNN and training settings (on CPU)
DIGITS_CNN = {
    "model": {"kind": "cnn", "channels": [16, 32], "hidden": 64},
    "train": {"optimizer": "adam", "lr": 0.003, "l2": 0.0001, "epochs": 60, "batch_size": 64, "patience": 8,
              "device": "cpu"},
}


def digits_cnn_config(scenario: dict | None = None, seed: int = 0) -> RunConfig:
    """The digits data with ``DIGITS_CNN``'s model and training, under ``scenario`` (clean data when None)."""
    return digits_config(seed=seed, **DIGITS_CNN, **({"scenario": scenario} if scenario is not None else {}))


def trained_digits_cnn(cfg: RunConfig):
    """Load ``cfg``'s bundle and fit its model on the training split (validation split for early stopping).

    Returns ``(bundle, model, context)``: the DataBundle, the fitted torch model and the FitContext detectors
    take (seed, model, train config, validation X / y, number of classes).
    """
    from tda_clean.data import load_bundle
    from tda_clean.models.factory import build_model
    from tda_clean.models.trainer import fit
    from tda_clean.selection import FitContext

    bundle = load_bundle(cfg)
    model = build_model(cfg.model, bundle.train.feature_shape, bundle.train.n_classes, cfg.seed)
    fit(model, bundle.train.X, bundle.train.y, cfg.train, cfg.seed, X_val=bundle.val.X, y_val=bundle.val.y,
        progress=False)
    context = FitContext(seed=cfg.seed, model=model, train_config=cfg.train, X_val=bundle.val.X, y_val=bundle.val.y,
                         n_classes=bundle.train.n_classes)
    return bundle, model, context


def csv_config(path: Path, label: str = "label", groups=("sex",), **data) -> RunConfig:
    return config({"kind": "csv", "path": str(path), "label": label, "groups": list(groups), **data})


def small_table(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """Numeric (different scales), categorical and group columns, a binary label and an integer id column."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    sex = rng.choice(["F", "M"], size=n)
    label = ((2 * x[:, 0] - x[:, 1] + 0.5 * (sex == "M") + rng.normal(scale=0.5, size=n)) > 0).astype(int)
    return pd.DataFrame({
        "uid": 10_000 + 7 * np.arange(n),          # stable ids, not 0..n-1
        "age": 40 + 12 * x[:, 0],                  # mean 40, std 12
        "income": 5000 + 900 * x[:, 1],            # mean 5000, std 900
        "city": rng.choice(["a", "b", "c"], size=n),
        "sex": sex,
        "label": label,
    })


def toy_dataset(n: int = 12, n_classes: int = 3, seed: int = 0, weight: bool = False) -> IndexedDataset:
    """A tiny tabular dataset with non-contiguous row ids, 2 features and one group column."""
    rng = np.random.default_rng(seed)
    return IndexedDataset(
        row_id=np.arange(100, 100 + 3 * n, 3, dtype=np.int64),
        X=rng.normal(size=(n, 2)).astype(np.float32),
        y=np.arange(n, dtype=np.int64) % n_classes,
        groups=pd.DataFrame({"g": np.where(np.arange(n) % 2, "b", "a")}),
        classes=tuple(str(c) for c in range(n_classes)),
        feature_names=("f0", "f1"),
        weight=rng.uniform(0.5, 2.0, size=n) if weight else None,
    )


def blobs(n: int = 200, seed: int = 0, n_flip: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Easy separable 2-D two-class problem: ``(X, y_noisy, y_clean, flipped_mask)`` with ``n_flip`` flips."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    X = rng.normal(scale=0.6, size=(n, 2)) + np.where(y[:, None] == 1, 2.0, -2.0)
    flipped = np.zeros(n, dtype=bool)
    flipped[rng.choice(n, size=n_flip, replace=False)] = True
    y_noisy = np.where(flipped, 1 - y, y)
    return X.astype(np.float32), y_noisy.astype(np.int64), y.astype(np.int64), flipped


def arrays_snapshot(bundle: DataBundle) -> dict[str, np.ndarray]:
    """Deep copies of every array a scenario might touch, to compare against afterwards."""
    out = {}
    for split in ("train", "val", "test"):
        ds = getattr(bundle, split)
        out[f"{split}.X"] = ds.X.copy()
        out[f"{split}.y"] = ds.y.copy()
        out[f"{split}.row_id"] = ds.row_id.copy()
        out[f"{split}.groups"] = ds.groups.copy()
    return out


def assert_snapshot_equal(bundle: DataBundle, snap: dict) -> None:
    for key, value in snap.items():
        split, what = key.split(".")
        current = getattr(getattr(bundle, split), what)
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(current, value)
        else:
            np.testing.assert_array_equal(current, value, err_msg=key)


def torch_single_thread():
    """Generator for a fixture: run with one torch intra-op thread, then restore the previous setting.

    Tiny models are latency-bound; on a busy 2-core machine two OpenMP threads make a 200-row L-BFGS fit
    ~50x slower than one thread.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
