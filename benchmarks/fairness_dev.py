"""Development sweep for the fairness suite (issue 15): variants of the second-order selector's settings on the
development data sets only (Adult, COMPAS), to choose the suite's defaults before the held-out run.

    python benchmarks/fairness_dev.py --data compas --seeds 0 1 2 \
        --variants f0.02 f0.03 f0.04 f0.03:r5 f0.02:relabel f0.02:obj=worst_group_loss

A variant is ``f<fraction>`` plus ``:``-separated options: ``r<rounds>``, ``i<iters>``, ``t<temperature>``,
``obj=<objective>``, ``relabel`` (the selected rows keep their place with the selector's suggested label instead
of being removed), ``one=<column>`` (cells from one sensitive column instead of the intersection; metrics stay
over the intersectional cells). Per variant and seed: test accuracy, EOD (kept cells, as the suite) and the
before-model's; written to ``results/fairness_dev-<data>.json`` and printed as a table (mean over seeds of the
EOD ratio and the accuracy points lost).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from debias import make_selector  # noqa: E402
from fairness_suite import TUNING, bundle_for, evaluate, predict  # noqa: E402
from group_fidelity import L2, RESULTS, lr_model, newton_lr  # noqa: E402


def parse_variant(text: str) -> dict:
    parts = text.split(":")
    v = {"name": text, "fraction": float(parts[0].removeprefix("f")), "rounds": 3, "iters": 30,
         "temperature": 0.3, "objective": "equalized_odds_gap", "relabel": False, "one": None}
    for p in parts[1:]:
        if p == "relabel":
            v["relabel"] = True
        elif p.startswith("obj="):
            v["objective"] = p.removeprefix("obj=")
        elif p.startswith("one="):
            v["one"] = p.removeprefix("one=")
        elif p[0] in "rit":
            key = {"r": "rounds", "i": "iters", "t": "temperature"}[p[0]]
            v[key] = (float if key == "temperature" else int)(p[1:])
        else:
            raise ValueError(f"variant {text!r}: unknown option {p!r}")
    return v


def run_seed(name: str, seed: int, variants: list[dict]) -> dict:
    import pandas as pd

    from tda_clean.config import TrainConfig
    from tda_clean.selection import FitContext

    bundle, _, small = bundle_for(name, seed, 10)
    X, y, d = bundle.train.X.astype(np.float64), bundle.train.y, bundle.train.X.shape[1]
    theta = newton_lr(X, y, L2)
    keep_val = ~np.isin(bundle.val.group_keys(), list(small))
    out = {"before": evaluate(predict(theta, d, bundle.test.X), bundle, small)}
    for v in variants:
        groups = bundle.val.groups[keep_val].reset_index(drop=True)
        if v["one"]:  # one attribute: the first part of the cell key, e.g. 'sex_g=Male x race_g=White'
            col = v["one"]
            part = groups["cell"].str.split(" x ").map(lambda ks: next((k for k in ks if k.startswith(col)), "merged"))
            groups = pd.DataFrame({col: part})
        context = FitContext(seed=seed, model=lr_model(theta, d),
                             train_config=TrainConfig(l2=L2, dtype="float64", device="cpu"),
                             X_val=bundle.val.X[keep_val].astype(np.float64), y_val=bundle.val.y[keep_val],
                             groups_val=groups, n_classes=2)
        det = make_selector("group_second_order", v["objective"], v["fraction"], v["iters"], v["temperature"])
        det = type(det)(type(det.spec).model_validate({**det.spec.model_dump(), "rounds": v["rounds"]}))
        det.fit(X, y, context)
        mask = det.to_selection().mask
        if v["relabel"]:
            y2 = y.copy()
            y2[mask] = det.suggested_labels_[mask]
            th = newton_lr(X, y2, L2, theta0=theta, tol=1e-9)
            changed = int((y2 != y).sum())
        else:
            th = newton_lr(X[~mask], y[~mask], L2, theta0=theta, tol=1e-9)
            changed = int(mask.sum())
        out[v["name"]] = {**evaluate(predict(th, d, bundle.test.X), bundle, small), "n_changed": changed}
        print(f"  {name} seed {seed} {v['name']}: {out[v['name']]}", file=sys.stderr, flush=True)
    return out


def table(per_seed: list[dict], names: list[str]) -> str:
    lines = ["| variant | rows changed | EOD / before (per seed) | mean EOD reduction | accuracy lost (points) |",
             "|---|---|---|---|---|"]
    b_eod = np.array([s["before"]["equalized_odds_difference"] for s in per_seed])
    b_acc = np.array([s["before"]["accuracy"] for s in per_seed])
    for n in names:
        eod = np.array([s[n]["equalized_odds_difference"] for s in per_seed])
        acc = np.array([s[n]["accuracy"] for s in per_seed])
        ratios = ", ".join(f"{r:.2f}" for r in eod / b_eod)
        changed = np.mean([s[n]["n_changed"] for s in per_seed])
        lines.append(f"| {n} | {changed:.0f} | {ratios} | {1 - eod.mean() / b_eod.mean():.1%} | "
                     f"{100 * (b_acc.mean() - acc.mean()):.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=TUNING, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=["f0.02"])
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)
    variants = [parse_variant(t) for t in args.variants]
    per_seed = [run_seed(args.data, s, variants) for s in args.seeds]
    path = RESULTS / f"fairness_dev-{args.data}{'-' + args.tag if args.tag else ''}.json"
    old = json.loads(path.read_text())["per_seed"] if path.exists() else None
    if old is not None and len(old) == len(per_seed):  # add to earlier variants of the same seeds
        per_seed = [{**o, **s} for o, s in zip(old, per_seed)]
    path.write_text(json.dumps({"seeds": args.seeds, "per_seed": per_seed}, indent=1))
    print(table(per_seed, [k for k in per_seed[0] if k != "before"]))


if __name__ == "__main__":
    main()
