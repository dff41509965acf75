"""Peers at the reference workload (issue 16, item 3): our EK-FAC and projected influence vs kronfluence EK-FAC and
dattri (TRAK; EK-FAC on the Linear head, all it supports), same weights, same rows, same queries, one run.

    python benchmarks/peers_scale.py prepare [--source /tmp/tda-clean-workload/n60000-e1-kfac]
    python benchmarks/peers_scale.py drive --n 40000 --repeats 3 [--methods ...] [--budget-s 840]
    python benchmarks/peers_scale.py report --n 40000 [--md benchmarks/results/peers-scale-n40000.md]
    python benchmarks/peers_scale.py smoke                      # 256 synthetic rows, narrow net, ours only

``prepare`` copies a reference-workload run folder (``benchmarks/workload.py --n-train 60000 --epochs 1
--stop-after train_before``) into ``benchmarks/.cache/peers_scale``: the 60,000 training images (float32, as the
pipeline read them), their labels with the run's 10% uniform flips (seeded) and the flip mask (the ground truth),
the first 100 test-split images as queries, and the trained ResNet's state_dict. Every method then runs on the
same weights (BatchNorm in eval mode).

``drive`` runs, for repeat r = 1..R and each method in order (interleaved), ``peers_scale_methods.py`` in a fresh
process (the peers with ``--peer-python``), records the load average before and after each call and the child's
JSON (method wall / CPU seconds, peak RSS), and saves ``benchmarks/results/peers-scale-n<N>.json`` after every
call. It resumes: calls already in the JSON are skipped; it stops starting new calls after ``--budget-s`` so a run
splits into commands of bounded length. ``report`` adds the quality figures from the last repeat's scores
(per-row sums of removal influence on the query losses): precision of the flipped rows among each method's k most
harmful rows (k = the number flipped), top-100 / top-1000 overlap, Pearson and Spearman between methods.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from benchmarks.peers_scale_methods import METHODS, PEER, subset  # noqa: E402

DATA = HERE / ".cache" / "peers_scale"
RESULTS = HERE / "results"
SOURCE = Path("/tmp/tda-clean-workload/n60000-e1-kfac")
N_QUERY = 100


def prepare(source: Path, out: Path) -> dict:
    """Copy the run folder's arrays and weights into ``out`` (see module docstring)."""
    import torch

    if not (source / "data.npz").is_file() or not (source / "model_before.pt").is_file():
        raise SystemExit(f"error: {source}/data.npz or model_before.pt not found (run `python benchmarks/workload.py "
                         "--n-train 60000 --epochs 1 --solver kfac --stop-after train_before` first)")
    d = np.load(source / "data.npz", allow_pickle=False)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "X.npy", d["train/X"][:, None].astype(np.float32))
    np.save(out / "y.npy", d["train/y"].astype(np.int64))
    np.save(out / "flipped.npy", d["corrupted_mask"].astype(bool))
    np.save(out / "Xq.npy", d["test/X"][:N_QUERY, None].astype(np.float32))
    np.save(out / "yq.npy", d["test/y"][:N_QUERY].astype(np.int64))
    torch.save(torch.load(source / "model_before.pt", weights_only=True), out / "weights.pt")
    meta = {"source": str(source), "n_total": int(len(d["train/y"])), "n_flipped": int(d["corrupted_mask"].sum()),
            "n_query": N_QUERY}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def synthetic(out: Path, n: int = 512, width: int = 4, seed: int = 0) -> None:
    """The smoke mode's data: seeded random images, 10% flipped labels, a narrow ResNet's seeded weights."""
    import torch

    from benchmarks.workload_model import ResNet

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    y = rng.integers(0, 10, n)
    flipped = rng.random(n) < 0.1
    noisy = np.where(flipped, (y + rng.integers(1, 10, n)) % 10, y)
    np.save(out / "X.npy", rng.random((n, 1, 28, 28), dtype=np.float32))
    np.save(out / "y.npy", noisy.astype(np.int64))
    np.save(out / "flipped.npy", flipped)
    np.save(out / "Xq.npy", rng.random((N_QUERY, 1, 28, 28), dtype=np.float32))
    np.save(out / "yq.npy", rng.integers(0, 10, N_QUERY).astype(np.int64))
    torch.manual_seed(seed)
    torch.save(ResNet(10, width).state_dict(), out / "weights.pt")


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def call(method: str, n: int, data: Path, scores: Path, python: str, width: int | None,
         root: str | None = None) -> dict:
    """One fresh process for ``method``; its JSON plus process wall and the load average around it."""
    cmd = [python, str(HERE / "peers_scale_methods.py"), "--method", method, "--n", str(n), "--data", str(data),
           "--scores", str(scores)] + (["--width", str(width)] if width else [])
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "MKL_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONPATH": str(HERE.parent)}
    env.pop("TDA_CLEAN_ROOT", None)
    if root:
        env["TDA_CLEAN_ROOT"] = root  # that method imports tda_clean from another checkout
    before, t = loadavg(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    row = {"method": method, "process_wall_s": round(time.perf_counter() - t, 2), "loadavg_before": before,
           "loadavg_after": loadavg(), "command": " ".join(cmd[1:])}
    if proc.returncode != 0:
        row.update(status="failed", error=(proc.stderr.strip().splitlines() or ["?"])[-1][:500])
        sys.stderr.write(proc.stderr[-3000:])
        return row
    row.update(status="ok", **json.loads(proc.stdout.strip().splitlines()[-1]))
    return row


def drive(args) -> dict:
    path = args.results or RESULTS / f"peers-scale-n{args.n}.json"
    res = json.loads(path.read_text()) if path.is_file() else {"n": args.n, "calls": []}
    done = {(c["repeat"], c["method"]) for c in res["calls"]}
    start = time.perf_counter()
    for r in range(1, args.repeats + 1):
        for method in args.methods:
            if (r, method) in done:
                continue
            if time.perf_counter() - start > args.budget_s:
                print(f"budget of {args.budget_s} s spent: run the same command again to continue", flush=True)
                return res
            python = args.peer_python if method in PEER else sys.executable
            scores = args.scores_dir / f"n{args.n}" / f"{method}.npy"
            root = args.factored_root if method == "ours-projected-factored" else None
            row = {"repeat": r, **call(method, args.n, args.data, scores, python, args.width, root)}
            print(json.dumps(row), flush=True)
            res["calls"].append(row)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(res, indent=1))
    return res


