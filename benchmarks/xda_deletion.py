"""XDA deletion test (issue 14, item 6): do the features XDA marks as relevant carry the relevance?

For each case a model is trained on data with 5% uniformly flipped labels; the 20 training rows with the highest
self-influence (exact, last layer, float64 = the review's default spec) are the flagged rows. Each row's relevance
is its total influence on the 3 validation rows it influences most (``tda_clean.influence.xda``, as the review's
``why`` column explains it). Features are set to the training mean (``--baseline zero``: to 0) in a given order, 21 steps from none to all;
the deletion AUC is the area under ``R(after deleting) / R(row)``. Ratio = mean AUC with an order / mean AUC with
random orders (seeds 0..4), reported as mean ± sd over the random seeds; lower is better, 1 = no better than
random; below 0 = deleting the top features drives the relevance past zero.

Orders: ``xda`` (integrated gradients, 16 steps, most positive first), ``ig1`` (one step: gradient at the
midpoint × (x − mean)), ``reverse`` (xda, least relevant first), ``noise`` (a random attribution: the control,
~1). Tables also at the column level (one-hot features deleted together, columns ranked by their summed share;
random = random column orders).

    python benchmarks/xda_deletion.py --json benchmarks/results/xda_deletion.json

Cases: ``digits-cnn`` (scikit-learn 8x8 digits, SmallCNN 8/16 channels + 32 hidden, Adam 20 epochs),
``digits-cnn-dualda`` (the same model; DualDA attributions on the model's predicted classes instead of influence,
rows flagged by DualDA self-influence) and ``adult-logistic`` (Adult, 10,000 rows, logistic regression, L-BFGS).
``--cases`` picks some.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

FRACTIONS = np.linspace(0, 1, 21)
SEEDS = range(5)
CASES = {
    "digits-cnn": {"data": {"kind": "digits"}, "model": {"kind": "cnn", "channels": [8, 16], "hidden": 32},
                   "train": {"optimizer": "adam", "l2": 1e-3, "epochs": 20, "lr": 1e-2, "batch_size": 128}},
    "digits-cnn-dualda": {"data": {"kind": "digits"}, "model": {"kind": "cnn", "channels": [8, 16], "hidden": 32},
                          "train": {"optimizer": "adam", "l2": 1e-3, "epochs": 20, "lr": 1e-2, "batch_size": 128}},
    "adult-logistic": {"data": {"kind": "adult", "max_rows": 10000}, "model": {"kind": "logistic"},
                       "train": {"optimizer": "lbfgs", "l2": 1e-4, "epochs": 50}},
}


def setup(name: str, rows: int, top_val: int, baseline: str = "mean"):
    """Train the case's model, flag ``rows`` rows by self-influence; relevances, rows, baseline, column groups."""
    from tda_clean.config import parse_config
    from tda_clean.data import load_bundle
    from tda_clean.influence import DualDA, DualDASettings, InfluenceEngine
    from tda_clean.influence.xda import top_query_dualda_relevances, top_query_relevances
    from tda_clean.models.factory import build_model
    from tda_clean.models.trainer import fit, training_objective
    from tda_clean.review import REVIEW_SPEC
    from tda_clean.review_why import feature_columns

    cfg = parse_config({"seed": 0, "tracking": {"enabled": False}, "scenario": {"kind": "uniform_flip", "rate": 0.05},
                        **CASES[name]})
    bundle = load_bundle(cfg)
    train = bundle.train
    model = build_model(cfg.model, train.feature_shape, train.n_classes, cfg.seed)
    fit(model, train.X, train.y, cfg.train, cfg.seed, X_val=bundle.val.X, y_val=bundle.val.y)
    model.eval()
    if name.endswith("-dualda"):  # DualDA attributions on the model's predicted classes, flagged by DualDA
        dd = DualDA.from_model(model, train.X, train.y, DualDASettings(), n_classes=train.n_classes)
        flagged = np.argsort(-dd.self_influence())[:rows]
        with torch.no_grad():
            predicted = model(torch.as_tensor(bundle.val.X, dtype=torch.float32)).argmax(1).numpy()
        relevances, _, _ = top_query_dualda_relevances(dd, flagged, dd.query_features(bundle.val.X), predicted, top_val)
    else:
        engine = InfluenceEngine(model, (train.X, train.y), REVIEW_SPEC, training_objective(cfg.train))
        flagged = np.argsort(-engine.self_influence())[:rows]
        relevances, _, _ = top_query_relevances(engine, train.X[flagged], train.y[flagged], bundle.val.X,
                                                bundle.val.y, top_val)
    X = np.asarray(train.X[flagged], dtype=np.float64)
    groups = feature_columns(train.feature_names, train.X) if train.X.ndim == 2 else None
    info = {"n_train": len(train), "n_val": len(bundle.val), "features": int(np.prod(train.feature_shape)),
            "flagged_corrupted": int(bundle.corrupted_mask[flagged].sum()) if bundle.corrupted_mask is not None else None}
    base = np.asarray(train.X, dtype=np.float64).mean(0) if baseline == "mean" else np.zeros(train.feature_shape)
    return relevances, X, base, groups, info


