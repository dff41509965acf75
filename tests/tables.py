"""Small synthetic tables written as CSV, for end-to-end and bad-input tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def make_table(n: int = 1200, seed: int = 0) -> pd.DataFrame:
    """Binary label from a noisy linear rule; numeric and categorical features; groups ``sex`` and ``region``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    sex = rng.choice(["F", "M"], size=n, p=[0.4, 0.6])
    region = rng.choice(["north", "south"], size=n)
    logit = 2.0 * x[:, 0] - 1.5 * x[:, 1] + 0.8 * (sex == "M") + 0.5 * (region == "north") - 0.4
    label = (logit + rng.logistic(scale=0.5, size=n) > 0).astype(int)
    return pd.DataFrame({
        "age": 40 + 10 * x[:, 0], "income": 1000 * np.exp(x[:, 1] / 2), "score": x[:, 2], "noise": x[:, 3],
        "city": rng.choice(["a", "b", "c"], size=n), "sex": sex, "region": region, "label": label,
    })


def write_table(path: Path, frame: pd.DataFrame | None = None) -> Path:
    (frame if frame is not None else make_table()).to_csv(path, index=False)
    return path


def table_config(csv: Path, mlflow_uri: str | None = None, **overrides) -> dict:
    """Plain config dict for a run on ``csv``: group-targeted flips, cleanlab, relabel, logistic regression."""
    config = {
        "name": "table-test",
        "seed": 0,
        "data": {"kind": "csv", "path": str(csv), "label": "label", "groups": ["sex", "region"]},
        "scenario": {"kind": "group_flip", "column": "sex", "value": "M", "source": 1, "target": 0, "rate": 0.3},
        "model": {"kind": "logistic"},
        "train": {"optimizer": "lbfgs", "l2": 1e-3, "epochs": 30},
        "detector": {"kind": "cleanlab", "folds": 3},
        "action": {"kind": "relabel"},
        "tracking": {"enabled": mlflow_uri is not None, "tracking_uri": mlflow_uri, "experiment": "test"},
    }
    for key, value in overrides.items():
        config[key] = value
    return config
