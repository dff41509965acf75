"""Detect time of ``configs/adult_fairness.yaml``: the reduced row-HVP form against the (n, p) matrix form.

    python benchmarks/group_detect_speed.py [--repeats 3] [--threads 1] [--json FILE] [--set KEY=VALUE ...]

Loads the data and trains the before-model once (the pipeline's own ``load`` and ``train_before`` stages in a
temporary run folder), then runs the ``detect`` stage ``repeats`` times per variant, interleaved in one process
(matrix, reduced, matrix, reduced, ...):

- ``matrix``: :class:`~tda_clean.influence.group_minimax.ParameterChangeModel` as it was before issue 16: every
  projected-gradient step builds the per-row HVP matrices ``Ht_i u`` and ``Ht_i b`` (n, p) with
  ``GroupInfluence.row_hvps`` and reduces them (``R^T w``, ``R b``);
- ``reduced``: the library's form: ``GroupInfluence.weighted_hvp`` (one HVP of the w-weighted loss) and
  ``GroupInfluence.row_bilinear`` (per-row forward-over-forward ``u^T Ht_i b``).

Reports the detect seconds of each run, the medians, the ratio matrix / reduced of the medians and of each
interleaved pair, and whether every run selected exactly the same rows (the script fails otherwise).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.overhead import load_average, machine  # noqa: E402


def matrix_change_model():
    """The pre-issue-16 ParameterChangeModel (builds the (n, p) per-row HVP matrices)."""
    from tda_clean.influence.group_minimax import ParameterChangeModel, _Cache

    class MatrixChangeModel(ParameterChangeModel):
        def change(self, w, m):
            w = w.to(self.G)
            c1, a1, a2 = self.coef(m)
            u = self._solve(self.G.T @ w)
            if self.order == 1:
                return c1 * u, _Cache(u)
            cache = _Cache(u)
            cache.Ru = self.gi.row_hvps(u)
            return a1 * u + a2 * self._solve(cache.Ru.T @ w), cache

        def pullback(self, w, m, v, cache):
            w = w.to(self.G)
            c1, a1, a2 = self.coef(m)
            b = self._solve(v.to(self.G))
            if self.order == 1:
                return c1 * (self.G @ b)
            Rb = self.gi.row_hvps(b)
            return self.G @ (a1 * b + a2 * self._solve(Rb.T @ w)) + a2 * (cache.Ru @ b)

    return MatrixChangeModel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "adult_fairness.yaml"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--json")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from tda_clean.config import load_config
    from tda_clean.influence import group_minimax
    from tda_clean.pipeline import stage_detect, stage_load, stage_train
    from tda_clean.run_dir import SELECTION, open_run_dir
    from tda_clean.selection import Selection

    config = load_config(args.config, ["tracking.enabled=false", *args.overrides])
    reduced_cls, matrix_cls = group_minimax.ParameterChangeModel, matrix_change_model()
    la_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        ctx = open_run_dir(config, Path(tmp) / "run")
        stage_load(ctx)
        stage_train(ctx, "before")
        seconds: dict[str, list[float]] = {"matrix": [], "reduced": []}
        selections: dict[str, list[np.ndarray]] = {"matrix": [], "reduced": []}
        for r in range(args.repeats):
            for variant, cls in (("matrix", matrix_cls), ("reduced", reduced_cls)):
                group_minimax.ParameterChangeModel = cls
                try:
                    start = time.perf_counter()
                    stage_detect(ctx)
                    seconds[variant].append(time.perf_counter() - start)
                finally:
                    group_minimax.ParameterChangeModel = reduced_cls
                selections[variant].append(np.flatnonzero(Selection.load(ctx.path(SELECTION)).mask))
                print(f"repeat {r} {variant}: detect {seconds[variant][-1]:.2f} s, "
                      f"{len(selections[variant][-1])} rows", flush=True)
    la_after = load_average()
    reference = selections["matrix"][0]
    identical = all(np.array_equal(s, reference) for runs in selections.values() for s in runs)
    med = {k: statistics.median(v) for k, v in seconds.items()}
    out = {
        "config": str(Path(args.config).name), "overrides": args.overrides, "threads": args.threads,
        "machine": machine(), "load_average_before": la_before, "load_average_after": la_after,
        "seconds": seconds, "median_s": med, "speedup_of_medians": med["matrix"] / med["reduced"],
        "speedup_per_pair": [a / b for a, b in zip(seconds["matrix"], seconds["reduced"])],
        "selected_rows": int(len(reference)), "identical_selections": bool(identical),
    }
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    if not identical:
        sys.exit("the two forms selected different rows")


if __name__ == "__main__":
    main()