def auc(R, x, baseline, order) -> float:
    from tda_clean.influence.xda import deletion_auc, deletion_curve

    return deletion_auc(deletion_curve(R, x, baseline, order, FRACTIONS), FRACTIONS)


def column_auc(R, x, baseline, column_order, groups) -> float:
    """Deletion AUC when whole columns go, in ``column_order``; the x axis is the fraction of columns."""
    from tda_clean.influence.xda import deletion_auc, relevance_values

    names = np.asarray(groups)
    rows = [x.copy()]
    for c in column_order:
        row = rows[-1].copy()
        row[names == c] = baseline[names == c]
        rows.append(row)
    curve = relevance_values(R, np.stack(rows))
    return deletion_auc(curve, np.linspace(0, 1, len(rows)))


def run_case(name: str, rows: int, top_val: int, steps: int, baseline: str = "mean") -> dict:
    from tda_clean.influence.xda import completeness, integrated_gradients, relevance_values
    from tda_clean.review_why import column_shares

    baseline_kind, start = baseline, time.perf_counter()
    relevances, X, baseline, groups, info = setup(name, rows, top_val, baseline)
    setup_s = time.perf_counter() - start
    start = time.perf_counter()
    aucs: dict[str, list[float]] = {k: [] for k in ("xda", "ig1", "reverse", "noise")}
    rand: dict[int, list[float]] = {s: [] for s in SEEDS}
    col: dict[str, list[float]] = {"xda": []}
    col_rand: dict[int, list[float]] = {s: [] for s in SEEDS}
    gaps, floors = [], []
    for r, (R, x) in enumerate(zip(relevances, X)):
        e = integrated_gradients(R, x, baseline, steps)
        value, at_baseline = relevance_values(R, np.stack([x, baseline]))
        gaps.append(abs(completeness(R, x, baseline, e)) / abs(value - at_baseline))
        floors.append(at_baseline / value)
        e1 = integrated_gradients(R, x, baseline, 1)
        aucs["xda"].append(auc(R, x, baseline, np.argsort(-e.ravel())))
        aucs["ig1"].append(auc(R, x, baseline, np.argsort(-e1.ravel())))
        aucs["reverse"].append(auc(R, x, baseline, np.argsort(e.ravel())))
        aucs["noise"].append(auc(R, x, baseline, np.argsort(-np.random.default_rng(1000 + r).normal(size=x.size))))
        for s in SEEDS:
            rand[s].append(auc(R, x, baseline, np.random.default_rng(s).permutation(x.size)))
        if groups is not None:
            shares = column_shares(e, groups)
            col["xda"].append(column_auc(R, x, baseline, list(shares), groups))
            names = list(dict.fromkeys(groups))
            for s in SEEDS:
                col_rand[s].append(column_auc(R, x, baseline, list(np.random.default_rng(s).permutation(names)), groups))
    out = {"case": name, **info, "baseline": baseline_kind, "rows": rows, "top_val": top_val, "steps": steps,
           "completeness_gap_rel_max": float(max(gaps)), "baseline_share_median": float(np.median(floors)), "setup_s": round(setup_s, 1),
           "explain_s": round(time.perf_counter() - start, 1),
           "auc_random_mean": float(np.mean([np.mean(v) for v in rand.values()]))}
    for key, values in aucs.items():
        ratios = [np.mean(values) / np.mean(rand[s]) for s in SEEDS]
        out[f"auc_{key}"] = float(np.mean(values))
        out[f"ratio_{key}"] = [float(np.mean(ratios)), float(np.std(ratios))]
    if groups is not None:
        ratios = [np.mean(col["xda"]) / np.mean(col_rand[s]) for s in SEEDS]
        out["columns"] = len(set(groups))
        out["ratio_xda_columns"] = [float(np.mean(ratios)), float(np.std(ratios))]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--top-val", type=int, default=3)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--baseline", choices=("mean", "zero"), default="mean",
                        help="what a deleted feature is set to: the training mean (default) or 0")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               "load_average_start": os.getloadavg(), "cases": []}
    for name in args.cases:
        res = run_case(name, args.rows, args.top_val, args.steps, args.baseline)
        results["cases"].append(res)
        print(json.dumps(res), flush=True)
    results["load_average_end"] = os.getloadavg()
    print("\n| case | xda | ig1 | reverse | noise (control) | xda, whole columns |\n|---|---|---|---|---|---|")
    for res in results["cases"]:
        cells = [f"{res[f'ratio_{k}'][0]:.3f} ± {res[f'ratio_{k}'][1]:.3f}" for k in ("xda", "ig1", "reverse", "noise")]
        colw = res.get("ratio_xda_columns")
        print(f"| {res['case']} | " + " | ".join(cells) + f" | {'–' if colw is None else f'{colw[0]:.3f} ± {colw[1]:.3f}'} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
