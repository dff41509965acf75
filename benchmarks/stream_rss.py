"""Streamed attribution: time and peak RSS against n at a fixed batch size (issue 16, "RSS per n").

    python benchmarks/stream_rss.py [--sizes 10000 30000 60000] [--queries 100] [--batch-size 256]
                                    [--memory-mb 32] [--modes streamed dense] [--threads 2] [--params all]

Data: Fashion-MNIST's 60,000 training images (``/usr/share/datasets/fashion-mnist``, pixels / 255) written once
as a float32 ``(N, 1, 28, 28)`` ``.npy`` under ``benchmarks/.cache/stream_rss`` and opened with
``np.load(mmap_mode="r")``; sizes above 60,000 replicate the rows. Queries: the first ``--queries`` test images.
Model: ``SmallCNN((1, 28, 28), 10, (4, 8), 32)`` (p = 50,874) with seeded initial weights in eval mode (time and
memory do not depend on the weights' values). Influence: EK-FAC over all parameters (``--params head``: the last
layer only, a light run), float32, damping "auto".

Each (n, mode) runs in a fresh child process: a warm-up of every step on two batches of rows, then the resident set
(``VmRSS``) as the baseline, then the timed steps -- EK-FAC fit, self-influence (n,), and per-query influence of
the ``--queries`` test losses, reduced on the fly to per-row sums and the top 10 rows per query
(``streamed``: ``Several(RowSum(), TopK(10))``) or kept as the dense (m, n) float64 matrix (``dense``, the
reference) -- then the peak (``ru_maxrss``). The parent fits log-log slopes of time against n and writes
``benchmarks/results/stream_rss.json``.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import CACHE, RESULTS, machine, write_json  # noqa: E402

SOURCE = Path("/usr/share/datasets/fashion-mnist")
HERE = CACHE / "stream_rss"


def _idx(path: Path) -> np.ndarray:
    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def prepare(rows: int) -> None:
    """Write X.npy (rows, 1, 28, 28) float32 (replicated past 60,000), y.npy, queries Xq.npy / yq.npy."""
    HERE.mkdir(parents=True, exist_ok=True)
    X, y = _idx(SOURCE / "train-images-idx3-ubyte.gz"), _idx(SOURCE / "train-labels-idx1-ubyte.gz")
    meta = HERE / "meta.json"
    if meta.is_file() and json.loads(meta.read_text()).get("rows", 0) >= rows:
        return
    out = np.lib.format.open_memmap(HERE / "X.npy", mode="w+", dtype=np.float32, shape=(rows, 1, 28, 28))
    for a in range(0, rows, 10_000):
        b = min(rows, a + 10_000)
        out[a:b, 0] = X[np.arange(a, b) % len(X)] / np.float32(255.0)
    out.flush()
    del out
    np.save(HERE / "y.npy", y[np.arange(rows) % len(y)].astype(np.int64))
    Xt, yt = _idx(SOURCE / "t10k-images-idx3-ubyte.gz"), _idx(SOURCE / "t10k-labels-idx1-ubyte.gz")
    np.save(HERE / "Xq.npy", (Xt[:, None] / np.float32(255.0)).astype(np.float32))
    np.save(HERE / "yq.npy", yt.astype(np.int64))
    meta.write_text(json.dumps({"rows": rows}))


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(n: int, mode: str, args) -> dict:
    import torch

    from tda_clean.config.influence import GradientSettings, InfluenceSpec, KFACSettings
    from tda_clean.influence import InfluenceEngine, PerSampleLoss, TrainingObjective
    from tda_clean.influence.reducers import DenseScores, RowSum, Several, TopK
    from tda_clean.models.factory import SmallCNN

    torch.set_num_threads(args.threads)
    X, y = np.load(HERE / "X.npy", mmap_mode="r")[:n], np.load(HERE / "y.npy")[:n]
    Xq, yq = np.load(HERE / "Xq.npy")[: args.queries], np.load(HERE / "yq.npy")[: args.queries]
    torch.manual_seed(0)
    model = SmallCNN((1, 28, 28), 10, (4, 8), 32).eval()
    spec = InfluenceSpec(solver=KFACSettings(kind="ekfac"),
                         gradients=GradientSettings(params=args.params, batch_size=args.batch_size, memory_mb=args.memory_mb))
    training = TrainingObjective(l2=1e-4)
    query = PerSampleLoss(Xq, yq)

    def steps(rows, out: dict | None) -> None:
        engine = InfluenceEngine(model, rows, spec, training)
        marks = [("fit", lambda: engine.solver), ("self_influence", engine.self_influence),
                 ("scores", lambda: engine.scores(query, reducer=Several(RowSum(), TopK(10)) if mode == "streamed"
                                                  else DenseScores()))]
        for name, fn in marks:
            t0 = time.perf_counter()
            fn()
            if out is not None:
                out[f"{name}_s"] = time.perf_counter() - t0
                out[f"{name}_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    warm = 2 * args.batch_size
    steps((np.array(X[:warm]), y[:warm]), None)  # warm-up: lazy imports, kernels, one block's buffers
    base = rss_mb()
    out: dict = {"n": n, "mode": mode, "base_mb": base, "p": InfluenceEngine(model, (Xq, yq), spec, training).space.p}
    steps((X, y), out)
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["peak_over_base_mb"] = out["peak_mb"] - base
    out["total_s"] = out["fit_s"] + out["self_influence_s"] + out["scores_s"]
    out["loadavg_1m"] = os.getloadavg()[0]
    return out


def slope(ns, ts) -> float:
    return float(np.polyfit(np.log(ns), np.log(ts), 1)[0])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 60_000])
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--memory-mb", type=float, default=32.0)
    ap.add_argument("--modes", nargs="+", default=["streamed", "dense"], choices=["streamed", "dense"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--params", default="all", choices=["all", "head"])
    ap.add_argument("--out", default=str(RESULTS / "stream_rss.json"))
    ap.add_argument("--child", nargs=2, metavar=("N", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.child[1], args)))
        return
    prepare(max(args.sizes))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
           "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    flags = ["--queries", str(args.queries), "--batch-size", str(args.batch_size), "--memory-mb", str(args.memory_mb),
             "--threads", str(args.threads), "--params", args.params]
    runs = []
    for n in args.sizes:
        for mode in args.modes:
            done = subprocess.run([sys.executable, __file__, "--child", str(n), mode, *flags], capture_output=True,
                                  text=True, env=env)
            if done.returncode:
                sys.exit(f"child n={n} mode={mode} failed:\n{done.stderr[-3000:]}")
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            r = runs[-1]
            print(f"n={n:>6} {mode:>8}: fit {r['fit_s']:6.1f} s  self {r['self_influence_s']:6.1f} s  scores "
                  f"{r['scores_s']:6.1f} s  total {r['total_s']:6.1f} s  peak-base {r['peak_over_base_mb']:6.1f} MiB "
                  f"(base {r['base_mb']:.0f})  load {r['loadavg_1m']:.2f}", flush=True)
    fits = {}
    for mode in args.modes:
        rs = [r for r in runs if r["mode"] == mode]
        if len(rs) > 1:
            ns = [r["n"] for r in rs]
            fits[mode] = {key: slope(ns, [r[key] for r in rs]) for key in ("total_s", "fit_s", "self_influence_s",
                                                                           "scores_s", "peak_mb")}
            print(f"{mode}: log-log slope vs n: " + ", ".join(f"{k} {v:.2f}" for k, v in fits[mode].items()))
    write_json(Path(args.out), {"machine": machine(), "settings": {k: v for k, v in vars(args).items() if k != "child"},
                                "runs": runs, "slopes": fits})


if __name__ == "__main__":
    main()
