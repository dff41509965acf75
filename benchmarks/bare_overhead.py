"""Overhead of the bare default command (no servers running) over the plain library run.

    python benchmarks/bare_overhead.py [--config configs/quickstart.yaml] [--repeats 3] [--threads 1]
                                       [--baseline DIR] [--json FILE]

Times, end to end and each repetition a fresh process and a fresh run folder, variants interleaved:

- ``plain``: ``tda-clean run CONFIG --engine local --set tracking.enabled=false`` (the library path);
- ``default``: ``tda-clean run CONFIG`` with nothing set: no ``PREFECT_API_URL`` (the run starts Prefect's
  temporary server and stops it at exit, ``flows/lifetime.py``) and no ``MLFLOW_TRACKING_URI`` (MLflow writes
  ``./mlflow.db``);
- with ``--baseline DIR`` also ``default@baseline``: the same command from another checkout (e.g. ``git archive
  <commit> | tar -x -C DIR``), for a before/after comparison under the same load.

All runs share one working directory (its ``mlflow.db``) and one ``PREFECT_HOME`` (Prefect's database), as a
user's repeated runs do; one uncounted warm-up ``default`` run creates and migrates both first (its wall time is
reported as the first-run cost). Reports per variant the median wall and CPU seconds of the run's process tree
and overhead = median(variant) - median(plain), plus each repetition's ``default - plain`` difference.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.overhead import load_average, machine, table  # noqa: E402
from tests.integration.servers import base_env  # noqa: E402


def run_once(tree: Path, config: Path, args: list[str], env: dict[str, str], cwd: Path, out: Path) -> dict:
    cmd = [sys.executable, "-m", "flows.cli", "run", str(config), "--output", str(out), "--fresh", *args]
    env = {**env, "PYTHONPATH": str(tree)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, 3):  # 3: the release gate failed, the run itself completed
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    timings = json.loads((out / "report.json").read_text())["timings_s"]
    return {"wall_s": wall, "cpu_s": cpu, "stages_s": sum(timings.values())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", help="another checkout to run the default command from (before/after)")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS / MKL_NUM_THREADS for every run (torch's "
                        "intra-op threads; on a loaded machine their spin-waiting dominates, see BENCHMARKS.md)")
    parser.add_argument("--json", help="write the raw timings here")
    args = parser.parse_args(argv)
    config = Path(args.config).resolve()
    info = {**machine(), "config": config.name, "repeats": args.repeats, "threads": args.threads,
            "load_before": load_average()}
    print(f"machine: {info['cpu']}, {info['cores']} cores; load average before: {info['load_before']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="tda-clean-bare-") as tmp:
        root = Path(tmp)
        work = root / "work"
        work.mkdir()
        env = base_env(PREFECT_HOME=str(root / "prefect-home"))
        if args.threads:
            env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        variants = {"plain": (ROOT, ["--engine", "local", "--set", "tracking.enabled=false"]), "default": (ROOT, [])}
        if args.baseline:
            variants["default@baseline"] = (Path(args.baseline).resolve(), [])
        first = run_once(ROOT, config, [], env, work, root / "runs" / "warmup")
        info["first_default_run_wall_s"] = first["wall_s"]
        print(f"  warm-up default run (creates Prefect's and MLflow's databases): wall {first['wall_s']:.1f} s",
              flush=True)
        results: dict[str, list[dict]] = {name: [] for name in variants}
        for rep in range(args.repeats):
            for name, (tree, extra) in variants.items():
                result = run_once(tree, config, extra, env, work, root / "runs" / f"{name.replace('@', '-')}-{rep}")
                result["load"] = load_average()
                results[name].append(result)
                print(f"  rep {rep + 1} {name:<17} wall {result['wall_s']:6.1f} s  cpu {result['cpu_s']:6.1f} s"
                      f"  stages {result['stages_s']:6.1f} s  (load {result['load']})", flush=True)
    info["load_after"] = load_average()
    print("\n" + table(results))
    pairs = {name: [r["wall_s"] - p["wall_s"] for r, p in zip(rows, results["plain"])]
             for name, rows in results.items() if name != "plain"}
    for name, diffs in pairs.items():
        print(f"{name} - plain, each repetition: " + ", ".join(f"{d:+.1f}" for d in diffs) + " s")
    print(f"\nload average before {info['load_before']}, after {info['load_after']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "runs": results, "pairs": pairs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
