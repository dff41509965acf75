"""Counter-example unlearning vs retraining on BadNets backdoors (issue 15 item 5).

    python benchmarks/unlearn_counterexample.py --dataset digits --rates 0.005 0.01 0.05 --seeds 0 1 2 \
        --threads 1 --out benchmarks/results/unlearn_counterexample_digits_adaptive.jsonl
    python benchmarks/unlearn_counterexample.py --summarize benchmarks/results/unlearn_counterexample_*.jsonl

Per scenario (``benchmarks/poison.py``'s ``patch`` scenario: digits 2x2 / Fashion-MNIST 3x3 white patch
bottom-right -> class 0): train the clean-data model (its attack success is the target), the poisoned model, and
a retrain from scratch without the poisons (timed: the reference). Each ``--variants`` entry
(``method:field=value,...`` as in poison.py) then unlearns the poisons from the poisoned model; its time is the
wall time of the whole ``unlearn()`` call (trigger estimate, relabelling, steps). The forget set is the TRUE poison
mask by default; ``--forget delta`` uses Δ-influence's flagged rows (its default config) instead (the retrain
reference then also drops those rows, and the trigger is estimated from the flagged rows). Each model's
``trigger_free_target_share`` is the share of the un-stamped non-target test rows it predicts as the target;
each variant also records its steps, step cap and the stopping rule's last probe figures.

Goal per run: speed-up >= 10x, ASR <= clean-model ASR + 0.005, accuracy >= before-model accuracy - 0.005.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.poison import _evaluate, _train, scenario, unlearn_config  # noqa: E402
from tda_clean.actions.unlearn import unlearn  # noqa: E402
from tda_clean.models.factory import build_model  # noqa: E402

VARIANTS = ("counterexample",)


def _cached_train(cache: Path | None, key: str, model_cfg, train_cfg, bundle, X, y, seed):
    """Train (timed) -- or, for development only, load a model saved under ``cache`` (time then NaN)."""
    if cache is not None and (cache / f"{key}.pt").exists():
        model = build_model(model_cfg, bundle.train.feature_shape, bundle.train.n_classes, seed)
        model.load_state_dict(torch.load(cache / f"{key}.pt"))
        return model.eval(), float("nan")
    model, seconds = _train(model_cfg, train_cfg, bundle, X, y, seed)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), cache / f"{key}.pt")
    return model.eval(), seconds


def _delta_forget(model, model_cfg, train_cfg, bundle, seed):
    from tda_clean.config import parse_config
    from tda_clean.selection import FitContext, make_detector

    context = FitContext(seed=seed, make_model=lambda s: build_model(model_cfg, bundle.train.feature_shape,
                                                                     bundle.train.n_classes, s),
                         train_config=train_cfg, model=model, X_val=bundle.val.X, y_val=bundle.val.y,
                         n_classes=bundle.train.n_classes)
    cfg = parse_config({"data": {"kind": "digits"}, "detector": {"kind": "delta_influence"}}).detector
    start = time.perf_counter()
    det = make_detector(cfg).fit(bundle.train.X, bundle.train.y, context)
    return det.get_support(), time.perf_counter() - start


def _target_share(model, bundle) -> float:
    """Share of the un-stamped non-target test rows predicted as the attack's target (the trigger-free floor)."""
    from tda_clean.models.trainer import predict_proba

    rows = bundle.test.y != bundle.attack_target
    return float(np.mean(predict_proba(model, bundle.test.X[rows]).argmax(1) == bundle.attack_target))


def run_one(dataset: str, rate: float, seed: int, variants, cache: Path | None, forget_kind: str) -> dict:
    clean, bundle, model_cfg, train_cfg = scenario(dataset, "patch", rate, seed)
    X, y, truth = bundle.train.X, bundle.train.y, bundle.corrupted_mask
    tag = f"{dataset}_{rate}_{seed}"
    clean_model, _ = _cached_train(cache, f"clean_{tag}", model_cfg, train_cfg, bundle, clean.train.X,
                                   clean.train.y, seed)
    model, t_train = _cached_train(cache, f"poisoned_{tag}", model_cfg, train_cfg, bundle, X, y, seed)
    row = {"dataset": dataset, "rate": rate, "seed": seed, "n_train": len(y), "n_poison": int(truth.sum()),
           "forget": forget_kind, "clean_model": {**_evaluate(clean_model, bundle),
                                                  "trigger_free_target_share": _target_share(clean_model, bundle)},
           "before": {**_evaluate(model, bundle), "trigger_free_target_share": _target_share(model, bundle)},
           "train_seconds": t_train}
    forget = truth
    if forget_kind == "delta":
        forget, row["detect_seconds"] = _delta_forget(model, model_cfg, train_cfg, bundle, seed)
        row["n_flagged"], row["n_flagged_poisons"] = int(forget.sum()), int((forget & truth).sum())
    retrained, t_retrain = _train(model_cfg, train_cfg, bundle, X[~forget], y[~forget], seed)
    row["retrain"] = {"seconds": t_retrain, **_evaluate(retrained, bundle),
                      "trigger_free_target_share": _target_share(retrained, bundle)}
    row["unlearn"] = {}
    for spec in variants:
        start = time.perf_counter()
        out, info = unlearn(unlearn_config(spec), model, X, y, forget, train_cfg, seed)
        seconds = time.perf_counter() - start
        ev = _evaluate(out, bundle)
        row["unlearn"][spec] = {"seconds": seconds, "speedup": t_retrain / seconds, **ev,
                                "trigger_free_target_share": _target_share(out, bundle),
                                **{k: info[k] for k in ("trigger_features", "relabelled", "steps")
                                   if k in info},
                                "meets_goal": bool(t_retrain / seconds >= 10
                                                   and ev["attack_success_rate"] <= row["clean_model"]["attack_success_rate"] + 0.005
                                                   and ev["accuracy"] >= row["before"]["accuracy"] - 0.005)}
    return row


