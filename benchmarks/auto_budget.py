"""The automatic budget against the fixed default budget, on label noise: how many rows each flags against the
number of injected flips, precision / recall of the flagged rows, test accuracy after the action and retraining.

    python benchmarks/auto_budget.py [--cases quickstart digits] [--out benchmarks/results/auto_budget.md]

Cases: ``quickstart`` (configs/quickstart.yaml: Adult, 30% of men's positive labels flipped, logistic regression)
and ``digits`` (8x8 digits, 10% of the training labels flipped to a uniformly drawn other class, logistic
regression with L-BFGS; not used while the automatic budget was developed). Per case and detector: the fixed
default budget (``harmful``: 5% of the training rows; ``cleanlab``: every label issue it finds) and
``max_flagged: auto`` (``AutoBudget`` defaults; for cleanlab also ``criterion: accuracy``), each followed by the
action and a retrain with the run's seed.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from tda_clean.config import load_config
from tda_clean.pipeline import run_pipeline

CASES = {
    "quickstart": ("configs/quickstart.yaml", []),
    "digits": ("configs/quickstart.yaml", [
        "name=digits-label-noise", "data={kind: digits}", "scenario={kind: uniform_flip, rate: 0.1}",
        "split={val_fraction: 0.2, test_fraction: 0.25}", "train={optimizer: lbfgs, l2: 0.001, epochs: 100}",
        "gate={min_accuracy: 0.5}"]),
}
DETECTORS = [  # (name, budget, detector, action)
    ("harmful", "fixed default", "{kind: harmful, damping: 0.0}", "remove"),
    ("harmful", "auto", "{kind: harmful, damping: 0.0, max_flagged: auto}", "remove"),
    ("cleanlab", "fixed default", "{kind: cleanlab}", "relabel"),
    ("cleanlab", "auto", "{kind: cleanlab, max_flagged: auto}", "relabel"),
    ("cleanlab", "auto, criterion accuracy", "{kind: cleanlab, auto_budget: {criterion: accuracy}}", "relabel"),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--out", default="benchmarks/results/auto_budget.md")
    args = parser.parse_args()
    lines = ["| data | detector (action) | budget | flipped | flagged | precision | recall | accuracy before → after "
             "| detect s | chosen because |", "|---|---|---|---|---|---|---|---|---|---|"]
    for case in args.cases:
        path, overrides = CASES[case]
        for name, budget, detector, action in DETECTORS:
            start = time.perf_counter()
            config = load_config(path, overrides + [f"detector={detector}", f"action.kind={action}",
                                                    "tracking.enabled=false"])
            folder = f"{case}-{name}-{budget.replace(' ', '').replace(',', '-')}"
            report = run_pipeline(config, Path("/tmp/tda-bench-auto-budget") / folder, fresh=True)
            s, b, a = report["selection"], report["before"], report["after"]
            why = s["auto_budget"]["reason"] if "auto_budget" in s else ""
            lines.append(
                f"| {case} | {name} ({action}) | {budget} | {s['n_true']} | {s['n_flagged']} | {s['precision']:.3f} "
                f"| {s['recall']:.3f} | {b['accuracy']:.4f} → {a['accuracy']:.4f} | {report['timings_s']['detect']:.1f} "
                f"| {why} |")
            print(lines[-1], f"(total {time.perf_counter() - start:.0f} s, load {os.getloadavg()[0]:.1f})",
                  flush=True)
    text = "\n".join(lines)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
