"""Shared pieces of the influence benchmarks: data, model settings, training, cache, timing.

This module imports only torch / numpy / scikit-learn (never ``tda_clean``) so the peer environment
(``benchmarks/.venv-peers``) can load the same data, the same architectures and the same trained weights.
The architectures below are line-for-line copies of ``tda_clean.models.factory.MLP`` / ``SmallCNN`` with
identical parameter names, so a ``state_dict`` saved in one environment loads in the other; ``lds.py``
checks this by building the factory model and loading the weights into it.

Data: scikit-learn's 8x8 digits (1,797 images, pixels / 16), stratified 75/25 train/test split with seed 0
(1,347 training rows, 450 test rows).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import resource
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
RESULTS = HERE / "results"

SPLIT_SEED = 0
TEST_FRACTION = 0.25
N_CLASSES = 10

# Model + training settings of the benchmark models (kept small: each is retrained 100 times on 2 cores).
# l2 is the trainer's coefficient (loss = mean CE + l2/2 ||theta||^2), part of the Hessian.
MODELS: dict[str, dict] = {
    "mlp": {
        "model": {"kind": "mlp", "hidden": [64]},
        "train": {"optimizer": "adam", "l2": 1e-3, "epochs": 30, "lr": 1e-2, "batch_size": 128, "device": "cpu"},
        "init_seed": 0,
        "tracin_every": 5,
    },
    "cnn": {
        "model": {"kind": "cnn", "channels": [8, 16], "hidden": 32},
        "train": {"optimizer": "adam", "l2": 1e-3, "epochs": 20, "lr": 1e-2, "batch_size": 128, "device": "cpu"},
        "init_seed": 0,
        "tracin_every": 5,
    },
}


# ------------------------------------------------------------------------------------------------ data
def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(X_train, y_train, X_test, y_test)``: X float32 (n, 8, 8) in [0, 1], y int64."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    X = (d.data / 16.0).reshape(-1, 8, 8).astype(np.float32)
    y = d.target.astype(np.int64)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y)
    return Xtr, ytr, Xte, yte


# --------------------------------------------------------------------------- architectures (peer copies)
class MLP(nn.Module):
    """Copy of ``tda_clean.models.factory.MLP`` (same parameter names)."""

    def __init__(self, n_features: int, n_classes: int, hidden: tuple[int, ...]):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_classes)

    def features(self, x):
        return self.body(x.flatten(1))

    def forward(self, x):
        return self.head(self.features(x))


class SmallCNN(nn.Module):
    """Copy of ``tda_clean.models.factory.SmallCNN`` (same parameter names)."""

    def __init__(self, in_shape, n_classes, channels, hidden):
        super().__init__()
        c, h, w = self.in_shape = in_shape
        c1, c2 = channels
        self.conv = nn.Sequential(
            nn.Conv2d(c, c1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        flat = c2 * (h // 2) * (w // 2)
        self.dense = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, n_classes)

    def features(self, x):
        return self.dense(self.conv(x.reshape(len(x), *self.in_shape)))

    def forward(self, x):
        return self.head(self.features(x))


def build_plain(name: str) -> nn.Module:
    """The benchmark architecture ``name`` without tda_clean (weights to be loaded from a state_dict)."""
    spec = MODELS[name]["model"]
    if spec["kind"] == "mlp":
        return MLP(64, N_CLASSES, tuple(spec["hidden"]))
    return SmallCNN((1, 8, 8), N_CLASSES, tuple(spec["channels"]), spec["hidden"])


# ---------------------------------------------------------------------------------------------- cache
def settings_key(name: str, **extra) -> str:
    """16 hex digits over the model/training/data settings (and ``extra``): the cache key."""
    payload = {"model": name, "spec": MODELS[name], "split_seed": SPLIT_SEED, "test_fraction": TEST_FRACTION,
               "data": "sklearn-digits/16", "torch": torch.__version__.split("+")[0], **extra}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def weights_path(name: str) -> Path:
    """Trained full-data weights of model ``name`` (written by ``lds.py``, read by both environments)."""
    return CACHE / f"{name}-{settings_key(name)}.pt"


def load_trained(name: str) -> tuple[nn.Module, dict]:
    """``(model in eval mode, payload)``; payload holds ``state_dict``, ``checkpoints`` [(epoch, lr, state)]."""
    path = weights_path(name)
    if not path.is_file():
        raise SystemExit(f"{path} missing: run `python benchmarks/lds.py --model {name} --ground-truth-only` first")
    payload = torch.load(path, weights_only=False)
    model = build_plain(name)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, payload


# ------------------------------------------------------------------------------------- outputs / timing
def margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Smooth margin of the true class: ``logit_y - logsumexp_{k != y} logit_k`` (n,)."""
    mask = torch.zeros_like(logits).scatter(-1, y.long().unsqueeze(-1), 1.0)  # one_hot calls .item()
    other = torch.logsumexp(logits - mask * 1e9, dim=-1)  # vmap-safe: no boolean indexing
    return (logits * mask).sum(-1) - other


@contextmanager
def timer(out: dict, key: str):
    t = time.perf_counter()
    yield
    out[key] = time.perf_counter() - t


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MiB; Linux ru_maxrss is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict:
    """CPU model, cores, memory, load average, torch threads -- recorded next to every timing."""
    cpu = platform.processor()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gb": round(mem_gb, 1), "loadavg_1m": os.getloadavg()[0],
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "gpu": torch.cuda.is_available()}


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=float))
