"""Python API overhead: ``tda_clean.clean`` on DataFrames against the CLI's library path, on the quickstart data.

    python benchmarks/api_overhead.py [--repeats 3] [--threads 1] [--json FILE]

The quickstart rows (Adult, binary race, 45,222 rows) are written once to a CSV with a ``split`` column holding
the quickstart's own stratified split (seed 0, val 0.15, test 0.25). Each repetition then runs, interleaved
(cli, api, cli, api, ...), each in a fresh Python process and a fresh run folder (no resume):

- ``cli``: what ``tda-clean run CONFIG --engine local --set tracking.enabled=false`` does:
  ``run_pipeline(load_config(CONFIG, ["tracking.enabled=false"]), out)`` on a csv config (``split_column``);
- ``api``: ``pd.read_csv`` of the same file, its rows split by the column into three DataFrames, then
  ``tda_clean.clean(train, val=, test=, label=, groups=, model=, detector=, action=, config=)``.

Both carry the quickstart's settings (seed, the ``group_flip`` scenario on ``sex``, logistic model, L-BFGS
training, cleanlab with 5 folds, relabel, gate) with tracking off. Reported per variant: the wall time of the whole
process (imports, reading the data and the call: the headline figure), its CPU time, and the wall time of the
call alone (``run_pipeline`` reads the CSV inside it; for ``clean`` the DataFrames are already in memory);
ratio api / cli of the medians and of each interleaved pair. Both runners import the library (torch included)
before their call's timer starts. Both variants must report the same before / after
accuracy and flagged count, or the script fails (the comparison would not be like for like).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.overhead import load_average, machine  # noqa: E402

LABEL, GROUPS = "income_gt_50k", ["sex", "race"]


def settings() -> dict:
    """The quickstart config less its data and split sections, tracking off."""
    raw = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text(encoding="utf-8"))
    raw.pop("data"), raw.pop("split")
    raw["tracking"] = {**raw.get("tracking", {}), "enabled": False}
    return raw


def prepare(folder: Path) -> Path:
    """Write ``adult.csv`` (quickstart rows + ``split``) and ``config.yaml`` (csv source); return the config path."""
    from tda_clean.config import SplitConfig
    from tda_clean.data.sources import adult_frame
    from tda_clean.data.splits import stratified_split
    from tda_clean.data.tabular import encode_labels

    quick = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text(encoding="utf-8"))
    df = adult_frame(quick["data"]["race"])
    y, _ = encode_labels(df[LABEL], LABEL)
    split = ["train"] * len(df)
    for name, idx in zip(("train", "val", "test"), stratified_split(y, SplitConfig(**quick["split"]), quick["seed"])):
        for i in idx:
            split[i] = name
    df = df.copy().assign(split=split)  # copy: one block, no fragmentation warning
    df.to_csv(folder / "adult.csv", index=False)
    config = {**settings(), "data": {"kind": "csv", "path": "adult.csv", "label": LABEL, "groups": GROUPS,
                                     "split_column": "split"}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return folder / "config.yaml"


def runner(variant: str, config: Path, out: Path) -> dict:
    """One run in this process; returns the call's wall time and the figures both variants must agree on."""
    if variant == "cli":
        from tda_clean.config import load_config
        from tda_clean.pipeline import run_pipeline

        start = time.perf_counter()
        report = run_pipeline(load_config(config, ["tracking.enabled=false"]), out)
    else:
        import pandas as pd

        import tda_clean
        import tda_clean.api  # noqa: F401  (its imports -- torch, the pipeline -- outside the call's timer, as for cli)
        import tda_clean.pipeline  # noqa: F401

        df = pd.read_csv(config.parent / "adult.csv")
        parts = {k: df[df["split"] == k].drop(columns="split") for k in ("train", "val", "test")}
        base = settings()
        model, detector, action = base.pop("model"), base.pop("detector"), base.pop("action")
        start = time.perf_counter()
        report = tda_clean.clean(parts["train"], val=parts["val"], test=parts["test"], label=LABEL, groups=GROUPS,
                                 model=model, detector=detector, action=action, config=base, output=out).to_dict()
    call = time.perf_counter() - start
    return {"call_s": call, "status": report["status"], "before": report["before"]["accuracy"],
            "after": report["after"]["accuracy"], "n_flagged": report["selection"].get("n_flagged"),
            "n_train": report["dataset"]["n_train"], "n_corrupted": report["dataset"].get("n_corrupted"),
            "stages_s": report["timings_s"]}


