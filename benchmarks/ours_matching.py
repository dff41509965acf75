"""tda-clean's side of the peer comparison (main environment): the methods peers.py runs, same settings.

    python benchmarks/ours_matching.py --model mlp --model cnn

Writes ``results/ours-<model>.npz`` (score matrices (q, n), removal convention: positive = removing the row
increases the margin) and ``results/ours-<model>.json`` (best-of-REPEATS wall times). Settings in
``compare_settings.py``. Each timing covers the whole computation from the trained model to the (q, n) matrix
(per-sample gradients, curvature fit, solves, scores); model loading is excluded, as in peers.py.
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import compare_settings as S  # noqa: E402
from benchmarks.common import MODELS, RESULTS, load_data, load_trained, machine, peak_rss_mb  # noqa: E402
from benchmarks.peers import best_of  # noqa: E402


def factory_model(name: str):
    """The tda-clean factory model with the benchmark weights (checks the peer copy's names match)."""
    from tda_clean.models.factory import build_model

    from benchmarks.lds import _configs

    _, payload = load_trained(name)
    model = build_model(_configs(name)[0], (8, 8), 10, seed=0)
    model.load_state_dict(payload["state_dict"])  # strict: parameter names identical to the peer copy
    model.eval()
    return model, payload


def our_methods(name, model, payload, Xtr, ytr, Xq, yq) -> dict:
    from tda_clean.influence.estimators import compute_influence
    from tda_clean.influence.objectives import Margin
    from tda_clean.config.influence import CGSettings, ExactSettings, GradientSettings, KFACSettings, LissaSettings
    from tda_clean.influence import InfluenceSpec, TrainingObjective

    l2 = MODELS[name]["train"]["l2"]
    train = (Xtr, ytr)

    def infl(solver, params):
        return lambda: compute_influence(model, train, Margin(Xq, yq),
                                         InfluenceSpec(solver=solver, gradients=GradientSettings(params=params)),
                                         TrainingObjective(l2)).scores

    methods = {
        "exact (last layer)": infl(ExactSettings(damping=S.DAMPING), "head"),
        "cg (all params)": infl(CGSettings(damping=S.DAMPING, max_iter=S.CG_ITERS, tol=1e-30), "all"),
        "lissa (all params)": infl(LissaSettings(damping=S.DAMPING, scale=S.LISSA["scale"], depth=S.LISSA["depth"],
                                                 batch_size=S.LISSA["batch_size"], repeats=1, tol=0.0), "all"),
        "ekfac (linear layers, empirical)": infl(KFACSettings(kind="ekfac", damping=S.DAMPING, fisher="empirical"),
                                                 tuple(S.LINEAR_MODULES[name])),
        "ekfac (all layers, sampled)": infl(KFACSettings(kind="ekfac", damping=S.DAMPING, fisher="sampled"),
                                            tuple(S.ALL_MODULES[name])),
    }
    if name == "mlp":
        methods["exact (all params)"] = infl(ExactSettings(damping=S.DAMPING), "all")
    try:
        from tda_clean.influence.tracin import tracin_cp

        def tracin():
            ckpts = [s for _, _, s in payload["checkpoints"]]
            lrs = [lr for _, lr, _ in payload["checkpoints"]]
            return tracin_cp(model, ckpts, train, Margin(Xq, yq), lr=lrs,
                             gradients=GradientSettings(params="all")).scores

        methods["tracin-cp (all params)"] = tracin
    except ImportError as exc:
        methods["tracin-cp (all params)"] = exc
    return methods


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", choices=sorted(MODELS))
    ap.add_argument("--repeats", type=int, default=S.REPEATS)
    ap.add_argument("--only", action="append")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    Xtr, ytr, Xte, yte = load_data()
    Xq, yq = Xte[: S.N_QUERY], yte[: S.N_QUERY]
    for name in args.model or ["mlp", "cnn"]:
        model, payload = factory_model(name)
        rows, scores = [], {}
        for method, fn in our_methods(name, model, payload, Xtr, ytr, Xq, yq).items():
            if args.only and not any(o in method for o in args.only):
                continue
            row = {"library": "tda-clean", "method": method}
            if isinstance(fn, Exception):
                row.update(status="not available", error=repr(fn))
            else:
                try:
                    out, seconds = best_of(fn, args.repeats)
                    scores[method] = np.asarray(out, dtype=np.float64)
                    row.update(status="ok", seconds=seconds, shape=list(scores[method].shape))
                except Exception as exc:  # noqa: BLE001
                    row.update(status="failed", error=f"{type(exc).__name__}: {exc}")
                    traceback.print_exc()
            print(json.dumps(row), flush=True)
            rows.append(row)
        RESULTS.mkdir(parents=True, exist_ok=True)
        suffix = "-partial" if args.only else ""
        np.savez(RESULTS / f"ours-{name}{suffix}.npz", **scores)
        (RESULTS / f"ours-{name}{suffix}.json").write_text(json.dumps(
            {"machine": machine(), "peak_rss_mb": peak_rss_mb(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
