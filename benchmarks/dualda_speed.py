"""DualDA explanation time per test point vs exact influence, as a ratio (digits, benchmark MLP and CNN weights).

    python benchmarks/dualda_speed.py [--model mlp --model cnn] [--n-test 100] [--repeats 3]

Two views, both over the 1,347 digits training rows and the first ``--n-test`` test points:
  * setup (once per model): DualDA = penultimate features + Crammer-Singer dual fit;
    exact influence = Hessian build + eigendecomposition (last layer, and all parameters when p <= 10^4).
  * explanation (per test point, setup done): DualDA = features of the query + one matrix product;
    exact influence = query gradient + inverse-Hessian solve + product with all training gradients
    (``InfluenceEngine.influence`` on a fitted engine, training gradients recomputed as the engine does).
Ratio = exact time / DualDA time (> 1 = DualDA faster). Timings are best of ``--repeats`` (one run where a run took over 30 s).
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
from benchmarks.common import MODELS, RESULTS, load_data, machine, write_json  # noqa: E402
from benchmarks.peers import best_of as best  # noqa: E402


def run(name: str, n_test: int, repeats: int) -> list[dict]:
    from tda_clean.influence.dualda import DualDA
    from tda_clean.influence import InfluenceEngine, InfluenceSpec, TrainingObjective
    from tda_clean.influence.objectives import Margin
    from tda_clean.config.influence import DualDASettings, ExactSettings, GradientSettings

    from benchmarks.ours_matching import factory_model

    model, _ = factory_model(name)
    Xtr, ytr, Xte, yte = load_data()
    Xq, yq = Xte[:n_test], yte[:n_test]
    l2 = MODELS[name]["train"]["l2"]
    rows = []
    dd, t_fit = best(lambda: DualDA.from_model(model, Xtr, ytr, DualDASettings(C=1.0), n_classes=10), repeats)
    _, t_explain = best(lambda: dd.attribute(dd.query_features(Xq), yq), repeats)
    rows.append({"model": name, "method": "dualda (C=1)", "setup_s": t_fit, "explain_s": t_explain,
                 "per_point_s": t_explain / n_test, "support_vectors": int(dd.support_.sum()),
                 "duality_gap": dd.duality_gap_})
    p_all = sum(p.numel() for p in model.parameters())
    for params in ["head"] + (["all"] if p_all <= 10_000 else []):
        def setup():
            eng = InfluenceEngine(model, (Xtr, ytr),
                                  InfluenceSpec(solver=ExactSettings(damping=0.1),
                                                gradients=GradientSettings(params=params)),
                                  TrainingObjective(l2))
            eng.solver  # noqa: B018 -- fit: Hessian + eigendecomposition
            return eng

        eng, t_setup = best(setup, repeats)
        _, t_ex = best(lambda: eng.influence(Margin(Xq, yq)), repeats)
        rows.append({"model": name, "method": f"exact influence ({params}, p={eng.space.p})", "setup_s": t_setup,
                     "explain_s": t_ex, "per_point_s": t_ex / n_test})
    base = rows[0]
    for r in rows[1:]:
        r["ratio_per_point"] = r["per_point_s"] / base["per_point_s"]
        r["ratio_with_setup"] = (r["setup_s"] + r["explain_s"]) / (base["setup_s"] + base["explain_s"])
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", choices=sorted(MODELS))
    ap.add_argument("--n-test", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.model or ["mlp", "cnn"]:
        rows += run(name, args.n_test, args.repeats)
    lines = ["| model | method | setup s | explain s (all queries) | per test point ms | exact/DualDA per point | exact/DualDA incl. setup |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['method']} | {r['setup_s']:.3f} | {r['explain_s']:.4f} | "
                     f"{1000 * r['per_point_s']:.3f} | {r.get('ratio_per_point', 1.0):,.0f}x | "
                     f"{r.get('ratio_with_setup', 1.0):,.1f}x |")
    text = "\n".join(lines)
    print(text)
    write_json(RESULTS / "dualda-speed.json", {"machine": machine(), "n_test": args.n_test, "rows": rows})
    (RESULTS / "dualda-speed.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
