"""Linear datamodeling score (LDS, docs/methods.md) of tda-clean's attribution methods on digits, MLP and small CNN.

Ground truth (the expensive part, cached under ``benchmarks/.cache/``, resumable):
  * train the benchmark model on the full digits training split (1,347 rows) -> weights + TracIn checkpoints
    (``.cache/<model>-<key>.pt``, also read by the peer environment);
  * draw m = 100 random subsets of size floor(0.5 n) (seed ``--subset-seed``), retrain the model on each with the
    same hyper-parameters (same initialisation seed as the full model; mini-batch order seeded by the subset
    index), and record each retrained model's true-class margin ``logit_y - logsumexp_{k!=y} logit_k`` on all 450
    test points (``.cache/lds-<model>-<key>.npz``).

Score: for each attribution method, ``a[j, i]`` = attribution of training row i to test point j's margin in the
"inclusion" convention (higher = having the row in the training set raises the margin). tda-clean's influence
scores use the removal convention (positive = removing the row increases f), so ``a = -influence``; DualDA
attributions are already contributions to the class logit. Per test point j, Spearman across subsets between
``sum_{i in S_k} a[j, i]`` and the retrained margin; averaged over the first ``--n-test`` test points.

Usage:
  python benchmarks/lds.py --model mlp --ground-truth-only      # retrain + cache (resumable)
  python benchmarks/lds.py --model mlp --model cnn              # ground truth (cached) + all methods
Methods missing from the engine are reported as "not available" (never faked).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import (  # noqa: E402
    CACHE, MODELS, RESULTS, load_data, machine, margins, peak_rss_mb, settings_key, weights_path, write_json,
)

M_SUBSETS = 100
ALPHA = 0.5


# ------------------------------------------------------------------------------------------- training
def _configs(name: str):
    from tda_clean.config import CNNConfig, MLPConfig, TrainConfig

    spec = MODELS[name]
    m = dict(spec["model"])
    kind = m.pop("kind")
    mc = MLPConfig(hidden=tuple(m["hidden"])) if kind == "mlp" else CNNConfig(channels=tuple(m["channels"]), hidden=m["hidden"])
    return mc, TrainConfig(**spec["train"])


def train_model(name: str, X: np.ndarray, y: np.ndarray, fit_seed: int, record_every: int | None = None):
    """Factory model trained with the project's trainer; returns (model, checkpoints [(epoch, lr, state)])."""
    from tda_clean.models.factory import build_model
    from tda_clean.models.trainer import fit

    mc, tc = _configs(name)
    model = build_model(mc, (8, 8), 10, seed=MODELS[name]["init_seed"])
    ckpts: list = []

    def on_epoch(epoch, mod):
        if record_every and (epoch + 1) % record_every == 0:
            ckpts.append((epoch, tc.lr, {k: v.detach().clone() for k, v in mod.state_dict().items()}))

    fit(model, X, y, tc, seed=fit_seed, on_epoch=on_epoch if record_every else None, progress=False)
    model.eval()
    return model, ckpts


