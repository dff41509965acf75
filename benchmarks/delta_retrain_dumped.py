"""Retrain Fashion 1% without the rows Δ-influence flagged in a dump of benchmarks/delta_dump.py.

    python benchmarks/delta_retrain_dumped.py [SEED ...]      # default: 1 2
"""
import sys, math, numpy as np, torch
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.poison import scenario, _train, _evaluate


def main() -> None:
    torch.set_num_threads(2)
    for seed in [int(a) for a in sys.argv[1:]] or [1, 2]:
        d = np.load(f"/tmp/dump_fashion_0.01_{seed}.npz")
        mask = d["support"]  # the detector's own flags at dump time
        clean, bundle, model_cfg, train_cfg = scenario("fashion", "patch", 0.01, seed)
        assert (bundle.corrupted_mask == d["truth"]).all()
        X, y = bundle.train.X, bundle.train.y
        m, t = _train(model_cfg, train_cfg, bundle, X[~mask], y[~mask], seed)
        print(seed, "flagged", int(mask.sum()), "tp", int((mask & d["truth"]).sum()), "retrain", round(t, 1), _evaluate(m, bundle), flush=True)


if __name__ == "__main__":
    main()
