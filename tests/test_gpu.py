"""CUDA path: `device: auto` picks CUDA whenever torch sees one (mocked ``torch.cuda.is_available``, runs
everywhere), and on a real GPU (skipped without one; CI has none) trains there and computes influence that
matches the CPU result."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from torch import nn

from tda_clean.config import parse_config
from tda_clean.data import load_bundle
from tda_clean.errors import InputError
from tda_clean.influence import GradientSettings, InfluenceEngine, InfluenceSpec, TrainingObjective
from tda_clean.influence.params import prepare_model
from tda_clean.models.factory import build_model
from tda_clean.models.trainer import fit, resolve_device

@pytest.mark.parametrize("available", [True, False])
def test_auto_device_is_cuda_exactly_when_torch_sees_one(monkeypatch, available):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    assert resolve_device("auto") == torch.device("cuda" if available else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_cuda_requested_without_a_device_is_one_line_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="train.device: 'cuda' requested but no CUDA device"):
        resolve_device("cuda")


def test_defaults_train_and_detect_on_auto_device():
    """A config that names no device trains and computes influence on ``auto`` (CUDA when present)."""
    cfg = parse_config({"data": {"kind": "digits"}, "detector": {"kind": "harmful"}})
    assert cfg.train.device == "auto"
    assert cfg.detector.influence.gradients.device == "auto"


@pytest.mark.parametrize("available", [True, False])
def test_influence_model_moves_to_cuda_when_available(monkeypatch, available):
    """``prepare_model`` (every influence engine's copy of the model) asks for CUDA under ``device: auto`` when torch
    sees a GPU (``Module.to`` recorded, not executed: this runs on CPU-only torch too)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    moved = []
    monkeypatch.setattr(nn.Module, "to", lambda self, *a, **k: moved.append(k.get("device")) or self)
    model = nn.Linear(3, 2)
    prepare_model(model, GradientSettings(device="auto"))
    assert moved == [torch.device("cuda" if available else "cpu")]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
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
