"""Influence on any nn.Module: BatchNorm, LayerNorm and Embedding layers (vmap vs loop, solvers vs exact on tiny
float64 models), ``head`` = the last Linear, module-name patterns, K-FAC freezing the layers it has no curvature for."""
from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
from torch import nn

from tda_clean.config.influence import CGSettings, ExactSettings, GradientSettings, InfluenceSpec, KFACSettings
from tda_clean.errors import InputError
from tda_clean.influence import InfluenceEngine, ParamSpace, PerSampleLoss, per_sample_grads, per_sample_grads_loop
from tda_clean.models.trainer import fit_to_optimum
from tda_clean.objective import TrainingObjective

L2 = 0.1


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn(self.conv(x)))


class TinyResNet(nn.Module):
    def __init__(self, k=3):
        super().__init__()
        self.stem = nn.Conv2d(1, 2, 3, padding=1)
        self.block1, self.block2 = Block(2), Block(2)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(8, k)

    def forward(self, x):
        return self.fc(self.pool(self.block2(self.block1(torch.relu(self.stem(x))))).flatten(1))


class NormMLP(nn.Module):
    def __init__(self, d=4, k=3):
        super().__init__()
        self.lin = nn.Linear(d, 5)
        self.norm = nn.LayerNorm(5)
        self.out = nn.Linear(5, k)

    def forward(self, x):
        return self.out(torch.tanh(self.norm(self.lin(x))))


class Bag(nn.Module):
    def __init__(self, vocab=7, k=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, 3)
        self.out = nn.Linear(3, k)

    def forward(self, tokens):  # (n, T) long token ids
        return self.out(self.emb(tokens).mean(1))


@functools.lru_cache(maxsize=None)
def _trained(kind: str):
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    y = rng.integers(0, 3, 24)
    if kind == "batchnorm":
        model, X = TinyResNet(), rng.normal(size=(24, 1, 4, 4)) + y[:, None, None, None] * 0.3
        for m in model.modules():  # non-trivial running statistics: eval-mode BN is a real affine map
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
    elif kind == "layernorm":
        model, X = NormMLP(), rng.normal(size=(24, 4)) + y[:, None]
    else:
        model, X = Bag(), torch.as_tensor((rng.integers(0, 7, (24, 5)) + y[:, None]) % 7)  # a tensor of ids
    return fit_to_optimum(model.double().eval(), X, y, L2, max_iter=25), X, y


def _problem(kind: str):
    model, X, y = _trained(kind)
    return copy.deepcopy(model), X, y


@pytest.mark.parametrize("kind", ["batchnorm", "layernorm", "embedding"])
def test_vmap_matches_loop_and_solvers_match_exact(kind):
    model, X, y = _problem(kind)
    space = ParamSpace(model, "all")
    torch.testing.assert_close(per_sample_grads(space, X, y), per_sample_grads_loop(space, X, y), rtol=1e-7, atol=1e-12)
    objective = TrainingObjective(l2=L2)
    solve = {}
    for settings in (ExactSettings(damping=1.0), CGSettings(damping=1.0, tol=1e-12, max_iter=500)):
        engine = InfluenceEngine(model, (X, y), InfluenceSpec(solver=settings), objective)
        solve[settings.kind] = engine.inverse_hvp(PerSampleLoss(X[:3], y[:3]))
        assert engine._info()["influence_params"]["frozen"] == []
    torch.testing.assert_close(solve["cg"], solve["exact"], rtol=1e-6, atol=1e-8)


def test_head_is_the_last_linear_and_patterns_select_modules():
    model = TinyResNet()
    assert ParamSpace(model, "head").names == ("fc.weight", "fc.bias")
    assert ParamSpace(model, "head").describe() == {"used": ["fc"], "frozen": ["stem", "block1.conv", "block1.bn",
                                                                                "block2.conv", "block2.bn"]}
    assert ParamSpace(model, "block2.*").names == ("block2.conv.weight", "block2.bn.weight", "block2.bn.bias")
    assert ParamSpace(model, ("stem", "block*.conv")).names == ("stem.weight", "stem.bias", "block1.conv.weight",
                                                               "block2.conv.weight")
    with pytest.raises(InputError, match=r"module 'layer4\.\*' not found in TinyResNet .*block1\.bn"):
        ParamSpace(model, "layer4.*")
    with pytest.raises(InputError, match="params='head': Sequential has no nn.Linear layer"):
        ParamSpace(nn.Sequential(nn.Conv2d(1, 1, 1)), "head")


def test_ekfac_on_convs_in_blocks_freezes_batchnorm_and_lists_it():
    model, X, y = _problem("batchnorm")
    spec = InfluenceSpec(solver=KFACSettings(kind="ekfac", damping=1e-3), gradients=GradientSettings(params="all"))
    engine = InfluenceEngine(model, (X, y), spec, TrainingObjective(l2=L2))
    scores = engine.scores(PerSampleLoss(X[:2], y[:2]))
    assert scores.shape == (2, len(y)) and np.isfinite(scores).all()
    assert engine._info()["influence_params"] == {"used": ["stem", "block1.conv", "block2.conv", "fc"],
                                                  "frozen": ["block1.bn", "block2.bn"]}
    with pytest.raises(InputError, match=r"module 'block1\.bn' \(BatchNorm2d\) has no K-FAC curvature"):
        ParamSpace(model, "block1.bn", layers_only=True)


def test_attribution_uses_an_eval_copy_of_a_training_mode_model():
    model, X, y = _problem("batchnorm")
    model.train()
    engine = InfluenceEngine(model, (X, y), InfluenceSpec(solver=ExactSettings(damping=1e-3),
                                                          gradients=GradientSettings(params="head")),
                             TrainingObjective(l2=L2))
    assert not engine.model.training and model.training
    assert np.isfinite(engine.scores(PerSampleLoss(X[:2], y[:2]))).all()
