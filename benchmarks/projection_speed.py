"""Projected (TRAK-style) influence: dense vs Kronecker-factored projection, and the scoring product's precision.

Fashion-MNIST (the library's offline source): ``--n`` seeded training images with ``--noise`` of their labels
flipped (seeded), ``--queries`` clean test images. Model ``--model cnn`` (tda-clean's SmallCNN, channels 4/8,
hidden 32: ~51k parameters) or ``resnet`` (the reference workload's ResNet, ``benchmarks/workload_model.py``,
BatchNorm frozen in eval mode), trained here with Adam (seeded) for ``--epochs``.

Timed, interleaved, ``--repeats`` rounds: ``projected_influence`` with ``method="dense"`` (one (p, k) matrix on
materialised per-sample gradients; the old path) and ``method="factored"`` at ``k``, ``--k-mid`` and ``--k-large``,
and the factored one with ``precision="float32"`` (the scoring product). Quality of each: Pearson of the (m, n) score
matrix and of the per-row sums, and the overlap of the top-``--top`` rows per query, against
``--reference``: ``exact`` -- the unprojected empirical-Fisher influence (same formula, ``P = I``) from
materialised float64 gradients through the Woodbury identity (n x n system; for small p x n only) -- or
``dense-large``: the dense projection at ``--k-large`` in float64. Detection: precision of the ``n * noise`` most
harmful rows (most negative per-row sum: removal lowers the queries' loss) at finding the flipped labels.

Mixed precision of the scoring GEMM (queries x rows) alone: ``W`` (m, K) times the factored projected training
matrix (n, K) in float64 / float32 / bfloat16 -- time (best of the repeats) and the same quality figures against
float64.

    python benchmarks/projection_speed.py --model cnn --n 3000 --queries 500 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def data(n: int, queries: int, noise: float, seed: int):
    from tda_clean.config import FashionMNISTSource
    from tda_clean.data.sources import read_idx

    root = FashionMNISTSource().path
    X = read_idx(root / "train-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    y = read_idx(root / "train-labels-idx1-ubyte.gz").astype(np.int64)
    Xt = read_idx(root / "t10k-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    yt = read_idx(root / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(X), n, replace=False)
    X, y = (X[idx] - 0.2860) / 0.3530, y[idx].copy()
    flipped = rng.choice(n, int(round(noise * n)), replace=False)
    y[flipped] = (y[flipped] + rng.integers(1, 10, len(flipped))) % 10
    q = rng.choice(len(Xt), queries, replace=False)
    return X[:, None], y, (Xt[q][:, None] - 0.2860) / 0.3530, yt[q], np.sort(flipped)


def model_for(name: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    if name == "cnn":
        from tda_clean.models.factory import SmallCNN
        return SmallCNN((1, 28, 28), 10, (4, 8), 32)
    from workload_model import make_resnet
    return make_resnet((1, 28, 28), 10)


def train(model, X, y, epochs: int, l2: float, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=l2)
    Xt, yt = torch.as_tensor(X), torch.as_tensor(y)
    model.train()
    for _ in range(epochs):
        for b in torch.randperm(len(Xt), generator=gen).split(128):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(Xt[b]), yt[b]).backward()
            opt.step()
    return model.eval()


def exact_fisher_scores(model, X, y, Xq, yq, l2: float, damping: float) -> np.ndarray:
    """``q^T F^-1 (g_i + l2 theta) / (n-1)``, ``F = G^T G / n + lam I`` (lam = l2 + damping), float64, via
    ``F^-1 = (I - G^T (n lam I + G G^T)^-1 G) / lam``."""
    from tda_clean.influence import PerSampleLoss, per_sample_grads
    from tda_clean.influence.params import ParamSpace

    m64 = __import__("copy").deepcopy(model).double().eval()
    space = ParamSpace(m64, "all")
    G = per_sample_grads(space, X.astype(np.float64), y)
    Q = PerSampleLoss(Xq.astype(np.float64), yq).query_gradients(space, 256.0)
    n, lam = len(G), l2 + damping
    K = G @ G.T
    R = G + l2 * space.flat()                                            # (n, p)
    QR, GQ, GR = Q @ R.T, G @ Q.T, K + l2 * (G @ space.flat())[:, None]  # (m, n), (n, m), (n, n)
    S = QR - GQ.T @ torch.linalg.solve(n * lam * torch.eye(n, dtype=torch.float64) + K, GR)
    return (S / lam / (n - 1)).numpy()


def quality(S: np.ndarray, ref: np.ndarray, flipped: np.ndarray, top: int) -> dict:
    per, per_ref = S.sum(0), ref.sum(0)
    harm = np.argsort(per, kind="stable")[: len(flipped)]
    tk = np.argsort(-S, axis=1, kind="stable")[:, :top]
    tk_ref = np.argsort(-ref, axis=1, kind="stable")[:, :top]
    overlap = np.mean([len(np.intersect1d(a, b)) / top for a, b in zip(tk, tk_ref)])
    return {"pearson_scores": float(np.corrcoef(S.ravel(), ref.ravel())[0, 1]),
            "pearson_per_row": float(np.corrcoef(per, per_ref)[0, 1]), f"top{top}_overlap": float(overlap),
            "detection_precision": float(np.isin(harm, flipped).mean())}



def emit(out: dict, path: Path | None) -> int:
    """Print ``out`` as JSON and write it to ``path`` when given; 0 (the script's exit code)."""
    text = json.dumps(out, indent=1)
    print(text)
    if path:
        path.write_text(text)
    return 0

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["cnn", "resnet"], default="cnn")
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--noise", type=float, default=0.1)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--k", type=int, default=512)
    ap.add_argument("--k-mid", type=int, default=2048)
    ap.add_argument("--k-large", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--top", type=int, default=50)
    ap.add_argument("--reference", choices=["exact", "dense-large", "none"], default="exact")
    ap.add_argument("--skip", default="", help="comma-separated variant names not to run")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    from tda_clean.config.influence import GradientSettings
    from tda_clean.influence import PerSampleLoss, projected_influence

    l2, damping, seed = 1e-4, 1e-3, 0
    X, y, Xq, yq, flipped = data(args.n, args.queries, args.noise, seed)
    t0 = time.perf_counter()
    model = train(model_for(args.model, seed), X, y, args.epochs, l2, seed)
    p = sum(t.numel() for t in model.parameters())
    print(f"model {args.model}: p={p}, trained in {time.perf_counter() - t0:.1f}s", flush=True)
    obj = PerSampleLoss(Xq, yq)

    def run(method, k, precision="float64", dtype="model"):
        return lambda: projected_influence(model, (X, y), obj, l2=l2, damping=damping, k=k, seed=0, method=method,
                                           precision=precision, gradients=GradientSettings(dtype=dtype))

    variants = {f"dense k={args.k}": run("dense", args.k), f"factored k={args.k}": run("factored", args.k),
                f"factored k={args.k_mid}": run("factored", args.k_mid),
                f"factored k={args.k_large}": run("factored", args.k_large),
                f"factored k={args.k_large} float32 scoring": run("factored", args.k_large, "float32")}
    variants = {k: v for k, v in variants.items() if k not in args.skip.split(",")}
    times: dict[str, list[float]] = {k: [] for k in variants}
    scores, infos = {}, {}
    for r in range(args.repeats):
        for name, fn in variants.items():
            t = time.perf_counter()
            res = fn()
            times[name].append(time.perf_counter() - t)
            scores[name], infos[name] = res.scores, res.info
            print(f"round {r} {name}: {times[name][-1]:.2f}s (load {os.getloadavg()[0]:.2f})", flush=True)

    ref_name = args.reference
    if ref_name == "exact":
        t = time.perf_counter()
        ref = exact_fisher_scores(model, X, y, Xq, yq, l2, damping)
        print(f"exact reference: {time.perf_counter() - t:.1f}s", flush=True)
    elif ref_name == "dense-large":
        ref = run("dense", args.k_large)().scores
    else:
        ref = scores[next(iter(scores))]
        ref_name = next(iter(scores))
    rows = {}
    for name in variants:
        rows[name] = {"seconds": times[name], "best_s": min(times[name]), "k_used": infos[name]["k"],
                      **quality(scores[name], ref, flipped, args.top)}
    rows["reference"] = {"name": ref_name, **quality(ref, ref, flipped, args.top)}

    # ---- the scoring GEMM alone: float64 / float32 / bfloat16 on the factored k-large projected rows
    from tda_clean.influence.factored_projection import FactoredProjector
    from tda_clean.influence.params import ParamSpace
    from tda_clean.influence.rows import ArrayRows
    from tda_clean.objective import TrainingObjective

    space = ParamSpace(model, "all")
    proj = FactoredProjector(space, args.k_large, seed=0)
    PG = torch.cat([b for _, b in proj.iter_rows(ArrayRows(X, y), TrainingObjective().row)]).double()
    F = PG.T @ PG / len(PG) + (l2 + damping) * torch.eye(proj.k, dtype=torch.float64)
    W = torch.linalg.solve(F, proj.project(obj.query_gradients(space, 256.0)).double().T).T
    gemm, base = {}, None
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        A, B = W.to(dtype).contiguous(), PG.to(dtype).contiguous()
        best = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            S = A @ B.T
            best = min(best, time.perf_counter() - t)
        S = S.double().numpy() / (len(PG) - 1)
        base = S if base is None else base
        gemm[str(dtype).replace("torch.", "")] = {"best_s": best, **quality(S, base, flipped, args.top)}
        print(f"gemm {dtype}: {best:.3f}s", flush=True)

    out = {"model": args.model, "p": p, "n": args.n, "queries": args.queries, "noise": args.noise,
           "epochs": args.epochs, "k": args.k, "k_large": args.k_large, "repeats": args.repeats, "top": args.top,
           "threads": torch.get_num_threads(), "loadavg_end": os.getloadavg(), "machine": platform.processor() or
           platform.machine(), "variants": rows, "gemm": gemm, "factored_layers": infos.get(f"factored k={args.k}", {})
           .get("projection", {}).get("layers")}
    return emit(out, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
