"""EK-FAC scores with low-rank preconditioned query gradients (``tda_clean.influence.lowrank_query``) vs full.

Fashion-MNIST (the library's offline source; data, label noise and quality figures as
``benchmarks/projection_speed.py``): an MLP (784 -> ``--hidden`` -> ``--hidden`` -> 10, flattened images) trained
with Adam (seeded), an EK-FAC engine fitted once (its fit time reported apart), then, interleaved for
``--repeats`` rounds: the engine's scores (the Kronecker-eigenbasis path, (m, n) float64) and
``low_rank_scores`` at each ``--ranks``. Quality against the full scores: Pearson of the score matrix and of the
per-row sums, top-``--top`` overlap per query, detection precision of the flipped labels.

    python benchmarks/lowrank_query_speed.py --n 10000 --queries 1000 --ranks 8,32
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from projection_speed import data, emit, quality, train  # noqa: E402  (sys.path set there)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--ranks", default="8,32")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--top", type=int, default=50)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    from tda_clean.config.influence import InfluenceSpec, KFACSettings
    from tda_clean.influence import InfluenceEngine, PerSampleLoss, TrainingObjective
    from tda_clean.influence.lowrank_query import low_rank_scores
    from tda_clean.models.factory import MLP

    l2 = 1e-4
    X, y, Xq, yq, flipped = data(args.n, args.queries, 0.1, 0)
    X, Xq = X.reshape(len(X), -1), Xq.reshape(len(Xq), -1)
    torch.manual_seed(0)
    model = train(MLP(784, 10, (args.hidden, args.hidden)), X, y, args.epochs, l2, 0)
    p = sum(t.numel() for t in model.parameters())
    engine = InfluenceEngine(model, (X, y), InfluenceSpec(solver=KFACSettings(kind="ekfac", damping="auto")),
                             TrainingObjective(l2))
    t = time.perf_counter()
    engine.solver
    fit_s = time.perf_counter() - t
    print(f"MLP p={p}; EK-FAC fit {fit_s:.1f}s", flush=True)
    obj = PerSampleLoss(Xq, yq)
    ranks = [int(r) for r in args.ranks.split(",")]
    variants = {"full": lambda: engine.scores(obj), **{f"rank {r}": (lambda r=r: low_rank_scores(engine, obj, r))
                                                       for r in ranks}}
    times = {k: [] for k in variants}
    scores = {}
    for rnd in range(args.repeats):
        for name, fn in variants.items():
            t = time.perf_counter()
            scores[name] = fn()
            times[name].append(time.perf_counter() - t)
            print(f"round {rnd} {name}: {times[name][-1]:.2f}s (load {os.getloadavg()[0]:.2f})", flush=True)
    rows = {name: {"seconds": times[name], "best_s": min(times[name]),
                   **quality(scores[name], scores["full"], flipped, args.top)} for name in variants}
    out = {"model": f"MLP 784-{args.hidden}-{args.hidden}-10", "p": p, "n": args.n, "queries": args.queries,
           "fit_s": fit_s, "repeats": args.repeats, "threads": torch.get_num_threads(),
           "loadavg_end": os.getloadavg(), "variants": rows}
    return emit(out, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
