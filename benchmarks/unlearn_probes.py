"""Unlearning probes beyond ``unlearn()``'s four methods (issue 5): does a cheaper update forget a backdoor?

    python benchmarks/unlearn_probes.py --dataset digits --rates 0.005 0.01 0.05 --seeds 0 1 2

The forget set is the TRUE poison mask (detection is taken out of the question); every probe starts from the
poisoned model and is timed against a retrain without the poisons in the same run. Probes:

* ``head_refit``      -- head re-initialised and fitted to its L2 optimum (l2 = 1e-3, L-BFGS) on the retained rows'
  frozen penultimate features: is the backdoor in the head or in the body?
* ``complement:w``    -- 1 epoch of Adam (lr 1e-3) on the retained rows plus ``w * -log(1 - p_label(x_forget))`` on
  a forget batch per step: pushes the poisons off their (target) label, bounded below unlike CE ascent.
* ``complement:w+head_refit`` -- the same, then ``head_refit``: does a convex head repair restore accuracy?
* ``ssd``             -- selective synaptic dampening (Foster et al. 2023): parameters whose per-sample Fisher
  diagonal on the forget set exceeds ``alpha`` (10) x that on all rows are scaled by ``min(1, I_D / I_f)``.

Prints one line per scenario and probe and a summary per probe (min speed-up, max / mean ASR, mean accuracy change
vs the retrain); writes ``benchmarks/results/unlearn_probes_<dataset>.json``.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.poison import _evaluate, _train, scenario  # noqa: E402
from tda_clean.influence.gradients import iter_per_sample_grads  # noqa: E402
from tda_clean.influence.params import ParamSpace  # noqa: E402
from tda_clean.models.trainer import training_loss  # noqa: E402


def head_refit(model, X, keep, y, l2: float = 1e-3):
    out = copy.deepcopy(model).eval()
    with torch.no_grad():
        Fk = out.features(torch.as_tensor(X[keep], dtype=torch.float32))
    W = torch.zeros(out.head.out_features, Fk.shape[1], requires_grad=True)
    b = torch.zeros(out.head.out_features, requires_grad=True)
    yk = torch.as_tensor(y[keep], dtype=torch.long)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=100, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(Fk @ W.T + b, yk) + 0.5 * l2 * (W * W).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        out.head.weight.copy_(W)
        out.head.bias.copy_(b)
    return out


def complement(model, X, y, forget_mask, weight: float, batch_size: int, seed: int, l2: float, lr: float = 1e-3):
    out = copy.deepcopy(model)
    Xt, yt = torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)
    keep, forget = torch.as_tensor(np.flatnonzero(~forget_mask)), torch.as_tensor(np.flatnonzero(forget_mask))
    opt = torch.optim.Adam(out.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    out.train()
    order = keep[torch.randperm(len(keep), generator=gen)]
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        fidx = forget[torch.randint(0, len(forget), (min(batch_size, len(forget)),), generator=gen)]
        opt.zero_grad()
        p = F.softmax(out(Xt[fidx]), 1).gather(1, yt[fidx][:, None]).squeeze(1)
        loss = training_loss(out, Xt[idx], yt[idx], l2) \
            + weight * (-torch.log1p(-p.clamp(max=1 - 1e-6))).mean()
        loss.backward()
        opt.step()
    return out.eval()


def ssd(model, X, y, forget_mask, alpha: float = 10.0, lam: float = 1.0):
    out = copy.deepcopy(model).eval()
    space = ParamSpace(out, "all")

    def fisher(rows):
        total = 0.0
        for _, G in iter_per_sample_grads(space, X[rows], y[rows], check_finite=False):
            total = total + (G * G).sum(0)
        return total / len(rows)

    I_d, I_f = fisher(np.arange(len(y))), fisher(np.flatnonzero(forget_mask))
    theta = space.flat()
    scale = torch.where(I_f > alpha * I_d, torch.clamp(lam * I_d / I_f.clamp_min(1e-30), max=1.0), torch.ones_like(theta))
    with torch.no_grad():
        values = space.unflatten(theta * scale)
        named = dict(out.named_parameters())
        for name in space.names:
            named[name].copy_(values[name])
    return out


def probes(model, X, y, mask, train_cfg, seed):
    keep = ~mask
    bs, l2 = train_cfg.batch_size, train_cfg.l2
    yield "head_refit", lambda: head_refit(model, X, keep, y)
    for w in (0.3, 1.0):
        yield f"complement:{w}", lambda w=w: complement(model, X, y, mask, w, bs, seed, l2)
        yield f"complement:{w}+head_refit", lambda w=w: head_refit(complement(model, X, y, mask, w, bs, seed, l2), X, keep, y)
    yield "ssd", lambda: ssd(model, X, y, mask)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="digits", choices=("digits", "fashion", "mnist5k"))
    ap.add_argument("--rates", type=float, nargs="+", default=[0.005, 0.01, 0.05])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for rate in args.rates:
        for seed in args.seeds:
            _, bundle, model_cfg, train_cfg = scenario(args.dataset, "patch", rate, seed)
            X, y, mask = bundle.train.X, bundle.train.y, bundle.corrupted_mask
            model, _ = _train(model_cfg, train_cfg, bundle, X, y, seed)
            model.eval()
            retrained, t_retrain = _train(model_cfg, train_cfg, bundle, X[~mask], y[~mask], seed)
            ref = _evaluate(retrained, bundle)
            print(f"{args.dataset} rate {rate} seed {seed}: retrain {t_retrain:.2f} s {ref}", flush=True)
            for name, make in probes(model, X, y, mask, train_cfg, seed):
                start = time.perf_counter()
                out = make()
                seconds = time.perf_counter() - start
                row = {"rate": rate, "seed": seed, "probe": name, "seconds": seconds, "speedup": t_retrain / seconds,
                       **_evaluate(out, bundle), "retrain_accuracy": ref["accuracy"]}
                rows.append(row)
                print(f"  {name:26s} {row['speedup']:5.1f}x  ASR {row['attack_success_rate']:.4f}  "
                      f"acc {row['accuracy']:.4f}", flush=True)
    print("\nprobe | min speed-up | ASR max | ASR mean | accuracy change vs retrain (mean, worst)")
    for name in dict.fromkeys(r["probe"] for r in rows):
        r = [x for x in rows if x["probe"] == name]
        d = [x["accuracy"] - x["retrain_accuracy"] for x in r]
        print(f"{name} | {min(x['speedup'] for x in r):.1f}x | {max(x['attack_success_rate'] for x in r):.3f} | "
              f"{np.mean([x['attack_success_rate'] for x in r]):.3f} | {np.mean(d):+.3f}, {min(d):+.3f}")
    out = Path(__file__).resolve().parent / "results" / f"unlearn_probes_{args.dataset}.json"
    out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