@torch.no_grad()
def test_margins(model, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    logits = model(torch.as_tensor(X))
    return margins(logits, torch.as_tensor(y)).double().numpy()


def full_model(name: str, Xtr, ytr, Xte, yte):
    """Train (or load) the full-data model; saves weights + TracIn checkpoints for both environments."""
    path = weights_path(name)
    if path.is_file():
        return torch.load(path, weights_only=False)
    t = time.perf_counter()
    model, ckpts = train_model(name, Xtr, ytr, fit_seed=0, record_every=MODELS[name]["tracin_every"])
    seconds = time.perf_counter() - t
    acc = float((model(torch.as_tensor(Xte)).argmax(1).numpy() == yte).mean())
    payload = {"state_dict": model.state_dict(), "checkpoints": ckpts, "test_accuracy": acc, "train_seconds": seconds,
               "spec": MODELS[name]}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    print(f"[{name}] full model: test accuracy {acc:.3f}, trained in {seconds:.1f} s -> {path}", flush=True)
    return payload


def ground_truth(name: str, m: int = M_SUBSETS, alpha: float = ALPHA, subset_seed: int = 0) -> dict:
    """Masks (m, n) bool and retrained test margins (m, n_test); cached and resumable."""
    Xtr, ytr, Xte, yte = load_data()
    full_model(name, Xtr, ytr, Xte, yte)
    n = len(Xtr)
    key = settings_key(name, m=m, alpha=alpha, subset_seed=subset_seed, output="margin")
    path = CACHE / f"lds-{name}-{key}.npz"
    rng = np.random.default_rng(subset_seed)
    masks = np.zeros((m, n), dtype=bool)
    for k in range(m):
        masks[k, rng.choice(n, size=int(np.floor(alpha * n)), replace=False)] = True
    outputs = np.full((m, len(Xte)), np.nan)
    seconds = np.zeros(m)
    if path.is_file():
        old = np.load(path)
        assert (old["masks"] == masks).all(), f"{path}: subsets differ from the ones drawn now"
        outputs, seconds = old["outputs"], old["seconds"]
    todo = [k for k in range(m) if np.isnan(outputs[k]).any()]
    for count, k in enumerate(todo):
        t = time.perf_counter()
        model, _ = train_model(name, Xtr[masks[k]], ytr[masks[k]], fit_seed=1 + k)
        outputs[k] = test_margins(model, Xte, yte)
        seconds[k] = time.perf_counter() - t
        if count % 5 == 4 or k == todo[-1]:
            np.savez(path, masks=masks, outputs=outputs, seconds=seconds)
            print(f"[{name}] retrained {k + 1}/{m} ({seconds[k]:.1f} s each)", flush=True)
    return {"masks": masks, "outputs": outputs, "seconds": seconds, "path": str(path), "key": key}


# ----------------------------------------------------------------------------------------------- LDS
def spearman_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each column of ``a`` with the same column of ``b`` (both (m, q))."""
    from scipy.stats import rankdata

    ra, rb = rankdata(a, axis=0), rankdata(b, axis=0)
    ra, rb = ra - ra.mean(0), rb - rb.mean(0)
    den = np.sqrt((ra * ra).sum(0) * (rb * rb).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(0) / den, np.nan)


def lds(attributions: np.ndarray, masks: np.ndarray, outputs: np.ndarray) -> tuple[float, float]:
    """(mean, standard error) over test points of the Spearman between summed attributions and outputs.

    attributions (q, n) inclusion convention; masks (m, n); outputs (m, q) -- the first q test points.
    """
    pred = masks.astype(np.float64) @ attributions.T  # (m, q)
    rho = spearman_columns(pred, outputs[:, : attributions.shape[0]])
    rho = rho[np.isfinite(rho)]
    return float(rho.mean()), float(rho.std(ddof=1) / np.sqrt(len(rho)))


# ------------------------------------------------------------------------------------------- methods
def our_methods(name: str, model, payload: dict, Xtr, ytr, Xq, yq) -> dict:
    """name -> callable returning (q, n) attributions in the inclusion convention (see module doc)."""
    l2 = MODELS[name]["train"]["l2"]
    methods = {}
    try:
        from tda_clean.influence.estimators import compute_influence, projected_influence
        from tda_clean.influence.objectives import Margin
        from tda_clean.config.influence import CGSettings, ExactSettings, GradientSettings, KFACSettings, LissaSettings
        from tda_clean.influence import InfluenceSpec, TrainingObjective
    except Exception as exc:  # engine not importable yet
        print(f"engine not importable: {exc!r}", flush=True)
        return {}
    objective = Margin(Xq, yq)
    train = (Xtr, ytr)
    head, every = GradientSettings(params="head"), GradientSettings(params="all")
    state: dict = {}

    from benchmarks import compare_settings as CS

    def exact_head():
        r = compute_influence(model, train, objective,
                              InfluenceSpec(solver=ExactSettings(damping=CS.DAMPING), gradients=head),
                              TrainingObjective(l2))
        return -r.scores, r.info

    def exact_all():
        r = compute_influence(model, train, objective,
                              InfluenceSpec(solver=ExactSettings(damping=CS.DAMPING), gradients=every),
                              TrainingObjective(l2))
        return -r.scores, r.info

    def damping_all():
        return CS.DAMPING  # fixed, as in the peer comparison (auto damping left H + dI indefinite for CG)

    def cg():
        r = compute_influence(model, train, objective,
                              InfluenceSpec(solver=CGSettings(damping=damping_all(), max_iter=CS.CG_ITERS, tol=1e-30),
                                            gradients=every),
                              TrainingObjective(l2))
        return -r.scores, r.info

    def lissa():
        s = LissaSettings(damping=damping_all(), depth=CS.LISSA["depth"], batch_size=CS.LISSA["batch_size"],
                          scale=CS.LISSA["scale"], repeats=1, tol=0.0, seed=0)
        r = compute_influence(model, train, objective, InfluenceSpec(solver=s, gradients=every), TrainingObjective(l2))
        return -r.scores, r.info

    def ekfac():
        r = compute_influence(model, train, objective,
                              InfluenceSpec(solver=KFACSettings(kind="ekfac", damping=damping_all()), gradients=every),
                              TrainingObjective(l2))
        return -r.scores, r.info

    def projected(method="dense"):  # the recorded row: the dense (p, k) projection (the default is now factored)
        r = projected_influence(model, train, objective, l2=l2, k=1024, seed=0, damping=CS.DAMPING, gradients=every,
                                method=method)
        return -r.scores, r.info

    methods.update({"exact (last layer)": exact_head, "exact (all params)": exact_all, "cg (all params)": cg,
                    "lissa (all params, stochastic)": lissa, "ekfac (all params)": ekfac,
                    "projected k=1024 (all params)": projected,
                    "projected factored k=1024 (all params)": lambda: projected("factored")})

    try:
        from tda_clean.influence.tracin import tracin_cp

        def tracin():
            ckpts = [(e, s) for e, _, s in payload["checkpoints"]]
            lrs = [lr for _, lr, _ in payload["checkpoints"]]
            r = tracin_cp(model, ckpts, train, objective, lr=lrs, gradients=every)
            return -r.scores, r.info

        methods["tracin-cp (all params)"] = tracin
    except Exception as exc:
        methods["tracin-cp (all params)"] = exc

    try:
        from tda_clean.influence.dualda import DualDA
        from tda_clean.config.influence import DualDASettings

        def dualda():
            dd = DualDA.from_model(model, Xtr, ytr, DualDASettings(C=1.0), n_classes=10)
            a = dd.attribute(dd.query_features(Xq), yq)
            return a, {"support_vectors": int(dd.support_.sum()), "duality_gap": dd.duality_gap_, "C": 1.0}

        methods["dualda (C=1)"] = dualda
    except Exception as exc:
        methods["dualda (C=1)"] = exc
    return methods


def run_model(name: str, n_test: int, only: list[str] | None) -> list[dict]:
    gt = ground_truth(name)
    Xtr, ytr, Xte, yte = load_data()
    from tda_clean.models.factory import build_model

    mc, _ = _configs(name)
    payload = full_model(name, Xtr, ytr, Xte, yte)
    model = build_model(mc, (8, 8), 10, seed=0)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    Xq, yq = Xte[:n_test], yte[:n_test]
    outputs = gt["outputs"]
    # Sanity: how reproducible is the target? (correlation of full-model margins with mean retrained margins)
    rows = []
    for method, fn in our_methods(name, model, payload, Xtr, ytr, Xq, yq).items():
        if only and not any(o in method for o in only):
            continue
        row = {"model": name, "method": method, "n_test": n_test, "m": len(outputs)}
        if isinstance(fn, Exception):
            row.update(status="not available", error=repr(fn))
        else:
            t = time.perf_counter()
            try:
                attr, info = fn()
                row.update(status="ok", seconds=time.perf_counter() - t, info=info)
                row["lds"], row["lds_se"] = lds(np.asarray(attr), gt["masks"], outputs)
            except Exception as exc:  # noqa: BLE001 -- report, never fake
                row.update(status="failed", seconds=time.perf_counter() - t, error=f"{type(exc).__name__}: {exc}")
                traceback.print_exc()
        print(json.dumps({k: v for k, v in row.items() if k != "info"}, default=str), flush=True)
        rows.append(row)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", choices=sorted(MODELS), help="repeatable; default: mlp and cnn")
    ap.add_argument("--n-test", type=int, default=100, help="test points scored (default 100)")
    ap.add_argument("--ground-truth-only", action="store_true")
    ap.add_argument("--only", action="append", help="run only methods whose name contains this (repeatable)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.model or ["mlp", "cnn"]
    if args.ground_truth_only:
        for name in names:
            gt = ground_truth(name)
            print(f"[{name}] ground truth: {gt['path']}, {gt['seconds'].sum():.0f} s of retraining "
                  f"({gt['seconds'].mean():.1f} s each)")
        return
    rows = []
    for name in names:
        rows += run_model(name, args.n_test, args.only)
    out = RESULTS / f"lds-{'-'.join(names)}{'-partial' if args.only else ''}.json"
    write_json(out, {"machine": machine(), "peak_rss_mb": peak_rss_mb(), "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