# -------------------------------------------------------------------------------------------------- report
def _rank(a: np.ndarray) -> np.ndarray:
    r = np.empty(len(a))
    r[np.argsort(a, kind="stable")] = np.arange(len(a))
    return r


def quality(scores: dict[str, np.ndarray], flipped: np.ndarray) -> dict:
    """Detection precision at k = #flipped (harmful = most negative row sums), pairwise agreement."""
    k = int(flipped.sum())
    out = {"k_flipped": k, "precision": {}, "pairs": {}}
    for m, s in scores.items():
        out["precision"][m] = float(flipped[np.argsort(s, kind="stable")[:k]].mean())
    names = list(scores)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            sa, sb = scores[a], scores[b]
            pair = {"pearson": float(np.corrcoef(sa, sb)[0, 1]),
                    "spearman": float(np.corrcoef(_rank(sa), _rank(sb))[0, 1])}
            for top in (100, 1000):  # only where the top is a small part of the rows
                ta, tb = set(np.argsort(sa)[:top]), set(np.argsort(sb)[:top])
                pair[f"harmful_top{top}_overlap"] = len(ta & tb) / top if 4 * top <= len(sa) else float("nan")
            out["pairs"][f"{a} vs {b}"] = pair
    return out


def report(args) -> dict:
    path = args.results or RESULTS / f"peers-scale-n{args.n}.json"
    res = json.loads(path.read_text())
    flipped = np.load(args.data / "flipped.npy")[subset(len(np.load(args.data / "flipped.npy")), args.n)]
    ok = [c for c in res["calls"] if c["status"] == "ok"]
    ran = {c["method"] for c in ok}
    scores = {m: np.load(args.scores_dir / f"n{args.n}" / f"{m}.npy") for m in METHODS if m in ran}
    res["quality"] = quality(scores, flipped)
    summary = {}
    for m in METHODS:
        rows = [c for c in ok if c["method"] == m]
        if rows:
            walls = sorted(c["wall_s"] for c in rows)
            summary[m] = {"repeats": len(rows), "wall_s": walls, "median_wall_s": float(np.median(walls)),
                          "median_cpu_s": float(np.median([c["cpu_s"] for c in rows])),
                          "peak_rss_mib": max(c["peak_rss_mib"] for c in rows),
                          "loadavg": [min(c["loadavg_before"][0] for c in rows),
                                      max(c["loadavg_after"][0] for c in rows)]}
    res["summary"] = summary
    path.write_text(json.dumps(res, indent=1))
    lines = ["| method | repeats | wall (s), median [all] | CPU (s) | wall / ours EK-FAC | wall / ours projected | "
             "precision@k | peak RSS (MiB) | load avg |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for m, s in summary.items():
        ratio = {o: (s["median_wall_s"] / summary[o]["median_wall_s"] if o in summary else float("nan"))
                 for o in ("ours-ekfac", "ours-projected")}
        lines.append(f"| {m} | {s['repeats']} | {s['median_wall_s']:.1f} [{', '.join(f'{w:.1f}' for w in s['wall_s'])}]"
                     f" | {s['median_cpu_s']:.1f} | {ratio['ours-ekfac']:.2f}× | {ratio['ours-projected']:.2f}× | "
                     f"{res['quality']['precision'].get(m, float('nan')):.3f} | {s['peak_rss_mib']:,.0f} | "
                     f"{s['loadavg'][0]:.1f}–{s['loadavg'][1]:.1f} |")
    lines += ["", "| pair | Pearson | Spearman | top-100 overlap | top-1000 overlap |", "|---|---:|---:|---:|---:|"]
    for pair, q in res["quality"]["pairs"].items():
        lines.append(f"| {pair} | {q['pearson']:.3f} | {q['spearman']:.3f} | {q['harmful_top100_overlap']:.2f} | "
                     f"{q['harmful_top1000_overlap']:.2f} |")
    text = "\n".join(lines)
    print(text)
    if args.md:
        args.md.write_text(text + "\n")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--source", type=Path, default=SOURCE)
    p.add_argument("--data", type=Path, default=DATA)
    for name in ("drive", "report", "smoke"):
        q = sub.add_parser(name)
        q.add_argument("--n", type=int, default=256 if name == "smoke" else 40000)
        q.add_argument("--data", type=Path, default=DATA / "smoke" if name == "smoke" else DATA)
        q.add_argument("--results", type=Path, default=None)
        q.add_argument("--scores-dir", type=Path, default=DATA / "scores")
        q.add_argument("--md", type=Path, default=None)
        q.add_argument("--repeats", type=int, default=1 if name == "smoke" else 3)
        q.add_argument("--methods", nargs="+", choices=METHODS,
                       default=["ours-ekfac", "ours-projected"] if name == "smoke" else list(METHODS))
        q.add_argument("--budget-s", type=float, default=840.0)
        q.add_argument("--peer-python", default=str(HERE / ".venv-peers" / "bin" / "python"))
        q.add_argument("--width", type=int, default=4 if name == "smoke" else None)
        q.add_argument("--factored-root", default=None,
                       help="checkout whose tda_clean runs ours-projected-factored (default: this one)")
    args = ap.parse_args(argv)
    if args.cmd == "prepare":
        print(json.dumps(prepare(args.source, args.data)))
        return 0
    if args.cmd == "smoke":
        synthetic(args.data, n=2 * args.n, width=args.width)
        args.results = args.results or args.data / "peers-scale-smoke.json"
        args.scores_dir = args.data / "scores"
        if args.results.is_file():
            args.results.unlink()
    if args.cmd in ("drive", "smoke"):
        if not (args.data / "X.npy").is_file():
            raise SystemExit(f"error: {args.data}/X.npy not found (run `python benchmarks/peers_scale.py prepare`)")
        res = drive(args)
        if any(c["status"] != "ok" for c in res["calls"]):
            return 1
    if args.cmd in ("report", "smoke"):
        report(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
