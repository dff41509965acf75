"""Group-influence fidelity on Adult: predicted vs actual (retrained) change of an objective when a group is removed.

    python benchmarks/group_fidelity.py                 # logistic regression, exact solver (~2 min, 1 thread)
    python benchmarks/group_fidelity.py --model mlp     # tanh MLP on a 3,000-row subset, EK-FAC solver
    python benchmarks/group_fidelity.py --groups 5 --sizes 0.01 0.1   # quick look

Groups (issue 4): ``random``; ``cell`` = a random subset of one sex x race x label cell; ``feature`` = a random
subset of the rows sharing one one-hot feature value and one label (any categorical column, Koh et al. 2019);
``kmeans`` = the rows nearest to a k-means centre in (standardised) feature space; ``gradkmeans`` = the same in
gradient space (per-row training-loss gradients at theta*).
Sizes 0.5%, 1%, 5%, 10%, 20%, 30% of the training rows, ``--groups`` (20) per size and kind.
Objectives on the validation split: ``val_loss`` (mean cross-entropy) and ``loss_gap`` (mean loss of the worst
sex x race group minus the best one, groups fixed at the trained model).
Actual change: retrain without the group (logistic regression: full-batch Newton in float64 to gradient norm
1e-10, warm-started at theta*, i.e. the exact optimum; MLP: full-batch L-BFGS warm-started at theta*).
Predicted: first and second order group influence (``tda_clean.influence.group``), damping 0 for the logistic
regression (exact), ``damping=auto`` + an approximate solver for the MLP (``--solver``, default EK-FAC: batched CG
over the 360 group vectors needs one 360-vector Hessian-vector product per iteration, ~30 s on one CPU thread
for p = 1,714 and 3,000 rows, times up to 200 iterations per solve and four solves).
Output: a markdown table (Pearson / Spearman, first vs second order, per kind and size) and
``benchmarks/results/group_fidelity-<model>.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SIZES = (0.005, 0.01, 0.05, 0.1, 0.2, 0.3)
KINDS = ("random", "cell", "feature", "kmeans", "gradkmeans")
DEFAULT_KINDS = KINDS
L2 = 1e-3


# ------------------------------------------------------------------------------------------ data
def adult(seed: int = 0, max_rows: int | None = None):
    """The Adult bundle (race binary, groups sex x race) exactly as ``tda-clean run`` builds it."""
    from tda_clean.config import parse_config
    from tda_clean.data import load_bundle

    data = {"kind": "adult", "race": "binary", **({"max_rows": max_rows} if max_rows else {})}
    return load_bundle(parse_config({"seed": seed, "data": data, "tracking": {"enabled": False}}))


# ---------------------------------------------------------------------------------- exact LR fit
def newton_lr(X: np.ndarray, y: np.ndarray, l2: float, n_classes: int = 2, weight: np.ndarray | None = None,
              theta0: torch.Tensor | None = None, tol: float = 1e-10, max_iter: int = 50) -> torch.Tensor:
    """Optimum of ``sum_i w_i CE_i / sum_i w_i + l2/2 ||theta||^2`` for multinomial logistic regression, by
    damped Newton in float64. Returns theta in ``LogisticRegression``'s flat order (head.weight, head.bias)."""
    Xt = torch.cat([torch.as_tensor(X, dtype=torch.float64), torch.ones(len(X), 1, dtype=torch.float64)], 1)
    n, d1 = Xt.shape
    C = n_classes
    Y = torch.nn.functional.one_hot(torch.as_tensor(y), C).double()
    w = torch.ones(n, dtype=torch.float64) if weight is None else torch.as_tensor(weight, dtype=torch.float64)
    w = w / w.sum()
    T = torch.zeros(C, d1, dtype=torch.float64) if theta0 is None else _from_flat(theta0, C, d1)

    def loss_of(T):
        Z = Xt @ T.T
        return float((w * (torch.logsumexp(Z, 1) - (Z * Y).sum(1))).sum() + 0.5 * l2 * (T * T).sum())

    for _ in range(max_iter):
        P = torch.softmax(Xt @ T.T, 1)
        Gm = (w[:, None] * (P - Y)).T @ Xt + l2 * T  # (C, d1)
        if float(Gm.norm()) < tol:
            break
        H = torch.zeros(C, d1, C, d1, dtype=torch.float64)
        if C == 2:  # every block is +-K with K = Xt^T diag(w p0 p1) Xt: one product instead of three
            K = (Xt * (w * P[:, 0] * P[:, 1])[:, None]).T @ Xt
            H[0, :, 0, :], H[1, :, 1, :], H[0, :, 1, :], H[1, :, 0, :] = K, K, -K, -K
        else:
            for a in range(C):
                for b in range(a, C):
                    coef = w * P[:, a] * ((1.0 if a == b else 0.0) - P[:, b])
                    blk = (Xt * coef[:, None]).T @ Xt
                    H[a, :, b, :] = blk
                    H[b, :, a, :] = blk.T
        H = H.reshape(C * d1, C * d1) + l2 * torch.eye(C * d1, dtype=torch.float64)
        step = torch.linalg.solve(H, Gm.reshape(-1)).reshape(C, d1)
        f0, t = loss_of(T), 1.0
        while loss_of(T - t * step) > f0 - 1e-4 * t * float((Gm * step).sum()) and t > 1e-8:
            t *= 0.5
        T = T - t * step
    return torch.cat([T[:, :-1].reshape(-1), T[:, -1]])


