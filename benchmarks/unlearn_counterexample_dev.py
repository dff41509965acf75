"""Development replay of ``counterexample`` settings on cached models (issue 15 item 5): no retrain, no timing.

    python benchmarks/unlearn_counterexample_dev.py --dataset fashion --cases 0.01:10 0.05:10 0.005:11 \
        --cache /tmp/ce_cache --variants "" "target_drop=6" "batch_size=16,stamp=8,counter_budget=0.025"
    python benchmarks/unlearn_counterexample_dev.py --dataset fashion --cases 0.005:11 --cache /tmp/ce_cache \
        --repeat 6 --variants ""

Per case ``rate:seed`` (``benchmarks/poison.py``'s ``patch`` scenario) the clean-data and poisoned models are
trained once and cached under ``--cache``; each variant (``field=value,...`` of ``CounterexampleUnlearn``, ``""``
= the defaults) unlearns the true poisons and prints attack success (and its difference to the clean model's),
the accuracy change vs the before-model, and ``ok`` when both goal conditions on them hold (ASR ≤ clean + 0.5
point, ≤ 0.5 point lost; the speed condition needs ``unlearn_counterexample.py``). ``--repeat N``: the first
case with unlearning seeds 100..100+N-1, mean ± s.d. of both changes (how much of a difference is noise).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.poison import _evaluate, scenario  # noqa: E402
from benchmarks.unlearn_counterexample import _cached_train  # noqa: E402
from tda_clean.actions.unlearn import unlearn  # noqa: E402
from tda_clean.config import unlearn_spec  # noqa: E402


def _spec(variant: str):
    fields = dict(kv.split("=", 1) for kv in variant.split(",")) if variant else {}
    return unlearn_spec(method="counterexample", **fields)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion", choices=("digits", "fashion", "mnist5k"))
    ap.add_argument("--cases", nargs="+", required=True, help="rate:seed, e.g. 0.01:10")
    ap.add_argument("--variants", nargs="+", default=[""])
    ap.add_argument("--cache", required=True)
    ap.add_argument("--repeat", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cases = []
    for case in args.cases:
        rate, seed = float(case.split(":")[0]), int(case.split(":")[1])
        clean, bundle, model_cfg, train_cfg = scenario(args.dataset, "patch", rate, seed)
        tag = f"{args.dataset}_{rate}_{seed}"
        clean_model, _ = _cached_train(Path(args.cache), f"clean_{tag}", model_cfg, train_cfg, bundle,
                                       clean.train.X, clean.train.y, seed)
        model, _ = _cached_train(Path(args.cache), f"poisoned_{tag}", model_cfg, train_cfg, bundle, bundle.train.X,
                                 bundle.train.y, seed)
        cases.append((case, seed, bundle, model, train_cfg, _evaluate(model, bundle), _evaluate(clean_model, bundle)))

    def changes(spec, case, seed):
        _, _, bundle, model, train_cfg, before, clean = case
        out, _ = unlearn(spec, model, bundle.train.X, bundle.train.y, bundle.corrupted_mask, train_cfg, seed)
        ev = _evaluate(out, bundle)
        return (ev["attack_success_rate"], 100 * (ev["attack_success_rate"] - clean["attack_success_rate"]),
                100 * (ev["accuracy"] - before["accuracy"]))

    for variant in args.variants:
        spec = _spec(variant)
        if args.repeat:
            runs = np.array([changes(spec, cases[0], 100 + s)[1:] for s in range(args.repeat)])
            print(f"{variant or 'defaults':45s} {cases[0][0]} x{args.repeat}: ASR - clean {runs[:, 0].mean():+.2f} "
                  f"± {runs[:, 0].std():.2f} pt, acc change {runs[:, 1].mean():+.2f} ± {runs[:, 1].std():.2f} pt",
                  flush=True)
            continue
        cells = []
        for case in cases:
            asr, d_asr, d_acc = changes(spec, case, case[1])
            cells.append(f"{case[0]} {asr:.3f} ({d_asr:+.1f}) / {d_acc:+.1f}{' ok' if d_asr <= 0.5 and d_acc >= -0.5 else ''}")
        print(f"{variant or 'defaults':45s} " + " | ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
