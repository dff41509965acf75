"""Join ours-<model> and peers-<model> results into one table: agreement (Pearson of the (q, n) score matrices),
wall time and time ratio (peer / ours; > 1 = tda-clean faster), and LDS of both score matrices against the
cached retraining ground truth of lds.py (first N_QUERY test points; "n/a" while the ground truth is incomplete).

    python benchmarks/compare.py --model mlp --model cnn      # writes results/influence-peers.md
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import compare_settings as S  # noqa: E402
from benchmarks.common import CACHE, RESULTS, pearson, settings_key  # noqa: E402

# our method -> peer labels ("library: method") computing the same quantity
PAIRS = {
    "exact (last layer)": ["dattri: exact (last layer)"],
    "exact (all params)": ["dattri: exact (all params)"],
    "cg (all params)": ["dattri: cg (all params)"],
    "lissa (all params)": ["dattri: lissa (all params)"],
    "ekfac (linear layers, empirical)": ["dattri: ekfac (linear layers, empirical)"],
    "ekfac (all layers, sampled)": ["kronfluence: ekfac (all layers, sampled)"],
    "tracin-cp (all params)": ["captum: tracin-cp (all params)", "dattri: tracin-cp (dattri default: 512-dim projection)"],
}


def ground_truth(name):
    from benchmarks.lds import ALPHA, M_SUBSETS

    key = settings_key(name, m=M_SUBSETS, alpha=ALPHA, subset_seed=0, output="margin")
    path = CACHE / f"lds-{name}-{key}.npz"
    if not path.is_file():
        return None
    gt = np.load(path)
    if np.isnan(gt["outputs"]).any():
        return None
    return gt


def lds_of(scores, gt):
    from benchmarks.lds import lds

    if gt is None or scores is None:
        return None
    return lds(-scores, gt["masks"], gt["outputs"])[0]  # removal influence -> inclusion attribution


def load(prefix, name):
    js = RESULTS / f"{prefix}-{name}.json"
    if not js.is_file():
        return {}, {}
    rows = {(f"{r['library']}: {r['method']}" if prefix == "peers" else r["method"]): r
            for r in json.loads(js.read_text())["rows"]}
    npz = np.load(RESULTS / f"{prefix}-{name}.npz")
    return rows, {k: npz[k] for k in npz.files}


def fmt(x, spec=".3f"):
    return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, spec)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append")
    args = ap.parse_args(argv)
    lines = [f"Queries: true-class margin of the first {S.N_QUERY} digits test points; 1,347 training rows; "
             f"damping {S.DAMPING} on top of the trainer's l2; CG {S.CG_ITERS} iterations; LiSSA {S.LISSA}; "
             f"timings best of {S.REPEATS} (one run where a run took over 30 s).", "",
             "| model | method | ours s | ours LDS | peer | peer s | peer LDS | Pearson(ours, peer) | time ratio peer/ours |",
             "|---|---|---|---|---|---|---|---|---|"]
    summary = []
    for name in args.model or ["mlp", "cnn"]:
        ours_rows, ours = load("ours", name)
        peer_rows, peers = load("peers", name)
        gt = ground_truth(name)
        for method, labels in PAIRS.items():
            o = ours_rows.get(method, {})
            o_s = o.get("seconds") if o.get("status") == "ok" else None
            o_lds = lds_of(ours.get(method), gt)
            for label in labels:
                p = peer_rows.get(label)
                if p is None and not o:
                    continue
                p = p or {"status": "not run"}
                p_s = p.get("seconds") if p.get("status") == "ok" else None
                p_lds = lds_of(peers.get(label), gt)
                r = pearson(ours[method], peers[label]) if method in ours and label in peers else None
                ratio = p_s / o_s if (p_s and o_s) else None
                o_txt = fmt(o_s, ".2f") if o_s else o.get("status", "not run")
                p_txt = fmt(p_s, ".2f") if p_s else p.get("status", "not run")
                lines.append(f"| {name} | {method} | {o_txt} | {fmt(o_lds)} | {label} | {p_txt} | {fmt(p_lds)} | "
                             f"{fmt(r)} | {fmt(ratio, '.1f')} |")
                summary.append({"model": name, "method": method, "peer": label, "ours_s": o_s, "peer_s": p_s,
                                "ours_lds": o_lds, "peer_lds": p_lds, "pearson": r, "ratio": ratio,
                                "ours_error": o.get("error"), "peer_error": p.get("error")})
    errors = [f"- {s['model']} / {s['method']}: ours: {s['ours_error']}" for s in summary if s["ours_error"]]
    errors += [f"- {s['model']} / {s['peer']}: {s['peer_error']}" for s in summary if s["peer_error"]]
    if errors:
        lines += ["", "Failures:", *sorted(set(e[:400] for e in errors))]
    text = "\n".join(lines)
    (RESULTS / "influence-peers.md").write_text(text + "\n")
    (RESULTS / "influence-peers.json").write_text(json.dumps(summary, indent=1, default=float))
    print(text)


if __name__ == "__main__":
    main()
