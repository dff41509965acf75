"""Child process of ``test_stream_rss.py``: streamed self-influence and harmful detection on a memory-mapped
training set, printing one JSON line with the resident memory before and the peak after.

    python tests/influence/stream_rss_child.py X.npy y.npy [--in-memory]

``X.npy`` (n, d) float32 is opened with ``np.load(mmap_mode="r")`` (``--in-memory``: loaded whole, the
control that must exceed the budget). Model: a seeded MLP d -> 8 -> 10 in eval mode; influence over its head
with EK-FAC (float32), gradient blocks of 32 MiB, passes of 512 rows; validation: the first 64 rows. Both
detectors run once on 512 rows first, so the baseline includes lazily imported modules.
"""
from __future__ import annotations

import json
import sys


def status_mb(key: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process in MiB. Not ``ru_maxrss``: Linux
    keeps it across ``execve``, so a child forked from a large parent (a long pytest run) reports the parent's
    resident size."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def main(argv: list[str]) -> None:
    import numpy as np
    import torch

    from tda_clean.config import HarmfulDetector, SelfInfluenceDetector, TrainConfig
    from tda_clean.models.factory import MLP
    from tda_clean.selection import FitContext
    from tda_clean.selection.influence_detectors import HarmfulSelector, SelfInfluenceSelector

    torch.set_num_threads(1)
    y = np.load(argv[1])
    torch.manual_seed(0)
    X = np.load(argv[0], mmap_mode="r")
    model = MLP(X.shape[1], 10, (8,)).eval()
    Xv, yv = np.array(X[:64]), y[:64]
    context = FitContext(seed=0, model=model, train_config=TrainConfig(l2=1e-3), X_val=Xv, y_val=yv)
    fields = dict(solver="ekfac", params="head", damping=0.01, max_flagged=100, influence_memory_mb=32,
                  influence_batch_size=512)
    def run(X, y):
        return (SelfInfluenceSelector(SelfInfluenceDetector(**fields)).fit(X, y, context),
                HarmfulSelector(HarmfulDetector(**fields)).fit(X, y, context))

    run(np.array(X[:512]), y[:512])  # warm-up: lazily imported modules and kernels are not data
    base = status_mb("VmRSS")
    if "--in-memory" in argv:
        X = np.load(argv[0])
    si, harm = run(X, y)
    peak = status_mb("VmHWM")
    print(json.dumps({"n": int(len(y)), "base_mb": base, "peak_mb": peak, "flagged": int(si.support_.sum()),
                      "harmful": int(harm.support_.sum()), "finite": bool(np.isfinite(si.scores_).all()
                                                                           and np.isfinite(harm.scores_).all())}))


if __name__ == "__main__":
    main(sys.argv[1:])
