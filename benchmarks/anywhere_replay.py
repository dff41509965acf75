"""Replay candidate flag rules of Δ-influence offline on ``benchmarks/poison.py --dump`` pickles (issue 15, round 5).

    python benchmarks/poison.py --dataset digits --trigger solid --rates 0.01 0.05 --seeds 0 \
        --detectors delta_influence --unlearn --no-retrain --threads 1 --cache /tmp/poison15-cache --dump DIR
    python benchmarks/anywhere_replay.py --cache /tmp/poison15-cache DIR/*.pkl

Per dump, with the cached poisoned model, over the pool (training rows labelled the found target): the round-3
rules and the round-4 source flags recomputed from the detector's state, the erased-image margin
``max_{c != t} log p_c - log p_t`` (positive: the erased image is no longer the target), the pixel-space
(outside the trigger region) 10-neighbour other-label share of pool rows and of the clean validation rows of the
target class. Prints precision / recall per rule and cell, and how many cells meet recall >= 0.99 at
precision >= 0.8. ``round 4`` is the rule before round 5, ``live`` the detector's own support in the dump.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


#: shared-pattern rule candidates (round 6): match tolerance, agreement among flagged rows, share of clean rows
PATTERN_TOL, PATTERN_AGREE, PATTERN_CLEAN = 0.05, (0.6, 0.8), (0.1, 0.25)


def features(path: Path, cache: Path) -> dict | None:
    import torch

    from benchmarks.poison import load_dump
    from tda_clean.models.trainer import predict_proba
    from tda_clean.selection.score_cuts import separated_high_group, split_high_cluster
    from tda_clean.config import SharedPatternRule
    from tda_clean.selection.shared_pattern import shared_pattern
    from tda_clean.selection.source_evidence import pixel_shares
    from tda_clean.selection.trigger_search import erase_region

    torch.set_num_threads(1)
    loaded = load_dump(path, cache)
    if loaded is None:
        return None
    d, bundle, model = loaded
    det, y, truth = d["det"], d["y"], d["truth"]
    X = bundle.train.X
    s, t = det.spec, det.target_
    pool = y == t
    _, gap = split_high_cluster(det.delta_scores_, pool)
    r3 = pool & (gap > s.min_gap_z) & (det.votes_ >= det.info_["votes_needed"])
    r3 |= det.erased_ & ((gap > s.erase_min_gap_z) | det.info_.get("erasure_trusted", False))
    if det.info_["cut_separated"]:
        log_cut, _ = separated_high_group(det.delta_scores_, pool & (gap > s.erase_min_gap_z))
        r3 &= np.log(np.maximum(det.delta_scores_, 1e-300)) > log_cut
    round4 = r3 | det._source_flags(model, X, y, pool & ~r3, t, gap)
    region, fill = det._erase
    rows = np.flatnonzero(pool)
    Xv = bundle.val.X[bundle.val.y == t]

    def margin(images):
        lp = np.log(np.clip(predict_proba(model, erase_region(images, region, fill)), 1e-12, 1))
        other = lp.copy()
        other[:, t] = -np.inf
        return other.max(1) - lp[:, t], np.exp(lp[:, t])

    m, p = margin(X[rows])
    mv, _ = margin(Xv)
    share, vshare = pixel_shares(X, y, rows, region, t, ~(pool & (gap > s.erase_min_gap_z)), 10, Xv)
    patterns = {}
    for agree in PATTERN_AGREE:
        for clean in PATTERN_CLEAN:
            pat = shared_pattern(X[det.support_], bundle.val.X, SharedPatternRule(tol=PATTERN_TOL, agree=agree, clean=clean))
            patterns[agree, clean] = (pat.size, pat.match(X[rows]))
    return {"name": path.stem, "truth": truth[rows], "n_poison": int(truth.sum()), "gap": gap[rows],
            "round4": round4[rows], "live": det.support_[rows], "m": m, "p": p, "mv": mv, "share": share,
            "vshare": vshare, "patterns": patterns}


def rules() -> dict:
    def add_pixels(g, calibrated=True, veto=0.0):
        def rule(c):
            need = max(0.9, c["vshare"].max() + 1e-6) if calibrated else 0.9
            out = c["round4"] | ((c["gap"] > g) & (c["p"] < 0.5) & (c["share"] >= need - 1e-9))
            return out if veto is None else out & ~(c["share"] <= veto + 1e-9)
        return rule

    out = {"round 4": lambda c: c["round4"], "live": lambda c: c["live"],
           "(1) veto margin < median of clean val": lambda c: c["round4"] & ~(c["m"] < np.median(c["mv"])),
           "(2) add margin > max of clean val, gap > 0.5": lambda c: c["round4"] | ((c["m"] > c["mv"].max()) & (c["gap"] > 0.5)),
           "pixel veto (share 0) only": lambda c: c["round4"] & ~(c["share"] <= 1e-9)}
    def pattern(agree, add, veto=None, min_size=3):
        def rule(c):
            size, match = c["patterns"][agree]
            if size < min_size:
                return c["live"]
            out = c["live"] & ~(match < veto) if veto is not None else c["live"]
            return out | (match >= add)
        return rule

    for key in [(a, c) for a in PATTERN_AGREE for c in PATTERN_CLEAN]:
        for size in (2, 3):
            out[f"pattern {key} size >= {size}: add >= 0.9"] = pattern(key, 0.9, min_size=size)
            out[f"pattern {key} size >= {size}: add >= 0.9, veto < 0.5"] = pattern(key, 0.9, 0.5, min_size=size)
    for g in (-np.inf, -1.0, 0.5):
        out[f"pixel add gap > {g}, calibrated, veto"] = add_pixels(g)
        out[f"pixel add gap > {g}, not calibrated, veto"] = add_pixels(g, calibrated=False)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dumps", nargs="+")
    parser.add_argument("--cache", required=True)
    args = parser.parse_args(argv)
    cells = [c for c in (features(Path(p), Path(args.cache)) for p in sorted(args.dumps)) if c is not None]
    print("| rule | goal met | " + " | ".join(c["name"] for c in cells) + " |")
    print("|---|---|" + "---|" * len(cells))
    for name, rule in rules().items():
        met, parts = 0, []
        for c in cells:
            flag = rule(c)
            tp = int((flag & c["truth"]).sum())
            prec, rec = tp / max(int(flag.sum()), 1), tp / c["n_poison"]
            met += prec >= 0.8 and rec >= 0.99
            parts.append(f"{prec:.3f} / {rec:.3f}")
        print(f"| {name} | {met} of {len(cells)} | " + " | ".join(parts) + " |")
    for key in [(a, c) for a in PATTERN_AGREE for c in PATTERN_CLEAN]:
        print(f"pattern elements {key}:", {c["name"]: c["patterns"][key][0] for c in cells})
    return 0


if __name__ == "__main__":
    sys.exit(main())