def run_once(variant: str, config: Path, out: Path, threads: int | None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--runner", variant, "--config", str(config),
           "--output", str(out)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    env = {**os.environ, **({k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")} if threads else {})}
    proc = subprocess.run(cmd, cwd=config.parent, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"wall_s": wall, "cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
            **result}


def _each(rs: list[dict], key: str) -> str:
    return ", ".join(f"{r[key]:.1f}" for r in rs)


def table(runs: dict[str, list[dict]]) -> str:
    med = {v: {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "cpu_s", "call_s")} for v, rs in runs.items()}
    lines = ["| variant | median process wall (s) | process wall of each run (s) | median CPU (s) | median call wall (s) "
             "| call wall of each run (s) |", "|---|---:|---|---:|---:|---|"]
    for v, rs in runs.items():
        lines.append(f"| {v} | {med[v]['wall_s']:.1f} | {_each(rs, 'wall_s')} | "
                     f"{med[v]['cpu_s']:.1f} | {med[v]['call_s']:.1f} | {_each(rs, 'call_s')} |")
    pairs = {k: [a[k] / c[k] for c, a in zip(runs["cli"], runs["api"])] for k in ("wall_s", "cpu_s", "call_s")}
    lines.append("")
    for v, rs in runs.items():
        stages = {k: statistics.median(r["stages_s"].get(k, 0.0) for r in rs) for k in rs[0]["stages_s"]}
        lines.append(f"- {v}, median stage seconds: " + ", ".join(f"{k} {t:.1f}" for k, t in stages.items()))
    for k, name in (("wall_s", "process wall"), ("cpu_s", "CPU"), ("call_s", "call wall")):
        lines.append(f"- api / cli, {name}: ratio of medians {med['api'][k] / med['cli'][k]:.3f}; per interleaved "
                     f"pair {', '.join(f'{p:.3f}' for p in pairs[k])} (min {min(pairs[k]):.3f}, max {max(pairs[k]):.3f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the raw timings here")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS / MKL_NUM_THREADS of both variants' processes "
                        "(default: inherited); 1 keeps CPU time steady on a loaded 2-core machine")
    parser.add_argument("--runner", choices=("cli", "api"), help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.runner:
        print(json.dumps(runner(args.runner, args.config, args.output)))
        return 0
    info = {**machine(), "repeats": args.repeats, "threads": args.threads, "load_before": load_average()}
    print(f"machine: {info['cpu']}, {info['cores']} cores, Python {info['python']}; load average before: "
          f"{info['load_before']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="tda-clean-api-overhead-") as tmp:
        root = Path(tmp)
        config = prepare(root)
        runs: dict[str, list[dict]] = {"cli": [], "api": []}
        for rep in range(args.repeats):
            for variant in runs:
                result = run_once(variant, config, root / "runs" / f"{variant}-{rep}", args.threads)
                runs[variant].append(result)
                print(f"  rep {rep + 1} {variant}  process wall {result['wall_s']:6.1f} s  cpu {result['cpu_s']:6.1f} s"
                      f"  call {result['call_s']:6.1f} s  accuracy {result['before']:.4f} -> {result['after']:.4f}"
                      f"  flagged {result['n_flagged']}  (load {load_average()})", flush=True)
    same = {k: {r[k] for rs in runs.values() for r in rs} for k in ("before", "after", "n_flagged", "n_train")}
    info["load_after"] = load_average()
    print(f"load average after: {info['load_after']}")
    print(table(runs))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "runs": runs}, indent=2), encoding="utf-8")
    if any(len(v) != 1 for v in same.values()):
        print(f"the variants disagree: {same}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