def summarize(paths: list[str]) -> str:
    rows = [json.loads(line) for p in paths for line in Path(p).read_text().splitlines() if line.strip()]
    out = ["| dataset | forget | rate | seed | variant | speed-up | ASR before | ASR after | ASR clean model | ASR retrain "
           "| acc before | acc after (Δ) | acc retrain | goal |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for spec, u in r["unlearn"].items():
            out.append(f"| {r['dataset']} | {r['forget']} | {r['rate']} | {r['seed']} | {spec} | {u['speedup']:.1f}x "
                       f"| {r['before']['attack_success_rate']:.3f} | {u['attack_success_rate']:.3f} "
                       f"| {r['clean_model']['attack_success_rate']:.3f} | {r['retrain']['attack_success_rate']:.3f} "
                       f"| {r['before']['accuracy']:.3f} | {u['accuracy']:.3f} ({100 * (u['accuracy'] - r['before']['accuracy']):+.1f}) "
                       f"| {r['retrain']['accuracy']:.3f} | {'yes' if u['meets_goal'] else 'no'} |")
    out.append("")
    out.append("| dataset | forget | variant | runs | goal met | min speed-up | max ASR − clean ASR (pt) | worst acc change (pt) |")
    out.append("|---|---|---|---|---|---|---|---|")
    for key in dict.fromkeys((r["dataset"], r["forget"], s) for r in rows for s in r["unlearn"]):
        us = [(r, r["unlearn"][key[2]]) for r in rows if (r["dataset"], r["forget"]) == key[:2] and key[2] in r["unlearn"]]
        out.append(f"| {key[0]} | {key[1]} | {key[2]} | {len(us)} | {sum(u['meets_goal'] for _, u in us)} "
                   f"| {min(u['speedup'] for _, u in us):.1f}x "
                   f"| {100 * max(u['attack_success_rate'] - r['clean_model']['attack_success_rate'] for r, u in us):+.1f} "
                   f"| {100 * min(u['accuracy'] - r['before']['accuracy'] for r, u in us):+.1f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="digits", choices=("digits", "fashion", "mnist5k"))
    ap.add_argument("--rates", type=float, nargs="+", default=[0.005, 0.01, 0.05])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--forget", choices=("truth", "delta"), default="truth")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default=None, help="development only: reuse trained clean/poisoned models")
    ap.add_argument("--out", default=None)
    ap.add_argument("--summarize", nargs="+", default=None)
    args = ap.parse_args(argv)
    if args.summarize:
        print(summarize(args.summarize))
        return 0
    torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else None
    for rate in args.rates:
        for seed in args.seeds:
            row = run_one(args.dataset, rate, seed, args.variants, Path(args.cache) if args.cache else None, args.forget)
            row["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
            r = row
            print(f"{args.dataset} rate {rate} seed {seed}: clean ASR {r['clean_model']['attack_success_rate']:.3f} "
                  f"before ASR {r['before']['attack_success_rate']:.3f} acc {r['before']['accuracy']:.4f}; retrain "
                  f"{r['retrain']['seconds']:.2f} s ASR {r['retrain']['attack_success_rate']:.3f} acc "
                  f"{r['retrain']['accuracy']:.4f}; load {' '.join(row['loadavg'])}", flush=True)
            for spec, u in row["unlearn"].items():
                print(f"   {spec:55s} {u['speedup']:6.1f}x ASR {u['attack_success_rate']:.3f} acc {u['accuracy']:.4f} "
                      f"trig {u.get('trigger_features')} relab {u.get('relabelled')} goal {u['meets_goal']}", flush=True)
            if out is not None:
                out.parent.mkdir(parents=True, exist_ok=True)
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
