"""Replay Δ-influence's data-side trigger rule (stamp / blend) on ``benchmarks/poison.py --dump`` pickles (issue 15,
round 7). The rule reads the flagged rows, the pool and the validation images; for a blend it also asks the
poisoned model (loaded from the ``--cache`` of the run) whether un-blended pool rows are still the target.

    python benchmarks/poison.py --dataset digits --trigger blend-patch --rates 0.01 0.05 --seeds 0 \\
        --detectors delta_influence --unlearn --no-retrain --threads 1 --cache CACHE --dump DIR
    python benchmarks/pattern_replay.py --cache CACHE DIR/*.pkl

Per dump: the rows flagged before the pattern rule ("before"), the stamp rule alone (round 6's default), and
stamp-or-blend under each candidate setting; precision / recall per cell and how many cells meet recall >= 0.99
at precision >= 0.8. Cells without a found trigger are listed, not scored. ``--retrain``: the model retrained
(seeded, as ``poison.py`` does) without the rows the default rule flags, and its attack success and accuracy --
one JSON line per cell to ``--out``; with ``--runs`` (the poison.py result files) a cell whose flags equal the
live detector's takes that run's retrain (only from runs that retrained: not ``--no-retrain``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

#: candidate settings of the blend estimate (BlendRule fields); "stamp only" is blend: null
CANDIDATES = {"stamp only": None, "blend (defaults)": {}, "blend, no model check": {"model": False},
              "blend, veto off": {"veto": False},
              "blend, ks 1.5": {"ks": 1.5}, "blend, ks 3": {"ks": 3.0}, "blend, bandwidth 0.1": {"bandwidth": 0.1}}


def cell(path: Path, cache: Path) -> dict | None:
    import torch

    from benchmarks.poison import load_dump
    from tda_clean.models.trainer import predict_proba

    torch.set_num_threads(1)
    loaded = load_dump(path, cache)
    if loaded is None:
        return None
    (d, bundle, model), det = loaded, loaded[0]["det"]
    before = (det.support_ | det.pattern_vetoed_) & ~det.pattern_added_
    return {"name": path.stem, "X": bundle.train.X, "Xv": bundle.val.X, "yv": bundle.val.y, "y": d["y"],
            "truth": d["truth"], "target": det.target_, "before": before, "row": d["row"], "live": det.support_,
            "probability": lambda images: predict_proba(model, images)[:, det.target_]}


def retrain(c: dict, flag: np.ndarray) -> dict:
    """The cell's model retrained without the ``flag`` rows: attack success and clean accuracy."""
    from benchmarks.poison import _evaluate, _train, scenario

    row = c["row"]
    _, bundle, model_cfg, train_cfg = scenario(row["dataset"], row["trigger"], row["rate"], row["seed"])
    model, _ = _train(model_cfg, train_cfg, bundle, bundle.train.X[~flag], bundle.train.y[~flag], row["seed"])
    return _evaluate(model, bundle)


def replay(c: dict, blend: dict | None) -> tuple[np.ndarray, str]:
    from tda_clean.config import BlendRule, SharedPatternRule
    from tda_clean.selection.shared_pattern import pattern_flags

    blend = None if blend is None else dict(blend)
    use_model = blend is None or blend.pop("model", True)
    rule = SharedPatternRule(blend=None if blend is None else BlendRule(**blend))
    flags = pattern_flags(c["X"], c["y"] == c["target"], c["before"], c["Xv"], c["yv"], c["target"], rule,
                          c["probability"] if use_model else None)
    return (c["before"] & ~flags.lacks) | flags.carries, f"{flags.kind} {flags.pixels}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dumps", nargs="+")
    parser.add_argument("--cache", required=True, help="the model cache of the poison.py runs")
    parser.add_argument("--retrain", action="store_true", help="retrain without the default rule's flags")
    parser.add_argument("--out", default=None, help="JSON lines of the default rule per cell (with --retrain)")
    parser.add_argument("--runs", nargs="*", default=None,
                        help="poison.py result files: a cell whose replayed flags equal the live detector's reuses "
                             "that run's retrain instead of retraining")
    args = parser.parse_args(argv)
    cells, missing = [], []
    for p in sorted(args.dumps):
        c = cell(Path(p), Path(args.cache))
        (cells.append(c) if c is not None else missing.append(Path(p).stem))
    print("| rule | goal met | " + " | ".join(c["name"] for c in cells) + " |")
    print("|---|---|" + "---|" * len(cells))
    rows = {"before the pattern rule": lambda c: (c["before"], "")}
    rows.update({name: (lambda c, b=blend: replay(c, b)) for name, blend in CANDIDATES.items()})
    for name, rule in rows.items():
        met, parts = 0, []
        for c in cells:
            flag, kind = rule(c)
            tp = int((flag & c["truth"]).sum())
            prec, rec = tp / max(int(flag.sum()), 1), tp / int(c["truth"].sum())
            met += prec >= 0.8 and rec >= 0.99
            parts.append(f"{prec:.3f} / {rec:.3f}" + (f" ({kind})" if kind else ""))
        print(f"| {name} | {met} of {len(cells)} | " + " | ".join(parts) + " |")
    if missing:
        print("no trigger found:", ", ".join(missing))
    if args.retrain:
        import torch

        torch.set_num_threads(1)
        runs = {}
        for path in args.runs or []:
            for line in open(path):
                r = json.loads(line)
                runs[f"{r['dataset']}_{r['trigger']}_{r['rate']}_{r['seed']}"] = r["detectors"]["delta_influence"]
        for c in cells:
            flag, kind = replay(c, CANDIDATES["blend (defaults)"])
            tp = int((flag & c["truth"]).sum())
            live = runs.get(c["name"])
            same = live is not None and live.get("retrained", False) and (flag == c["live"]).all()
            out = {"cell": c["name"], "pattern": kind, "n_flagged": int(flag.sum()),
                   "precision": tp / max(int(flag.sum()), 1), "recall": tp / int(c["truth"].sum()),
                   "n_added": int((flag & ~c["before"]).sum()), "n_removed": int((c["before"] & ~flag).sum()),
                   "before_rule": [int((c["before"] & c["truth"]).sum()) / max(int(c["before"].sum()), 1),
                                   int((c["before"] & c["truth"]).sum()) / int(c["truth"].sum())],
                   "same_as_live": bool((flag == c["live"]).all()),
                   "before": c["row"].get("before"), "clean_model": c["row"].get("clean_model"),
                   "after_retrain": live["after_retrain"] if same else retrain(c, flag)}
            print(json.dumps(out), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
