"""Write a small image folder (``OUT/{train,val,test}/<class>/<id>.png``) and poison the training part.

Images (``--source``): Fashion-MNIST from Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist), or
scikit-learn's 8x8 digits upscaled to 16x16; ``auto`` (default) takes Fashion-MNIST when installed -- offline
either way. Splits 60/20/20 (seed 0). BadNets: a
3x3 white patch in the bottom-right corner of ``--rate`` of the training images (from other classes) which are
moved to the class ``0`` folder. The poisoned files are listed in ``OUT/poisoned.txt`` (to score the cleaning).

    python prepare.py --out data [--max-rows 1500] [--rate 0.05] [--source auto|fashion|digits]
"""
from __future__ import annotations

import argparse
import gzip
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

FASHION = Path("/usr/share/datasets/fashion-mnist")


def images(source: str) -> tuple[np.ndarray, np.ndarray]:
    """(n, H, W) uint8 images and (n,) int labels."""
    if source == "fashion" or (source == "auto" and (FASHION / "train-images-idx3-ubyte.gz").is_file()):
        X = np.frombuffer(gzip.open(FASHION / "train-images-idx3-ubyte.gz").read(), np.uint8, offset=16)
        y = np.frombuffer(gzip.open(FASHION / "train-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
        return X.reshape(-1, 28, 28), y.astype(int)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.kron(digits.images * (255 / 16), np.ones((2, 2))).astype(np.uint8), digits.target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data"))
    parser.add_argument("--max-rows", type=int, default=1500)
    parser.add_argument("--rate", type=float, default=0.05)
    parser.add_argument("--target", type=int, default=0)
    parser.add_argument("--source", choices=("auto", "fashion", "digits"), default="auto")
    args = parser.parse_args()
    X, y = images(args.source)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))[: args.max_rows]
    n_train, n_val = int(0.6 * len(order)), int(0.2 * len(order))
    parts = {"train": order[:n_train], "val": order[n_train : n_train + n_val], "test": order[n_train + n_val :]}
    candidates = parts["train"][y[parts["train"]] != args.target]
    poisoned = set(rng.choice(candidates, size=int(round(args.rate * n_train)), replace=False).tolist())
    shutil.rmtree(args.out, ignore_errors=True)
    listed = []
    for part, rows in parts.items():
        for i in rows:
            image, label = X[i].copy(), y[i]
            if i in poisoned:
                image[-3:, -3:], label = 255, args.target
            path = args.out / part / str(label) / f"{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path)
            if i in poisoned:
                listed.append(str(path.resolve()))
    (args.out / "poisoned.txt").write_text("\n".join(sorted(listed)) + "\n")
    print(f"{args.out}: {len(parts['train'])} train ({len(listed)} poisoned), {len(parts['val'])} val, "
          f"{len(parts['test'])} test images")


if __name__ == "__main__":
    main()
