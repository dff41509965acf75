"""Removal influence vs retraining on small convex problems: sign agreement and Pearson's r of the predicted and
the measured change of the mean test loss, textbook form vs the removal form with the regulariser's share.

    python benchmarks/removal_loo.py                                  # iris, wine, breast cancer (10 / 30 features)
    python benchmarks/removal_loo.py --data iris --l2 1e-3 1e-2 --rows 100 --groups 30

Problems: ``tests.influence.helpers.ConvexProblem`` (L2 logistic regression, float64, Newton to a step below
1e-10, scikit-learn data shuffled with seed 0, split 70/30, standardised). Exact solver, damping 0. Single rows:
``--rows`` seeded rows (seed 1); "textbook" = ``(1/n) a^T g_i``, "first" = the engine's scores
``a^T (g_i + l2 theta*) / (n - 1)``, "second" = Basu's second order with the objective's curvature on one-row
groups. Groups: ``--groups`` seeded random groups (seed 2) of 5-10% of the rows; "textbook" = second order
without the regulariser's share (``regularized_rows=False``). "ratio" = largest measured |change| / largest
predicted |change| (> 1: large effects underestimated).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tda_clean.influence import InfluenceEngine, TrainingObjective  # noqa: E402
from tda_clean.influence.group import GroupInfluence  # noqa: E402
from tests.influence.helpers import EXACT0, ConvexProblem  # noqa: E402


def agreement(predicted, actual) -> str:
    predicted, actual = np.asarray(predicted), np.asarray(actual)
    sign = np.mean(np.sign(predicted) == np.sign(actual))
    r = np.corrcoef(predicted, actual)[0, 1]
    ratio = np.abs(actual).max() / np.abs(predicted).max()
    return f"{sign:.2f} / {r:.3f} / {ratio:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["iris", "wine", "breast_cancer_mean", "breast_cancer"])
    parser.add_argument("--l2", nargs="+", type=float, default=[1e-3, 1e-2])
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--groups", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| data | n | l2 | rows: textbook | rows: first | rows: second | groups: textbook | groups: first "
          "| groups: second |")
    print("|---|---|---|---|---|---|---|---|---|")
    start = time.perf_counter()
    for name in args.data:
        for l2 in args.l2:
            pb = ConvexProblem(name, l2)
            n = len(pb.y)
            engine = InfluenceEngine(pb.model, (pb.X, pb.y), EXACT0, TrainingObjective(l2))
            gi = GroupInfluence(engine)
            rows = np.random.default_rng(1).choice(n, min(args.rows, n), replace=False)
            actual = [pb.actual(np.array([i])) for i in rows]
            first = engine.influence(pb.objective).per_row[rows]
            a = engine.inverse_hvp(pb.objective)[0]
            textbook = (first * (n - 1) - float(a @ engine.regulariser_gradient())) / n
            second = gi.objective_change([[int(i)] for i in rows], pb.objective).second[:, 0]
            rng = np.random.default_rng(2)
            groups = [rng.choice(n, size=int(rng.integers(int(0.05 * n), int(0.1 * n) + 1)), replace=False)
                      for _ in range(args.groups)]
            actual_g = [pb.actual(g) for g in groups]
            res = gi.objective_change(groups, pb.objective)
            old = GroupInfluence(engine, regularized_rows=False).objective_change(groups, pb.objective)
            print(f"| {name} | {n} | {l2:g} | {agreement(textbook, actual)} | {agreement(first, actual)} | "
                  f"{agreement(second, actual)} | {agreement(old.second[:, 0], actual_g)} | "
                  f"{agreement(res.first[:, 0], actual_g)} | {agreement(res.second[:, 0], actual_g)} |", flush=True)
    print(f"cells: sign agreement / Pearson r / ratio; {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
