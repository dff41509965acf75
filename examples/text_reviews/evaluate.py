"""Detection quality of a run against the label noise prepare.py injected, and the before/after accuracy.

    python evaluate.py RUN_DIR NOISE_CSV [--json OUT]

reads ``RUN_DIR/audit.csv`` (one row per flagged training row, ``row_id`` = the CSV's ``id``),
``RUN_DIR/report.json`` and ``NOISE_CSV`` (``id, flipped, clean_label`` from prepare.py), prints and returns
``precision`` (flagged rows that were flipped / flagged), ``recall`` (flipped rows flagged / flipped),
``relabel_correct`` (relabelled flipped rows whose new label is the clean one / relabelled flipped rows), the
counts, and the test ``accuracy_before`` / ``accuracy_after``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd


def evaluate(run_dir: Path, noise_csv: Path) -> dict[str, float | int]:
    audit = pd.read_csv(run_dir / "audit.csv", keep_default_na=False)
    noise = pd.read_csv(noise_csv).set_index("id")
    report = json.loads((run_dir / "report.json").read_text())
    flagged = audit[audit["action"] != "keep"]  # rows rejected in a review are not acted on
    truth = set(noise.index[noise["flipped"]])
    hits = flagged[flagged["row_id"].isin(truth)]
    relabelled = hits[hits["action"] == "relabel"]
    return {
        "n_flipped": len(truth),
        "n_flagged": len(flagged),
        "true_positives": len(hits),
        "precision": len(hits) / len(flagged) if len(flagged) else 0.0,
        "recall": len(hits) / len(truth) if truth else 0.0,
        "relabel_correct": (float((relabelled["new_label"].to_numpy()
                                   == noise.loc[relabelled["row_id"], "clean_label"].to_numpy()).mean())
                            if len(relabelled) else float("nan")),
        "accuracy_before": report["before"]["accuracy"],
        "accuracy_after": report["after"]["accuracy"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("noise_csv", type=Path)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    figures = evaluate(args.run_dir, args.noise_csv)
    for key, value in figures.items():
        print(f"{key:16s} {value:.4f}" if isinstance(value, float) else f"{key:16s} {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
