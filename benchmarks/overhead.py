"""Orchestration overhead: Prefect + MLflow over the plain library run, against running servers.

    python benchmarks/overhead.py [--config configs/quickstart.yaml] [--repeats 3] [--breakdown] [--json FILE]

Starts ``prefect server start`` and ``mlflow server`` (SQLite backend) on 127.0.0.1 at free ports (the same
helpers as the integration tests), then times ``tda-clean run`` end to end, each repetition a fresh process and
a fresh run folder (no resume), variants interleaved so that a change in machine load hits all of them:

- ``plain``: ``--engine local --set tracking.enabled=false`` (the library call, no Prefect, no MLflow)
- ``prefect+mlflow``: the default engine (Prefect flow, one task per stage) with ``PREFECT_API_URL`` set and
  tracking on the MLflow server (parent + before/after runs, params, metrics, artifacts, dataset, 2 models)
- with ``--breakdown`` also ``prefect`` (tracking off) and ``mlflow`` (``--engine local``, tracking on)

Reports per variant the median wall seconds, the median CPU seconds of the run's process tree (user + sys,
far less sensitive than wall time to other jobs on a shared machine), the median stage time (sum of the
compute stages' ``timings_s`` in report.json; for the Prefect engine it includes each task's orchestration)
and overhead = median(variant) - median(plain). Server start-up is reported, not counted
(the servers are long-running in production). The servers are stopped by process group at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.commands import command_env, tda_clean  # noqa: E402
from tests.integration.servers import base_env, start_mlflow, start_prefect  # noqa: E402

COMPUTE = ("load", "train_before", "detect", "act", "train_after", "evaluate_before", "evaluate_after")


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu": model, "cores": str(os.cpu_count()), "python": platform.python_version()}


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def variants(prefect_url: str, mlflow_url: str, breakdown: bool) -> dict[str, tuple[list[str], dict[str, str]]]:
    """``name -> (extra CLI args, extra environment)``."""
    off = ["--set", "tracking.enabled=false"]
    on = ["--set", "tracking.enabled=true", "--set", f"tracking.tracking_uri={mlflow_url}"]
    found = {
        "plain": (["--engine", "local", *off], {}),
        "prefect+mlflow": (["--engine", "prefect", *on], {"PREFECT_API_URL": prefect_url}),
    }
    if breakdown:
        found["prefect"] = (["--engine", "prefect", *off], {"PREFECT_API_URL": prefect_url})
        found["mlflow"] = (["--engine", "local", *on], {})
    return found


def run_once(config: Path, args: list[str], env: dict[str, str], out: Path) -> dict[str, float]:
    cmd = tda_clean("run", str(config), "--output", str(out), "--fresh", *args)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=out.parent, env=command_env(base_env(**env)), capture_output=True, text=True,
                          timeout=1800)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the run's own process tree (servers not yet reaped)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if proc.returncode not in (0, 3):  # 3: the release gate failed, the run itself completed
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    timings = json.loads((out / "report.json").read_text())["timings_s"]
    return {"wall_s": wall, "cpu_s": cpu, "stages_s": sum(timings.get(k, 0.0) for k in COMPUTE)}


def table(results: dict[str, list[dict[str, float]]]) -> str:
    """Markdown table: medians, best of N (the least disturbed run on a shared machine), overheads vs plain."""
    def stat(name: str, key: str, fn) -> float:
        return fn(r[key] for r in results[name])

    lines = ["| variant | median wall (s) | wall of each run (s) | overhead, median wall (s) | best wall (s) "
             "| overhead, best wall (s) | median CPU (s) | overhead, median CPU (s) |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for name in results:
        runs = ", ".join(f"{r['wall_s']:.1f}" for r in results[name])
        cells = [name, f"{stat(name, 'wall_s', statistics.median):.1f}", runs, "–",
                 f"{stat(name, 'wall_s', min):.1f}", "–", f"{stat(name, 'cpu_s', statistics.median):.1f}", "–"]
        if name != "plain":
            cells[3] = f"{stat(name, 'wall_s', statistics.median) - stat('plain', 'wall_s', statistics.median):+.1f}"
            cells[5] = f"{stat(name, 'wall_s', min) - stat('plain', 'wall_s', min):+.1f}"
            cells[7] = f"{stat(name, 'cpu_s', statistics.median) - stat('plain', 'cpu_s', statistics.median):+.1f}"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--breakdown", action="store_true", help="also Prefect alone and MLflow alone")
    parser.add_argument("--json", help="write the raw timings here")
    parser.add_argument("--table", metavar="JSON", help="only print the table of a file written by --json")
    args = parser.parse_args(argv)
    if args.table:
        saved = json.loads(Path(args.table).read_text())
        print(table(saved["runs"]))
        print(f"\nmachine {saved['machine']}")
        return 0
    config = Path(args.config).resolve()

    info = {**machine(), "config": str(config.relative_to(ROOT) if config.is_relative_to(ROOT) else config),
            "repeats": args.repeats, "load_before": load_average()}
    print(f"machine: {info['cpu']}, {info['cores']} cores; load average before: {info['load_before']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="tda-clean-overhead-") as tmp:
        root = Path(tmp)
        servers = [start_prefect(root / "prefect"), start_mlflow(root / "mlflow")]
        try:
            ready = {s.name: round(s.wait_healthy(), 1) for s in servers}
            print(f"servers healthy after {ready} s (not counted)", flush=True)
            found = variants(servers[0].url, servers[1].url, args.breakdown)
            results: dict[str, list[dict[str, float]]] = {name: [] for name in found}
            for rep in range(args.repeats):
                for name, (extra, env) in found.items():
                    out = root / "runs" / f"{name.replace('+', '-')}-{rep}"
                    out.parent.mkdir(parents=True, exist_ok=True)
                    result = run_once(config, extra, env, out)
                    results[name].append(result)
                    print(f"  rep {rep + 1} {name:<15} wall {result['wall_s']:6.1f} s  cpu {result['cpu_s']:6.1f} s"
                          f"  stages {result['stages_s']:6.1f} s  (load {load_average()})", flush=True)
        finally:
            for server in servers:
                server.stop()
    info["load_after"] = load_average()

    med = {name: {k: statistics.median(r[k] for r in rows) for k in ("wall_s", "cpu_s", "stages_s")}
           for name, rows in results.items()}
    print("\n" + table(results))
    print(f"\nload average before {info['load_before']}, after {info['load_after']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "servers_ready_s": ready, "runs": results,
                                               "median": med}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
