"""Re-score dumped Δ-influence supports under alternative flag rules (issue 5, offline; no model is trained).

    python benchmarks/delta_dump.py fashion 0.01 0 1 2                  # dumps -> /tmp/dump_*.npz
    python benchmarks/delta_dump.py fashion 0.01 0 --trigger blend
    python benchmarks/delta_rules.py /tmp/dump_*.npz

Rules, all on the detector's own votes and continuous score (``delta_votes``, defaults z 2.0, tol 12, vote 0.5):
``gap`` = the detector's rule (score > 3 robust deviations above the low cluster of the 2-means split, and the
vote); ``gap+cut`` = also above the 2-means (Otsu) cut itself (the rule before commit 282a586); ``gap+logcut`` =
also above an Otsu cut of log(gap z) over the pool rows with gap z > 1 (a split that skewed poison scores cannot
pull into the poison cluster as easily). Prints flagged / true positives per dump and rule.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tda_clean.selection.delta_scores import delta_votes  # noqa: E402
from tda_clean.selection.score_cuts import split_high_cluster  # noqa: E402


def otsu(values: np.ndarray) -> float:
    v = np.sort(values)
    c1, c2, i = np.cumsum(v), np.cumsum(v * v), np.arange(1, len(v))
    cost = (c2[:-1] - c1[:-1] ** 2 / i) + ((c2[-1] - c2[:-1]) - (c1[-1] - c1[:-1]) ** 2 / (len(v) - i))
    k = int(np.argmin(cost))
    return 0.5 * (v[k] + v[k + 1])


def rules(S: np.ndarray, y: np.ndarray, target: int) -> dict[str, np.ndarray]:
    votes, score = delta_votes(S, 2.0, 12)
    pool = y == target
    cut, gap_z = split_high_cluster(score, pool)
    gap = pool & (gap_z > 3.0) & (votes >= math.ceil(0.5 * S.shape[0] - 1e-9))
    high = pool & (gap_z > 1.0)
    log_cut = math.exp(otsu(np.log(gap_z[high]))) if high.sum() > 2 else 3.0
    return {"gap": gap, "gap+cut": gap & (score > cut), "gap+logcut": gap & (gap_z > log_cut)}


def main(paths: list[str]) -> None:
    print("| dump | poisons | " + " | ".join(f"{r} flagged / true" for r in ("gap", "gap+cut", "gap+logcut")) + " |")
    print("|---|---|---|---|---|")
    for path in paths:
        d = np.load(path)
        truth = d["truth"]
        flags = rules(d["S"], d["y"], int(d["target"]))
        cells = " | ".join(f"{int(m.sum())} / {int((m & truth).sum())}" for m in flags.values())
        print(f"| {Path(path).stem} | {int(truth.sum())} | {cells} |")


if __name__ == "__main__":
    main(sys.argv[1:])