def _from_flat(theta: torch.Tensor, C: int, d1: int) -> torch.Tensor:
    W = theta[: C * (d1 - 1)].reshape(C, d1 - 1)
    return torch.cat([W, theta[C * (d1 - 1):].reshape(C, 1)], 1).double()


def lr_model(theta: torch.Tensor, n_features: int, n_classes: int = 2):
    from tda_clean.models.factory import LogisticRegression

    model = LogisticRegression(n_features, n_classes).double()
    with torch.no_grad():
        model.head.weight.copy_(theta[: n_classes * n_features].reshape(n_classes, n_features))
        model.head.bias.copy_(theta[n_classes * n_features:])
    return model.eval()


# ------------------------------------------------------------------------------------ objectives
def objectives(bundle, model):
    """``{"val_loss": MeanLoss, "loss_gap": GroupLossDifference(worst, best)}`` on the validation split."""
    from tda_clean.influence import GroupLossDifference, MeanLoss, WorstGroupLoss

    Xv, yv, keys = bundle.val.X.astype(np.float64), bundle.val.y, bundle.val.group_keys()
    probe = WorstGroupLoss(Xv, yv, keys)
    with torch.no_grad():
        losses = {k: float(v) for k, v in probe._group_losses(model).items()}
    worst, best = max(losses, key=losses.get), min(losses, key=losses.get)
    return {"val_loss": MeanLoss(Xv, yv), "loss_gap": GroupLossDifference(Xv, yv, keys, worst, best)}


def make_groups(bundle, G: np.ndarray, sizes, count: int, seed: int, kinds=KINDS) -> list:
    from tda_clean.groups import cell_groups, cluster_groups, feature_value_groups, group_frame, random_groups

    n = len(bundle.train)
    frame = group_frame(bundle.train)
    out = []
    for si, size in enumerate(sizes):
        s = seed + 1000 * si
        if "random" in kinds:
            out += [(size, g) for g in random_groups(n, size, count, s)]
        if "cell" in kinds:
            out += [(size, g) for g in cell_groups(frame, ["sex", "race", "label"], size, count, s)]
        if "feature" in kinds:
            out += [(size, g) for g in feature_value_groups(bundle.train.X, bundle.train.feature_names,
                                                            bundle.train.y, size, count, s)]
        if "kmeans" in kinds:
            out += [(size, g) for g in cluster_groups(bundle.train.X, size, count, s, n_clusters=count, kind="kmeans")]
        if "gradkmeans" in kinds:
            out += [(size, g) for g in cluster_groups(G, size, count, s, n_clusters=count, kind="gradkmeans")]
    return out


