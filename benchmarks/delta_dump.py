"""Dump Δ-influence supports for offline flag-rule analysis (issue 5).

    python benchmarks/delta_dump.py fashion 0.01 1 2      # -> /tmp/dump_<dataset>_<rate>_<seed>.npz
"""
import sys, numpy as np, torch
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.poison import scenario, _train
from tda_clean.config import parse_config
from tda_clean.selection import FitContext, make_detector
from tda_clean.models.factory import build_model


def main() -> None:
    torch.set_num_threads(2)
    dataset = sys.argv[1]; rate = float(sys.argv[2])
    for seed in map(int, sys.argv[3:]):
        clean, bundle, model_cfg, train_cfg = scenario(dataset, "patch", rate, seed)
        X, y, truth = bundle.train.X, bundle.train.y, bundle.corrupted_mask
        model, _ = _train(model_cfg, train_cfg, bundle, X, y, seed)
        context = FitContext(seed=seed, make_model=lambda s: build_model(model_cfg, bundle.train.feature_shape, bundle.train.n_classes, s),
                             train_config=train_cfg, model=model, X_val=bundle.val.X, y_val=bundle.val.y, n_classes=bundle.train.n_classes)
        cfg = parse_config({"data": {"kind": "digits"}, "detector": {"kind": "delta_influence"}}).detector
        det = make_detector(cfg).fit(X, y, context)
        np.savez(f"/tmp/dump_{dataset}_{rate}_{seed}.npz", S=det.supports_, y=y, truth=truth, target=det.target_, support=det.get_support())
        m = det.get_support(); print(dataset, rate, seed, "flagged", m.sum(), "tp", (m & truth).sum(), "poisons", truth.sum(), flush=True)


if __name__ == "__main__":
    main()
