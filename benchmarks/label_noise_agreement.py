"""The agreement rule between ``loo_loss`` and ``harmful`` on saved rankings (issue 15 item 6), no retrains.

    python benchmarks/label_noise_grid.py --datasets digits compas --seeds 0 1 2 --scores-only benchmarks/results/ln_scores
    python benchmarks/label_noise_agreement.py benchmarks/results/ln_scores --datasets digits compas

Per setting (``<data>-<flip>-<seed>.npz`` from ``label_noise_grid.py --scores-only``) and budget (``k_cl``: the rows
cleanlab flags, ``k_true``: the injected flips): the Jaccard overlap of ``loo_loss``'s top-k and ``harmful``'s
positive top-k, and F1 against the injected flips of cleanlab (its own set at k_cl), ``loo_loss``, ``harmful`` and
the rule ``label_noise`` (``tda_clean.selection.label_noise``: ``loo_loss`` when the overlap is at least
``--min-agreement``, else ``harmful``). Then one line per data set x flip x budget: the means over seeds, and
whether the rule's mean F1 is >= cleanlab's.
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from tda_clean.selection.label_noise import agreement, choose


def ranking(scores: np.ndarray, positive_only: bool) -> np.ndarray:
    order = np.argsort(-scores, kind="stable")
    return order[scores[order] > 0] if positive_only else order


def f1(rows: np.ndarray, truth: np.ndarray) -> float:
    tp = int(truth[rows].sum())
    p, r = (tp / len(rows) if len(rows) else 0.0), tp / max(1, int(truth.sum()))
    return 2 * p * r / (p + r) if p + r else 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("--datasets", nargs="+", default=None)
    parser.add_argument("--min-agreement", type=float, default=None, help="default: the library's default")
    args = parser.parse_args()
    cells = defaultdict(list)
    for path in sorted(Path(args.folder).glob("*.npz")):
        dataset, flip, seed = path.stem.rsplit("-", 2)
        if args.datasets and dataset not in args.datasets:
            continue
        z = np.load(path)
        truth, own = z["truth"].astype(bool), z["own"]
        for budget, k in (("k_cl", len(own)), ("k_true", int(truth.sum()))):
            loo, harm = ranking(z["loo_loss"], False)[:k], ranking(z["harmful"], True)[:k]
            jac = agreement(loo, harm)
            kw = {} if args.min_agreement is None else {"min_agreement": args.min_agreement}
            chosen = choose(jac, **kw)
            row = {"cleanlab": f1(own if budget == "k_cl" else ranking(z["cleanlab"], False)[:k], truth),
                   "loo_loss": f1(loo, truth), "harmful": f1(harm, truth)}
            row["label_noise"] = row[chosen]
            print(f"{dataset:8s} {flip:8s} s{seed} {budget:6s} k={k:5d} jaccard={jac:.3f} -> {chosen:8s} "
                  + " ".join(f"{n}={v:.3f}" for n, v in row.items()))
            cells[(dataset, flip, budget)].append((jac, row))
    print("\n| data | flip | budget | Jaccard (min–max) | cleanlab | loo_loss | harmful | label_noise | ≥ cleanlab |")
    print("|---|---|---|---|---|---|---|---|---|")
    met = 0
    for (dataset, flip, budget), items in cells.items():
        jacs = [j for j, _ in items]
        mean = {n: np.mean([r[n] for _, r in items]) for n in items[0][1]}
        ok = mean["label_noise"] >= mean["cleanlab"]
        met += ok
        print(f"| {dataset} | {flip} | {budget} | {np.mean(jacs):.3f} ({min(jacs):.3f}–{max(jacs):.3f}) | "
              + " | ".join(f"{mean[n]:.3f}" for n in ("cleanlab", "loo_loss", "harmful", "label_noise"))
              + f" | {'yes' if ok else 'no'} |")
    print(f"\nlabel_noise >= cleanlab (mean F1 over seeds) in {met} of {len(cells)} cells")


if __name__ == "__main__":
    main()
