"""``label_noise`` with ``max_flagged: auto`` under budget-rule variants, the action following the detector
(development sets only: digits and COMPAS, as in ``label_noise_grid.py``).

    python benchmarks/label_noise_budget_rules.py --datasets digits compas --rules max one_se combined \
        --out benchmarks/results/label_noise_budget_rules.jsonl

``max`` (the default rule) and ``one_se`` are ``auto_budget.rule`` settings; ``combined`` (tried, not adopted, so it
lives here only) chooses k on the sum of the selection-part and held-out changes, by passing that sum to
:func:`~tda_clean.selection.budget_curve.choose_budget` as the selection-part curve (the held-out check is then
no longer independent). One JSON line per data set x flip x seed x rule: the choice, k, F1 and the test accuracy after
relabelling ``loo_loss``'s rows / removing ``harmful``'s and retraining.
"""
from __future__ import annotations

import argparse
import json
import os
from contextlib import contextmanager

import numpy as np

import tda_clean.selection.budget_curve as budget_curve
from benchmarks.label_noise_grid import DATASETS, config_for, prf
from tda_clean.config import LabelNoiseDetector
from tda_clean.data import load_bundle
from tda_clean.evaluation import evaluate_model
from tda_clean.models.factory import build_model
from tda_clean.models.trainer import fit as fit_model
from tda_clean.selection import FitContext, make_detector


@contextmanager
def combined_chooser():
    """``choose_budget`` fed with the selection + held-out change as its selection-part curve."""
    original = budget_curve.choose_budget

    def chooser(k, validated, accuracy, held_out, *args, **kwargs):
        return original(k, np.asarray(validated, float) + np.asarray(held_out, float), accuracy, held_out,
                        *args, **kwargs)

    budget_curve.choose_budget = chooser
    try:
        yield
    finally:
        budget_curve.choose_budget = original


def run(dataset: str, scenario: str, seed: int, rules: list[str], out) -> None:
    cfg = config_for(dataset, scenario, seed)
    bundle = load_bundle(cfg)
    train, truth = bundle.train, bundle.corrupted_mask
    X, y = train.X, train.y

    def fit_eval(Xt, yt):
        model = build_model(cfg.model, train.feature_shape, train.n_classes, cfg.seed)
        fit_model(model, Xt, yt, cfg.train, cfg.seed, X_val=bundle.val.X, y_val=bundle.val.y, progress=False)
        return model, evaluate_model(model, bundle)["accuracy"]

    before, acc_before = fit_eval(X, y)
    context = FitContext(seed=cfg.seed, model=before, train_config=cfg.train, X_val=bundle.val.X, y_val=bundle.val.y,
                         groups_val=bundle.val.groups, n_classes=train.n_classes, action="recommended")
    for rule in rules:
        spec = LabelNoiseDetector(auto_budget={"rule": "max" if rule == "combined" else rule},
                                  damping=DATASETS[dataset]["damping"])
        if rule == "combined":
            with combined_chooser():
                det = make_detector(spec).fit(X, y, context)
        else:
            det = make_detector(spec).fit(X, y, context)
        rows = det.get_support(indices=True)
        if det.recommended_action_ == "relabel":
            yt = y.copy()
            yt[rows] = det.suggested_labels_[rows]
            _, acc_after = fit_eval(X, yt)
        else:
            keep = np.ones(len(y), dtype=bool)
            keep[rows] = False
            _, acc_after = fit_eval(X[keep], y[keep])
        p, r, f1 = prf(rows, truth)
        row = {"dataset": dataset, "scenario": scenario, "seed": seed, "rule": rule, "chosen": det.info_["chosen"],
               "k": int(len(rows)), "agreement_budget": det.info_["agreement_budget"], "flips": int(truth.sum()),
               "precision": p, "recall": r, "f1": f1, "accuracy_before": acc_before, "accuracy_after": acc_after,
               "load": os.getloadavg()[0]}
        out.write(json.dumps(row) + "\n")
        out.flush()
        print(f"{dataset} {scenario} s{seed} {rule:8s} {row['chosen']:8s} k={row['k']} F1={f1:.3f} "
              f"acc {acc_before:.4f}->{acc_after:.4f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", nargs="+", default=["digits", "compas"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rules", nargs="+", default=["max", "one_se", "combined"],
                        choices=["max", "one_se", "combined"])
    parser.add_argument("--out", default="benchmarks/results/label_noise_budget_rules.jsonl")
    args = parser.parse_args()
    with open(args.out, "a") as out:
        for dataset in args.datasets:
            for scenario in DATASETS[dataset]["scenarios"]:
                for seed in args.seeds:
                    run(dataset, scenario, seed, args.rules, out)


if __name__ == "__main__":
    main()
