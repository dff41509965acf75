"""How much a full retrain's clean accuracy moves with the training seed alone (context for issue 15 item 5).

    python benchmarks/retrain_seed_spread.py --dataset fashion --cases 0.01:0 --train-seeds 0 1 2 --threads 1

Per case ``rate:seed`` (``benchmarks/poison.py``'s ``patch`` scenario, the data of poison seed ``seed``) the
retrain reference of ``unlearn_counterexample.py`` -- the poisoned training set without its true poisons, the same
validation split for early stopping -- is trained once per training seed; printed: each test accuracy and the
spread (max − min, sample s.d.) in points. Only the initialisation and batch order change between the trainings.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.poison import _evaluate, _train, scenario  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="digits", choices=("digits", "fashion"))
    ap.add_argument("--cases", nargs="+", required=True, help="rate:seed, e.g. 0.01:0")
    ap.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    for case in args.cases:
        rate, seed = float(case.split(":")[0]), int(case.split(":")[1])
        _, bundle, model_cfg, train_cfg = scenario(args.dataset, "patch", rate, seed)
        keep = ~bundle.corrupted_mask
        accs = []
        for s in args.train_seeds:
            model, _ = _train(model_cfg, train_cfg, bundle, bundle.train.X[keep], bundle.train.y[keep], s)
            accs.append(_evaluate(model.eval(), bundle)["accuracy"])
        a = 100 * np.array(accs)
        print(f"{args.dataset} {case} (test rows {len(bundle.test.y)}): accuracy "
              + " / ".join(f"{x:.2f}" for x in a) + f" %; spread {a.max() - a.min():.2f} pt, s.d. {a.std(ddof=1):.2f} pt; "
              f"load {' '.join(Path('/proc/loadavg').read_text().split()[:3])}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
