"""The agreement rule between ``loo_loss`` and ``harmful`` on saved rankings (issue 15 item 6), no retrains.

    python benchmarks/label_noise_grid.py --datasets digits compas --seeds 0 1 2 --scores-only benchmarks/results/ln_scores
    python benchmarks/label_noise_agreement.py benchmarks/results/ln_scores --datasets digits compas

Per setting (``<data>-<flip>-<seed>.npz`` from ``label_noise_grid.py --scores-only``) and budget (``k_cl``: the rows
cleanlab flags, ``k_true``: the injected flips): the Jaccard overlap of ``loo_loss``'s top-k and ``harmful``'s
positive top-k, and F1 against the injected flips of cleanlab (its own set at k_cl), ``loo_loss``, ``harmful`` and
the rule ``label_noise`` (``tda_clean.selection.label_noise``: ``loo_loss`` when the overlap is at least
``--min-agreement``, else ``harmful``). Then one line per data set x flip x budget: the means over seeds, and
whether the rule's mean F1 is >= cleanlab's.

With ``--auto label_noise_grid_auto.jsonl`` (the ``--auto-budget`` rows of the same settings): the rule with the
automatic budget -- the agreement measured at ``loo_loss``'s automatic k (``harmful``'s top-k on the whole
validation split, as saved; k = 0 gives agreement 0), then the chosen detector's automatic-budget row.

    python benchmarks/label_noise_agreement.py /tmp/ln_scores --auto benchmarks/results/label_noise_grid_auto.jsonl

``--statistic disagreement --threshold T`` (tried, not adopted; needs rankings saved with ``pred``, the trained
model's argmax): instead of the Jaccard overlap, the share of ``harmful``'s top-k rows whose given label differs
from the model's prediction (uniform flips are not fitted -> high share), ``loo_loss`` when it is at least T.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from tda_clean.selection.label_noise import agreement, choose, top_rows

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.label_noise_grid import prf  # noqa: E402


def f1(rows: np.ndarray, truth: np.ndarray) -> float:
    return prf(rows, truth)[2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("--datasets", nargs="+", default=None)
    parser.add_argument("--min-agreement", type=float, default=None, help="default: the library's default")
    parser.add_argument("--statistic", choices=("jaccard", "disagreement", "reliability"), default="jaccard")
    parser.add_argument("--threshold", type=float, default=None, help="--statistic disagreement: loo_loss if >=")
    parser.add_argument("--auto", default=None, help="jsonl with the automatic-budget rows: the rule with them")
    args = parser.parse_args()
    if args.auto:
        return auto_rule(args)
    cells = defaultdict(list)
    for path in sorted(Path(args.folder).glob("*.npz")):
        dataset, flip, seed = path.stem.rsplit("-", 2)
        if args.datasets and dataset not in args.datasets:
            continue
        z = np.load(path)
        truth, own = z["truth"].astype(bool), z["own"]
        for budget, k in (("k_cl", len(own)), ("k_true", int(truth.sum()))):
            loo, harm = top_rows(z["loo_loss"], k, False), top_rows(z["harmful"], k, True)
            jac = agreement(loo, harm)
            kw = {} if args.min_agreement is None else {"min_agreement": args.min_agreement}
            chosen = choose(jac, **kw)
            if args.statistic == "disagreement":  # the share of harmful's top-k the model does not fit
                jac = float((z["pred"][harm] != z["y"][harm]).mean()) if len(harm) else 0.0
                chosen = "loo_loss" if jac >= args.threshold else "harmful"
            if args.statistic == "reliability":  # the overlap relative to harmful's own split-half overlap
                halves = agreement(top_rows(z["harmful_a"], k, True), top_rows(z["harmful_b"], k, True))
                jac = jac / max(halves, 1e-12)
                chosen = "loo_loss" if jac >= args.threshold else "harmful"
            row = {"cleanlab": f1(own if budget == "k_cl" else top_rows(z["cleanlab"], k, False), truth),
                   "loo_loss": f1(loo, truth), "harmful": f1(harm, truth)}
            row["label_noise"] = row[chosen]
            print(f"{dataset:8s} {flip:8s} s{seed} {budget:6s} k={k:5d} {args.statistic}={jac:.3f} -> {chosen:8s} "
                  + " ".join(f"{n}={v:.3f}" for n, v in row.items()))
            cells[(dataset, flip, budget)].append((jac, row))
    print(f"\n| data | flip | budget | {args.statistic} (min–max) | cleanlab | loo_loss | harmful | label_noise | ≥ cleanlab |")
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


def auto_rule(args) -> None:
    rows = [json.loads(line) for line in Path(args.auto).read_text().splitlines() if line.strip()]
    auto = {(r["dataset"], r["scenario"], r["seed"], r["detector"]): r for r in rows if r["budget"] == "auto"}
    kw = {} if args.min_agreement is None else {"min_agreement": args.min_agreement}
    cells = defaultdict(list)
    for (dataset, flip, seed, det), r in sorted(auto.items()):
        path = Path(args.folder) / f"{dataset}-{flip}-{seed}.npz"
        if det != "loo_loss" or not path.exists() or (args.datasets and dataset not in args.datasets):
            continue
        z, k = np.load(path), r["n_flagged"]
        overlap = agreement(top_rows(z["loo_loss"], k, False), top_rows(z["harmful"], k, True))
        chosen = choose(overlap, **kw)
        pick, cl = auto[(dataset, flip, seed, chosen)], auto[(dataset, flip, seed, "cleanlab")]
        print(f"{dataset:8s} {flip:8s} s{seed} loo_loss k={k:5d} jaccard={overlap:.3f} -> {chosen:8s} "
              f"k={pick['n_flagged']:5d} F1={pick['f1']:.3f} acc={pick['accuracy_after']:.4f} cleanlab F1={cl['f1']:.3f}")
        cells[(dataset, flip)].append((chosen, pick, cl))
    print("\n| data | flip | chosen (seeds) | k / F1 / accuracy after | cleanlab F1 | ≥ cleanlab |\n|---|---|---|---|---|---|")
    met = 0
    for (dataset, flip), items in cells.items():
        mean = lambda key, i=1: np.mean([it[i][key] for it in items])  # noqa: E731
        ok = mean("f1") >= mean("f1", 2)
        met += ok
        print(f"| {dataset} | {flip} | {' / '.join(it[0] for it in items)} | {mean('n_flagged'):.0f} / {mean('f1'):.3f} / "
              f"{mean('accuracy_after'):.4f} | {mean('f1', 2):.3f} | {'yes' if ok else 'no'} |")
    print(f"\nlabel_noise rule with the automatic budget >= cleanlab's (mean F1) in {met} of {len(cells)} cells")


if __name__ == "__main__":
    main()
