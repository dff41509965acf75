"""`action: unlearn` through the pipeline: the after-model comes from the unlearning method (not a retrain), the
data side is audited as removals, and on a convex model the Newton removal lands next to the retrained model."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch

from tda_clean.config import parse_config
from tda_clean.pipeline import run_pipeline

BASE = {
    "data": {"kind": "digits"}, "scenario": {"kind": "uniform_flip", "rate": 0.05},
    "model": {"kind": "logistic"}, "train": {"optimizer": "lbfgs", "l2": 1e-2, "epochs": 50, "dtype": "float64"},
    "detector": {"kind": "cleanlab", "folds": 3}, "tracking": {"enabled": False},
}


def _weights(run) -> torch.Tensor:
    state = torch.load(run / "model_after.pt", weights_only=True)
    return torch.cat([v.flatten() for v in state.values()])


def test_newton_unlearning_matches_retraining_on_a_convex_model(tmp_path):
    retrain = run_pipeline(parse_config({**BASE, "action": {"kind": "unlearn", "method": "retrain"}}), tmp_path / "retrain")
    newton = run_pipeline(parse_config({**BASE, "action": {"kind": "unlearn", "method": "newton", "damping": 0.0}}),
                          tmp_path / "newton")
    assert newton["actions"]["unlearned"] == newton["selection"]["n_flagged"] > 0
    assert newton["actions"]["removed"] == 0
    stage = json.loads((tmp_path / "newton" / "stages" / "train_after.json").read_text())["result"]
    assert stage["unlearn"]["method"] == "newton"
    w_newton, w_retrain = _weights(tmp_path / "newton"), _weights(tmp_path / "retrain")
    distance = float((w_newton - w_retrain).norm() / w_retrain.norm())
    assert distance < 1e-2, distance  # measured ~1e-4 with the default 2 steps
    assert abs(newton["after"]["accuracy"] - retrain["after"]["accuracy"]) <= 0.005
    audit = pd.read_csv(tmp_path / "newton" / "audit.csv")
    assert (audit["action"] == "remove").all() and audit["reason"].str.startswith("unlearn (newton)").all()
    assert len(audit) == newton["actions"]["unlearned"]
    assert not np.array_equal(w_newton.numpy(), _weights(tmp_path / "retrain").numpy())  # a different route
