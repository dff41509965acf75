"""The Dask route over the reference workload: the detect stage in-process vs as Prefect tasks on a 2-worker Dask
LocalCluster, same run folder, same shards; asserts bit-identical scores and reports the overhead.

Needs a workload run folder whose ``load`` and ``train_before`` stages are done, e.g.

    python benchmarks/workload.py --n-train 10000 --epochs 2 --stop-after train_before
    python benchmarks/dask_workload.py --run-dir /tmp/tda-clean-workload/n10000-e2-ekfac [--workers 2]

Both runs use one torch thread per process (``torch.set_num_threads(1)`` here, ``threads_per_worker: 1`` on the
workers): float32 BLAS results depend on the thread count, so bit-identical scores need the same count on both
sides. The in-process detect runs first (``stage_detect`` with the plain mapper), then the same stage inside a Prefect
flow with ``prefect_mapper`` on ``RunnerConfig(kind="dask")`` -- what ``tda-clean run`` does for a config with
``runner.kind: dask`` -- against a temporary Prefect server this script starts (its URL is exported so the Dask
worker processes report to it instead of each starting their own). Each copy of the folder gets its own
``selection.npz``; the source folder is not modified. JSON to ``--json``
(default ``benchmarks/results/dask-workload-n<N>.json``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NEEDED = ("config.yaml", "data.npz", "model_before.pt")


def _copy(run_dir: Path, dest: Path) -> Path:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name in NEEDED:
        os.link(run_dir / name, dest / name) if (run_dir / name).stat().st_dev == dest.stat().st_dev \
            else shutil.copy2(run_dir / name, dest / name)
    return dest


def _context(folder: Path):
    import yaml

    from tda_clean.config import parse_config
    from tda_clean.run_dir import RunContext

    return RunContext(parse_config(yaml.safe_load((folder / "config.yaml").read_text())), folder)


def _scores(folder: Path):
    import numpy as np

    with np.load(folder / "selection.npz") as f:
        return f["scores"], f["mask"]


def start_prefect_server() -> str:
    """A temporary Prefect server (the one ``tda-clean run`` starts) whose URL worker processes inherit."""
    from flows.lifetime import start_temporary_server

    server = start_temporary_server()
    os.environ["PREFECT_API_URL"] = server.api_url
    return server.api_url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="a workload run folder after train_before")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shard-rows", type=int, default=None, help="default: the run config's runner.shard_rows")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    missing = [n for n in NEEDED if not (args.run_dir / n).is_file()]
    if missing:
        print(f"error: --run-dir: {args.run_dir / missing[0]} not found (run benchmarks/workload.py with "
              "--stop-after train_before first)", file=sys.stderr)
        return 2
    import numpy as np
    import torch

    torch.set_num_threads(1)  # as each Dask worker (threads_per_worker=1): same kernels, same rounding
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the worker processes
    from tda_clean.config import RunnerConfig
    from tda_clean.pipeline import stage_detect

    base = args.run_dir.parent / f"{args.run_dir.name}-dask"
    inproc, dask = _copy(args.run_dir, base / "inprocess"), _copy(args.run_dir, base / "dask")
    ctx = _context(inproc)
    shard_rows = args.shard_rows or ctx.config.runner.shard_rows
    if args.shard_rows:
        from dataclasses import replace

        ctx = replace(ctx, config=ctx.config.model_copy(update={"runner": RunnerConfig(shard_rows=shard_rows)}))
    load = [os.getloadavg()]
    start = time.perf_counter()
    stage_detect(ctx)
    t_inproc = time.perf_counter() - start
    load.append(os.getloadavg())

    start = time.perf_counter()
    api = start_prefect_server()
    t_server = time.perf_counter() - start
    from prefect import flow

    from flows.runners import prefect_mapper

    runner = RunnerConfig(kind="dask", n_workers=args.workers, shard_rows=shard_rows)
    dctx = _context(dask)
    from dataclasses import replace

    dctx = replace(dctx, config=dctx.config.model_copy(update={"runner": runner}))

    @flow(name="detect-on-dask")
    def detect_on_dask():
        return stage_detect(dctx, mapper=prefect_mapper(runner))

    start = time.perf_counter()
    detect_on_dask()
    t_dask = time.perf_counter() - start
    load.append(os.getloadavg())

    (s1, m1), (s2, m2) = _scores(inproc), _scores(dask)
    identical = bool(np.array_equal(s1, s2) and np.array_equal(m1, m2))
    n = len(s1)
    result = {
        "command": "python benchmarks/dask_workload.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "n_train": n, "shards": -(-n // shard_rows), "shard_rows": shard_rows, "workers": args.workers,
        "torch_threads_in_process": torch.get_num_threads(), "threads_per_worker": 1,
        "detect_in_process_s": round(t_inproc, 2), "detect_dask_s": round(t_dask, 2),
        "prefect_server_start_s": round(t_server, 2), "dask_over_in_process": round(t_dask / t_inproc, 3),
        "bit_identical": identical, "max_abs_diff": float(np.max(np.abs(s1 - s2))), "prefect_api": api,
        "loadavg": load,
    }
    out = args.json or HERE / "results" / f"dask-workload-n{n}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    assert identical, f"Dask scores differ from in-process (max |diff| {result['max_abs_diff']:.3g})"
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    raise SystemExit(main())
