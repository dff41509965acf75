"""The round-5 probe script (benchmarks/unlearn_counterexample_probes.py) is the method's own loop: with no probe
switched on it returns the same after-model as ``unlearn()``, and a probe changes it."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tda_clean.actions.unlearn import unlearn
from tda_clean.config import TrainConfig, unlearn_spec

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "unlearn_counterexample_probes.py"


def _probes():
    spec = importlib.util.spec_from_file_location("unlearn_counterexample_probes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _backdoor(seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.random((240, 1, 4, 4)).astype(np.float32) * 0.5
    y = rng.integers(0, 3, 240)
    mask = np.zeros(240, bool)
    mask[:12] = True
    X[mask, 0, 3, 3] = 1.0                           # the patch
    y[mask] = 0                                       # the target
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    return X, y, mask, model


def _weights(m, *_):
    return {"w": [p.detach().clone() for p in m.parameters()]}


def test_probe_loop_without_probes_is_unlearn():
    X, y, mask, model = _backdoor()
    cfg = unlearn_spec(method="counterexample", counter_steps=20, head_bias="none")
    train = TrainConfig(optimizer="adam", lr=0.01, epochs=5, batch_size=16, device="cpu")
    ours, _ = unlearn(cfg, model, X, y, mask, train, 3)
    probes = _probes()
    for p, q in zip(ours.parameters(), model.parameters()):
        assert not torch.equal(p, q)                  # the method moved the weights
    after = probes.run(cfg, model, X, y, mask, train, 3, {}, _weights, [1.0])[-1]["w"]
    for p, q in zip(ours.parameters(), after):
        assert torch.equal(p.detach(), q)
    # the default head-bias recalibration (held rows) is the probe's ``held_all`` on as many rows
    default = unlearn_spec(method="counterexample", counter_steps=20)
    recal, info = unlearn(default, model, X, y, mask, train, 3)
    held = probes.run(default, model, X, y, mask, train, 3, {"bias": ["held_all"], "held_n": default.head_bias_rows},
                      _weights, [1.0])
    assert held[-1]["phase"] == "bias_held_all" and held[-1]["n_rows"] == info["head_bias_rows"]
    for p, q in zip(recal.parameters(), held[-1]["w"]):
        torch.testing.assert_close(p.detach(), q)
    assert not torch.equal(list(recal.parameters())[-1], after[-1])   # the offsets moved the head's bias
    with_sp = probes.run(cfg, model, X, y, mask, train, 3, {"sp": 10.0}, _weights, [1.0])[-1]["w"]
    assert any(not torch.equal(p, q) for p, q in zip(after, with_sp))