def corr(a, b) -> tuple[float, float]:
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan"), float("nan")
    return float(pearsonr(a, b)[0]), float(spearmanr(a, b)[0])


# ------------------------------------------------------------------------------------------- main
def run(model_kind: str, sizes, count: int, seed: int, max_rows: int | None, kinds=KINDS,
        solver: str = "ekfac", activation: str = "tanh") -> dict:
    from tda_clean.influence import GradientSettings, InfluenceEngine, InfluenceSpec, TrainingObjective
    from tda_clean.influence.group import GroupInfluence
    from tda_clean.models.trainer import fit_to_optimum, training_loss

    torch.set_num_threads(1)
    bundle = adult(seed, max_rows)
    X, y = bundle.train.X.astype(np.float64), bundle.train.y
    d = X.shape[1]
    t0 = time.perf_counter()
    if model_kind == "logistic":
        theta = newton_lr(X, y, L2)
        model = lr_model(theta, d)
        engine = InfluenceEngine(model, (X, y),
                                 InfluenceSpec(solver={"kind": "exact", "damping": 0.0}), TrainingObjective(L2))
    else:
        from tda_clean.models.factory import MLP

        torch.manual_seed(seed)
        net = MLP(d, 2, (16,)).double()
        if activation == "tanh":  # smooth: L-BFGS reaches a stationary point (ReLU stalls at gradient norm ~1e-2)
            net.body = torch.nn.Sequential(*[torch.nn.Tanh() if isinstance(m, torch.nn.ReLU) else m for m in net.body])
        model = fit_to_optimum(net, X, y, L2, max_iter=2000, history_size=50)
        engine = InfluenceEngine(model, (X, y),
                                 InfluenceSpec(solver={"kind": solver, "damping": "auto"},
                                               gradients=GradientSettings(params="all")),
                                 TrainingObjective(L2))
    fit_s = time.perf_counter() - t0
    gi = GroupInfluence(engine)
    objs = objectives(bundle, model)
    base = {k: float(o.values(model)[0]) for k, o in objs.items()}
    G = gi.row_gradients().cpu().numpy()
    groups = make_groups(bundle, G, sizes, count, seed, kinds)
    t0 = time.perf_counter()
    D2 = gi.parameter_change([g for _, g in groups], order=2)  # shared by the objectives
    pred = {k: gi.objective_change([g for _, g in groups], o, dtheta2=D2) for k, o in objs.items()}
    print(f"  predicted {len(groups)} groups in {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    predict_s = time.perf_counter() - t0
    actual = {k: [] for k in objs}
    t0 = time.perf_counter()
    for j, (size, g) in enumerate(groups):
        keep = np.setdiff1d(np.arange(len(y)), g.positions)
        if model_kind == "logistic":
            m1 = lr_model(newton_lr(X[keep], y[keep], L2, theta0=theta, tol=1e-9), d)
        else:
            import copy

            m1 = fit_to_optimum(copy.deepcopy(model).train(), X[keep], y[keep], L2, history_size=50)
        for k, o in objs.items():
            actual[k].append(float(o.values(m1)[0]) - base[k])
        if j % 40 == 0:
            print(f"  retrained {j + 1}/{len(groups)} ({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
    retrain_s = time.perf_counter() - t0
    rows = []
    variants = {"1": lambda k: pred[k].first[:, 0], "2lin": lambda k: pred[k].second_linear[:, 0],
                "2": lambda k: pred[k].second[:, 0]}
    for k in objs:
        act = np.array(actual[k])
        for kind in kinds:
            for size in list(sizes) + ["all"]:
                sel = [i for i, (s, g) in enumerate(groups) if g.kind == kind and (size == "all" or s == size)]
                if not sel:
                    continue
                row = {"objective": k, "kind": kind, "size": size, "n_groups": len(sel),
                       "mean_actual": float(act[sel].mean()), "sd_actual": float(act[sel].std())}
                for v, get in variants.items():
                    pv = get(k)[sel]
                    row[f"pearson_{v}"], row[f"spearman_{v}"] = corr(pv, act[sel])
                    row[f"median_ratio_{v}"] = float(np.nanmedian(pv / np.where(act[sel] == 0, np.nan, act[sel])))
                    row[f"mae_{v}"] = float(np.abs(pv - act[sel]).mean())
                rows.append(row)
    if model_kind != "logistic":
        Xt, yt = torch.as_tensor(X), torch.as_tensor(y)
        model.zero_grad()
        training_loss(model, Xt, yt, L2).backward()
        grad_norm = float(torch.cat([q.grad.reshape(-1) for q in model.parameters()]).norm())
        model.zero_grad()
    else:
        grad_norm = float("nan")
    return {"model": model_kind, "activation": activation if model_kind != "logistic" else None,
            "grad_norm_at_fit": grad_norm, "n_train": len(y), "p": engine.space.p, "sizes": list(sizes), "groups_per": count,
            "seed": seed, "l2": L2, "solver": engine.spec.solver.kind, "damping": float(engine.solver.damping_),
            "timings_s": {"fit": fit_s, "predict_all_groups": predict_s, "retrain_all_groups": retrain_s},
            "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                       f"{torch.get_num_threads()} threads",
            "rows": rows,
            "raw": {k: {"first": pred[k].first[:, 0].tolist(), "second": pred[k].second[:, 0].tolist(),
                        "second_linear": pred[k].second_linear[:, 0].tolist(),
                        "actual": actual[k], "size": [s for s, _ in groups], "kind": [g.kind for _, g in groups]}
                    for k in objs}}


def table(result: dict) -> str:
    lines = ["| objective | kind | size | groups | Pearson 1st | Pearson 2nd (Basu) | Pearson 2nd (+f curv.) | "
             "Spearman 1st | Spearman 2nd (Basu) | Spearman 2nd (+f curv.) | median pred/actual 1st | 2nd (+f curv.) | "
             "mean abs. error 1st | 2nd (+f curv.) | actual mean ± sd |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    nan = float("nan")
    for r in result["rows"]:
        size = r["size"] if r["size"] == "all" else f"{100 * r['size']:g}%"
        lines.append(f"| {r['objective']} | {r['kind']} | {size} | {r['n_groups']} | {r['pearson_1']:.3f} | "
                     f"{r['pearson_2lin']:.3f} | {r['pearson_2']:.3f} | {r['spearman_1']:.3f} | "
                     f"{r['spearman_2lin']:.3f} | {r['spearman_2']:.3f} | {r['median_ratio_1']:.2f} | "
                     f"{r['median_ratio_2']:.2f} | {r.get('mae_1', nan):.2g} | {r.get('mae_2', nan):.2g} | "
                     f"{r.get('mean_actual', nan):.2g} ± {r.get('sd_actual', nan):.2g} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("logistic", "mlp"), default="logistic")
    ap.add_argument("--groups", type=int, default=20)
    ap.add_argument("--sizes", type=float, nargs="+", default=list(SIZES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kinds", nargs="+", choices=KINDS, default=list(DEFAULT_KINDS))
    ap.add_argument("--solver", choices=("ekfac", "kfac", "cg", "lissa", "exact"), default="ekfac",
                    help="MLP curvature solver (the logistic regression always uses exact, damping 0)")
    ap.add_argument("--activation", choices=("tanh", "relu"), default="tanh",
                    help="MLP hidden activation (tanh: smooth, the fit reaches a stationary point)")
    ap.add_argument("--max-rows", type=int, default=None,
                    help="subsample Adult before splitting (MLP default: 5000 rows -> 3,000 training rows)")
    args = ap.parse_args()
    max_rows = args.max_rows or (5000 if args.model == "mlp" else None)
    result = run(args.model, tuple(args.sizes), args.groups, args.seed, max_rows, tuple(args.kinds), args.solver,
                 args.activation)
    RESULTS.mkdir(exist_ok=True)
    tag = f"-{args.activation}" if args.model == "mlp" else ""
    (RESULTS / f"group_fidelity-{args.model}{tag}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("rows", "raw")}, indent=1))
    print(table(result))


if __name__ == "__main__":
    main()
