"""Micro-benchmarks behind the engine's fast paths (issue 3): HVP modes, Cholesky vs eigendecomposition, per-sample
gradients and the finite check, EK-FAC's eigenvalue correction. Best of 3, 2 threads, benchmark weights of lds.py.

    python benchmarks/engine_micro.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import load_data  # noqa: E402
from benchmarks.ours_matching import factory_model  # noqa: E402


def best_ms(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * min(times)


def main() -> None:
    from tda_clean.influence import ParamSpace, per_sample_grads
    from tda_clean.influence.curvature import loss_hvps
    from tda_clean.influence.gradients import check_finite_rows
    from tda_clean.influence.kfac import _sum_sq_in_basis

    torch.set_num_threads(2)
    Xtr, ytr, _, _ = load_data()
    print("HVP of 100 vectors (ms): model, subset, rows -> reverse / vmap")
    for name, subset in (("mlp", "all"), ("mlp", "head"), ("cnn", "all"), ("cnn", "head")):
        model, _ = factory_model(name)
        space = ParamSpace(model, subset)
        theta = space.flat()
        for rows in (128, 512, 1347):
            X, y = torch.as_tensor(Xtr[:rows]).float(), torch.as_tensor(ytr[:rows]).long()
            f = lambda th: F.cross_entropy(space.forward(th, X), y, reduction="sum")  # noqa: E731
            V = torch.randn(100, space.p, generator=torch.Generator().manual_seed(0))
            r, v = (best_ms(lambda m=m: loss_hvps(f, theta, V, m)) for m in ("reverse", "vmap"))
            print(f"  {name} {subset} p={space.p} rows={rows}: {r:.1f} / {v:.1f}", flush=True)
    H = torch.randn(4810, 4810, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    A = H @ H.T / 4810 + torch.eye(4810, dtype=torch.float64)
    print(f"p = 4,810 float64: Cholesky {best_ms(lambda: torch.linalg.cholesky(A), 1):.0f} ms, "
          f"eigh {best_ms(lambda: torch.linalg.eigh(A), 1):.0f} ms", flush=True)
    print("per-sample gradients (vmap), 1,347 rows, all parameters (ms); finite check on G")
    for name in ("mlp", "cnn"):
        model, _ = factory_model(name)
        space = ParamSpace(model, "all")
        vm = best_ms(lambda: per_sample_grads(space, Xtr, ytr, check_finite=False))
        G = per_sample_grads(space, Xtr, ytr, check_finite=False)
        full = best_ms(lambda: torch.isfinite(G.reshape(len(G), -1)).all(dim=1))
        fast = best_ms(lambda: check_finite_rows(G))
        print(f"  {name}: {vm:.1f}; finite check row-sum {fast:.1f} vs element-wise {full:.1f}", flush=True)
    print("EK-FAC eigenvalue correction of one Linear layer, 500 rows (ms): rank-one / projected (out x inp) matrices")
    gen = torch.Generator().manual_seed(0)
    for out, inp in ((64, 513), (64, 6273)):           # the digits CNN's and the Fashion-MNIST CNN's dense layer
        g, a = torch.randn(500, 1, out, generator=gen), torch.randn(500, 1, inp, generator=gen)
        QS = torch.linalg.qr(torch.randn(out, out, generator=gen))[0]
        QA = torch.linalg.qr(torch.randn(inp, inp, generator=gen))[0]
        fast = best_ms(lambda: _sum_sq_in_basis(g, a, QS, QA))
        slow = best_ms(lambda: sum(((QS.T @ torch.einsum("nto,nti->noi", g[b:b + 50], a[b:b + 50]) @ QA) ** 2).sum(0)
                                   for b in range(0, 500, 50)), 1)
        print(f"  {out} x {inp}: {fast:.0f} / {slow:.0f}", flush=True)
    print("EK-FAC scores, Fashion-MNIST-size CNN (untrained, 28x28, dense 6,273 -> 64), 132 margin queries x 1,000 "
          "rows (s): eigenbasis / solve-then-dot; max relative difference")
    import numpy as np

    from tda_clean.config import CNNConfig
    from tda_clean.influence import GradientSettings, InfluenceEngine, InfluenceSpec, Margin, TrainingObjective
    from tda_clean.models.factory import build_model

    model = build_model(CNNConfig(channels=(16, 32), hidden=64), (1, 28, 28), 10, seed=0).eval()
    rng = np.random.default_rng(0)
    X, y = rng.random((1000, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 1000)
    query = Margin(rng.random((132, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 132))
    engine = InfluenceEngine(model, (X, y),
                             InfluenceSpec(solver="ekfac", gradients=GradientSettings(params="all")),
                             TrainingObjective(1e-4))
    engine.solver  # fit outside the timings
    start = time.perf_counter()
    fast = engine.scores(query, Margin.row_value)                          # K-FAC solver: the eigenbasis path
    mid = time.perf_counter()
    slow = engine.scores_for(engine.inverse_hvp(query), train_loss=Margin.row_value)
    end = time.perf_counter()
    diff = float(np.abs(fast - slow).max() / np.abs(slow).max())
    print(f"  {mid - start:.1f} / {end - mid:.1f}; {diff:.1e}", flush=True)

if __name__ == "__main__":
    main()
