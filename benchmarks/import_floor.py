"""What bounds the plain path's import time: ``import tda_clean.pipeline`` against the third-party modules any run
needs (torch, scikit-learn's estimator base and ColumnTransformer, pandas, pydantic), each in a fresh interpreter.

    python benchmarks/import_floor.py [--repeats 5] [--json FILE]

Variants run interleaved, ``repeats`` times each, one thread; reported per variant: median wall and median CPU
seconds (user + system of the child), and the library's own share = pipeline - floor. Beyond the floor,
``tda_clean.pipeline`` imports its own modules, more of scikit-learn and pydantic, PyYAML and tqdm (the script
prints the new top-level packages).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.overhead import machine  # noqa: E402

FLOOR = "import torch, sklearn.base, sklearn.compose, pandas, pydantic"
VARIANTS = {
    "torch": "import torch",
    "floor (torch, sklearn, pandas, pydantic)": FLOOR,
    "tda_clean.pipeline": "import tda_clean.pipeline",
}
EXTRA = (f"import sys; {FLOOR}; before = {{m.split('.')[0] for m in sys.modules}}; import tda_clean.pipeline; "
         "print(sorted({m.split('.')[0] for m in sys.modules} - before))")


def timed(code: str, env: dict[str, str]) -> tuple[float, float]:
    """(wall s, CPU s) of ``python -c code`` in a fresh interpreter."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=ROOT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    extra = subprocess.run([sys.executable, "-c", EXTRA], env=env, check=True, cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    for code in VARIANTS.values():  # warm the file cache
        timed(code, env)
    loads = [os.getloadavg()[0]]
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name, code in VARIANTS.items():
            samples[name].append(timed(code, env))
        loads.append(os.getloadavg()[0])
    result = {name: {"wall_s": statistics.median(w for w, _ in s), "cpu_s": statistics.median(c for _, c in s),
                     "samples": s} for name, s in samples.items()}
    floor, ours = result["floor (torch, sklearn, pandas, pydantic)"], result["tda_clean.pipeline"]
    print(f"machine: {machine()}; load average {min(loads):.2f}-{max(loads):.2f}; {args.repeats} interleaved repeats")
    print(f"modules tda_clean.pipeline imports beyond the floor (new top-level packages): {extra}")
    print("| import | median wall s | median CPU s |\n|---|---|---|")
    for name, r in result.items():
        print(f"| {name} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} |")
    print(f"| library's own share (pipeline - floor) | {ours['wall_s'] - floor['wall_s']:.2f} | "
          f"{ours['cpu_s'] - floor['cpu_s']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"load": loads, "beyond_floor": extra, **result}, indent=1))


if __name__ == "__main__":
    main()
