"""Seed-to-seed agreement of the factored projection on the reference workload's ResNet (sketch noise level).

Same data and model as ``projection_speed.py --model resnet --n 1000 --queries 200 --epochs 2``; for k = 512 and
2048, the (200, 1000) projected-influence scores with projection seeds 0 and 1: Pearson over the score matrix and
the mean overlap of each query's top 50 rows.

    python benchmarks/projection_seeds.py
"""
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from projection_speed import data, model_for, train  # noqa: E402

torch.set_num_threads(1)
from tda_clean.influence import PerSampleLoss, projected_influence  # noqa: E402

X, y, Xq, yq, _ = data(1000, 200, 0.1, 0)
model = train(model_for("resnet", 0), X, y, 2, 1e-4, 0)
obj = PerSampleLoss(Xq, yq)
for k in (512, 2048):
    S = [projected_influence(model, (X, y), obj, l2=1e-4, damping=1e-3, k=k, seed=s).scores for s in (0, 1)]
    tk = [np.argsort(-a, axis=1, kind="stable")[:, :50] for a in S]
    overlap = np.mean([len(np.intersect1d(a, b)) / 50 for a, b in zip(*tk)])
    print(f"factored k={k} seed 0 vs 1: Pearson {np.corrcoef(S[0].ravel(), S[1].ravel())[0, 1]:.3f}, "
          f"top-50 overlap {overlap:.3f}, load {os.getloadavg()[0]:.2f}")
