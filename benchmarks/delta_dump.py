"""Dump Δ-influence supports for offline flag-rule analysis (issue 5).

    python benchmarks/delta_dump.py fashion 0.01 1 2      # -> /tmp/dump_<dataset>_<rate>_<seed>.npz
    python benchmarks/delta_dump.py fashion 0.01 0 1 --trigger blend   # -> /tmp/dump_<dataset>_blend_<rate>_<seed>.npz
"""
import sys, numpy as np, torch
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.poison import _train, blend_queries, scenario
from tda_clean.config import parse_config
from tda_clean.selection import FitContext, make_detector
from tda_clean.models.factory import build_model


def main() -> None:
    torch.set_num_threads(2)
    args = sys.argv[1:]
    trigger = "patch"
    if "--trigger" in args:
        i = args.index("--trigger"); trigger = args[i + 1]; del args[i : i + 2]
    dataset = args[0]; rate = float(args[1])
    tag = "" if trigger == "patch" else f"{trigger}_"
    for seed in map(int, args[2:]):
        clean, bundle, model_cfg, train_cfg = scenario(dataset, trigger, rate, seed)
        X, y, truth = bundle.train.X, bundle.train.y, bundle.corrupted_mask
        model, _ = _train(model_cfg, train_cfg, bundle, X, y, seed)
        context = FitContext(seed=seed, make_model=lambda s: build_model(model_cfg, bundle.train.feature_shape, bundle.train.n_classes, s),
                             train_config=train_cfg, model=model, X_val=bundle.val.X, y_val=bundle.val.y, n_classes=bundle.train.n_classes)
        raw = {"kind": "delta_influence"}
        if trigger == "blend":
            raw.update(blend_queries(model, bundle, Path(f"/tmp/poison_queries_{dataset}_{rate}_{seed}.npy")))
        cfg = parse_config({"data": {"kind": "digits"}, "detector": raw}).detector
        det = make_detector(cfg).fit(X, y, context)
        np.savez(f"/tmp/dump_{dataset}_{tag}{rate}_{seed}.npz", S=det.supports_, y=y, truth=truth, target=det.target_, support=det.get_support())
        m = det.get_support(); print(dataset, rate, seed, "flagged", m.sum(), "tp", (m & truth).sum(), "poisons", truth.sum(), flush=True)


if __name__ == "__main__":
    main()
