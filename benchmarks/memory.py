"""Memory: influence of 100,000 training rows x 1,000 queries on an MLP with random projection (synthetic data).

    python benchmarks/memory.py [--n-train 100000] [--n-query 1000] [--k 512] [--memory-mb 256]

Synthetic 10-class data (100 Gaussian features, labels from a random linear teacher with 10% noise), MLP
100 -> 128 -> 10 (p = 14,218) trained 2 epochs with the project's trainer, then
``projected_influence`` (TRAK-style k-dim Rademacher projection, projected Fisher curvature) on the
per-sample loss of each query, with the projected training gradients in a memory-mapped store on disk.
Reports wall time and the process's peak RSS (``resource.getrusage``, whole process: data + model + training +
influence), plus the RSS before the influence call; the (1,000 x 100,000) float64 score matrix alone is 800 MB.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import RESULTS, machine, peak_rss_mb, write_json  # noqa: E402


def current_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=100_000)
    ap.add_argument("--n-query", type=int, default=1_000)
    ap.add_argument("--k", type=int, default=512)
    ap.add_argument("--memory-mb", type=float, default=256.0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from tda_clean.config import MLPConfig, TrainConfig
    from tda_clean.influence.estimators import projected_influence
    from tda_clean.influence.objectives import PerSampleLoss
    from tda_clean.config.influence import GradientSettings
    from tda_clean.models.factory import build_model
    from tda_clean.models.trainer import fit

    rng = np.random.default_rng(0)
    d, c = 100, 10
    teacher = rng.normal(size=(d, c))
    X = rng.normal(size=(args.n_train + args.n_query, d)).astype(np.float32)
    y = (X @ teacher).argmax(1)
    flip = rng.random(len(y)) < 0.1
    y[flip] = rng.integers(0, c, flip.sum())
    Xtr, ytr, Xq, yq = X[: args.n_train], y[: args.n_train], X[args.n_train :], y[args.n_train :]
    tc = TrainConfig(optimizer="adam", l2=1e-4, epochs=2, lr=1e-3, batch_size=512, device="cpu")
    model = build_model(MLPConfig(hidden=(128,)), (d,), c, seed=0)
    t = time.perf_counter()
    fit(model, Xtr, ytr, tc, seed=0, progress=False)
    t_train = time.perf_counter() - t
    p = sum(q.numel() for q in model.parameters())
    rss_before = current_rss_mb()
    peak_before = peak_rss_mb()
    store = Path(tempfile.mkdtemp(prefix="tda-memory-"))
    try:
        t = time.perf_counter()
        res = projected_influence(model, (Xtr, ytr), PerSampleLoss(Xq, yq), l2=tc.l2, k=args.k, seed=0,
                                  gradients=GradientSettings(params="all", memory_mb=args.memory_mb),
                                  store_dir=store / "grads", method="dense")  # the recorded figure's projection
        t_infl = time.perf_counter() - t
        store_mb = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 2**20
    finally:
        shutil.rmtree(store, ignore_errors=True)
    out = {"n_train": args.n_train, "n_query": args.n_query, "p": p, "k": args.k, "memory_mb_setting": args.memory_mb,
           "scores_shape": list(res.scores.shape), "scores_mb": res.scores.nbytes / 2**20,
           "train_s": t_train, "influence_s": t_infl, "rss_before_influence_mb": rss_before,
           "peak_rss_before_influence_mb": peak_before, "peak_rss_mb": peak_rss_mb(), "store_mb": store_mb,
           "finite": bool(np.isfinite(res.scores).all()), "machine": machine(),
           "dense_gradients_would_be_mb": args.n_train * p * 4 / 2**20}
    print("\n".join(f"{k}: {v}" for k, v in out.items()))
    write_json(RESULTS / "memory.json", out)


if __name__ == "__main__":
    main()
