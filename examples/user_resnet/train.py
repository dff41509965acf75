"""The user's own training script: read the image folders, train my_resnet, save a state_dict checkpoint.

    python train.py --data data --out net.pt
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from my_resnet import accuracy, fit, make_resnet
from tda_clean.models.user import TrainSet  # (X, y, weights): what tda-clean hands train.function too


def read_folder(root: Path, classes: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, H, W) float32 in [0, 1] and (n,) class positions: the layout tda-clean gives the model too."""
    files = sorted(f for c in classes for f in (root / c).glob("*.png"))
    X = np.stack([np.asarray(Image.open(f).convert("L")) for f in files]).astype(np.float32) / 255
    return torch.as_tensor(X), torch.as_tensor([classes.index(f.parent.name) for f in files])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path("net.pt"))
    args = parser.parse_args()
    classes = sorted(d.name for d in (args.data / "train").iterdir() if d.is_dir())  # tda-clean sorts them too
    train, val = read_folder(args.data / "train", classes), read_folder(args.data / "val", classes)
    torch.manual_seed(0)
    model = make_resnet(tuple(train[0].shape[1:]), len(classes))
    fit(model, TrainSet(*train), TrainSet(*val), seed=0)
    torch.save(model.state_dict(), args.out)
    print(f"{args.out}: validation accuracy {accuracy(model, *val):.3f}")


if __name__ == "__main__":
    main()
