"""CUDA path (skipped without a GPU; CI has none): `device: auto` trains on CUDA, and influence computed there
matches the CPU result."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tda_clean.config import parse_config
from tda_clean.data import load_bundle
from tda_clean.influence import GradientSettings, InfluenceEngine, InfluenceSpec, TrainingObjective
from tda_clean.models.factory import build_model
from tda_clean.models.trainer import fit

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


def test_auto_device_trains_on_cuda_and_influence_matches_cpu():
    cfg = parse_config({"data": {"kind": "digits"}, "model": {"kind": "mlp", "hidden": [32]},
                        "train": {"optimizer": "adam", "epochs": 5, "device": "auto", "dtype": "float64"}})
    bundle = load_bundle(cfg)
    model = build_model(cfg.model, bundle.train.feature_shape, bundle.train.n_classes, seed=0)
    fit(model, bundle.train.X, bundle.train.y, cfg.train, seed=0)
    assert next(model.parameters()).is_cuda
    X, y = bundle.train.X[:300], bundle.train.y[:300]
    scores = {}
    for device in ("cuda", "cpu"):
        engine = InfluenceEngine(model, (X, y),
                                 InfluenceSpec(solver={"kind": "exact", "damping": 0.01},
                                               gradients=GradientSettings(params="head", dtype="float64", device=device)),
                                 TrainingObjective(cfg.train.l2))
        scores[device] = engine.self_influence()
    np.testing.assert_allclose(scores["cuda"], scores["cpu"], rtol=1e-8, atol=1e-12)
