"""Seeded input transforms in torch ops (no torchvision), for Δ-influence query copies and augmentation.

Images are RAW pixels in [0, 1] with shape ``(n, H, W)`` or ``(n, C, H, W)`` -- transforms run before any
normalisation, so ``invert`` really is ``1 - x`` and ``jitter`` really changes brightness / contrast (the
weak spot of the original Δ-influence code, which transformed already-normalised tensors). Every image
transform returns values clipped to [0, 1] and the input's shape and dtype.

Tabular rows are ``(n, d)`` standardised features: ``feature_noise`` adds Gaussian noise scaled by each
feature's spread, ``feature_mask`` replaces a random share of features by the column mean (0 after
standardisation, or the given ``fill``).

``apply_transform(name, X, rng)`` applies one named transform; ``random_copies(x, n_copies, names, rng)``
draws one transform per copy. Asking for an image transform on tabular data (or the reverse) raises
:class:`~tda_clean.errors.InputError` naming the transform and the data shape. Nothing here touches its input.
"""
from __future__ import annotations

import math
import numpy as np
import torch
from torch.nn import functional as F

from tda_clean.errors import InputError

IMAGE_TRANSFORMS = ("hflip", "vflip", "affine", "blur", "invert", "jitter", "noise", "channel_swap", "elastic")
TABULAR_TRANSFORMS = ("feature_noise", "feature_mask")
DEFAULT_IMAGE_TRANSFORMS = ("hflip", "vflip", "affine", "blur", "invert", "jitter", "noise", "elastic")
DEFAULT_TABULAR_TRANSFORMS = TABULAR_TRANSFORMS


def data_kind(X: np.ndarray) -> str:
    """``"image"`` for ``(n, H, W)`` / ``(n, C, H, W)``, ``"tabular"`` for ``(n, d)``."""
    if X.ndim in (3, 4):
        return "image"
    if X.ndim == 2:
        return "tabular"
    raise InputError(f"transforms: expected (n, d) tabular or (n, [C,] H, W) image arrays, got shape {X.shape}")


def check_transforms(names, X: np.ndarray) -> tuple[str, ...]:
    """Validate that every transform in ``names`` exists and applies to the data type of ``X``."""
    names = tuple(names)
    if not names:
        raise InputError("detector.transforms: give at least one transform")
    kind = data_kind(X)
    allowed = IMAGE_TRANSFORMS if kind == "image" else TABULAR_TRANSFORMS
    for name in names:
        if name not in IMAGE_TRANSFORMS + TABULAR_TRANSFORMS:
            raise InputError(f"detector.transforms: {name!r} is not a known transform "
                             f"(image: {', '.join(IMAGE_TRANSFORMS)}; tabular: {', '.join(TABULAR_TRANSFORMS)})")
        if name not in allowed:
            raise InputError(f"detector.transforms: {name!r} does not apply to {kind} data of shape "
                             f"{tuple(X.shape[1:])} (allowed for {kind}: {', '.join(allowed)})")
        if name == "channel_swap" and (X.ndim != 4 or X.shape[1] < 2):
            raise InputError(f"detector.transforms: 'channel_swap' needs images with at least two channels, "
                             f"got shape {tuple(X.shape[1:])}")
    return names


def default_transforms(X: np.ndarray) -> tuple[str, ...]:
    """The default transform list for the data type of ``X``."""
    if data_kind(X) == "tabular":
        return DEFAULT_TABULAR_TRANSFORMS
    extra = ("channel_swap",) if X.ndim == 4 and X.shape[1] >= 2 else ()
    return DEFAULT_IMAGE_TRANSFORMS + extra


# ----------------------------------------------------------------------------------------- image ops
def _as_nchw(X: np.ndarray) -> tuple[torch.Tensor, tuple[int, ...]]:
    t = torch.as_tensor(np.ascontiguousarray(X), dtype=torch.float32)
    shape = tuple(t.shape)
    return (t.unsqueeze(1) if t.dim() == 3 else t), shape


def _back(t: torch.Tensor, shape: tuple[int, ...], dtype) -> np.ndarray:
    return t.clamp(0.0, 1.0).reshape(shape).numpy().astype(dtype, copy=False)


def _affine_grid(n: int, H: int, W: int, rng: np.random.Generator, strength: float) -> torch.Tensor:
    """Random rotation (±45° x strength), scale, shear and translation as a sampling grid."""
    angle = rng.uniform(-1, 1, n) * math.pi / 4 * strength
    scale = np.exp(rng.uniform(-0.35, 0.35, n) * strength)
    shear = rng.uniform(-0.5, 0.5, n) * strength
    shift = rng.uniform(-0.2, 0.2, (n, 2)) * strength
    cos, sin = np.cos(angle), np.sin(angle)
    theta = np.zeros((n, 2, 3))
    theta[:, 0, 0] = cos / scale
    theta[:, 0, 1] = (-sin + shear) / scale
    theta[:, 1, 0] = sin / scale
    theta[:, 1, 1] = cos / scale
    theta[:, :, 2] = shift
    return F.affine_grid(torch.as_tensor(theta, dtype=torch.float32), [n, 1, H, W], align_corners=False)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(2 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _blur(t: torch.Tensor, sigma: float) -> torch.Tensor:
    k = _gaussian_kernel(sigma)
    c = t.shape[1]
    r = len(k) // 2
    out = F.conv2d(F.pad(t, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(out, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def _image_op(name: str, t: torch.Tensor, rng: np.random.Generator, strength: float) -> torch.Tensor:
    n, c, H, W = t.shape
    if name == "hflip":
        return t.flip(-1)
    if name == "vflip":
        return t.flip(-2)
    if name == "invert":
        return 1.0 - t
    if name == "affine":
        return F.grid_sample(t, _affine_grid(n, H, W, rng, strength), align_corners=False, padding_mode="zeros")
    if name == "blur":
        sigma = max(H, W) / 8 * (1.0 + rng.uniform(0, 1)) * strength
        return _blur(t, max(sigma, 0.5))
    if name == "jitter":
        b = torch.as_tensor(rng.uniform(-0.4, 0.4, (n, 1, 1, 1)) * strength, dtype=t.dtype)
        ctr = torch.as_tensor(np.exp(rng.uniform(-0.7, 0.7, (n, 1, 1, 1)) * strength), dtype=t.dtype)
        mean = t.mean(dim=(1, 2, 3), keepdim=True)
        return (t - mean) * ctr + mean + b
    if name == "noise":
        return t + torch.as_tensor(rng.normal(0, 0.3 * strength, t.shape), dtype=t.dtype)
    if name == "channel_swap":
        return t[:, torch.as_tensor(rng.permutation(c) if c > 1 else [0])]
    # elastic: the one name left that check_transforms admits for images
    disp = torch.as_tensor(rng.normal(0, 1, (n, 2, H, W)), dtype=t.dtype)
    disp = _blur(disp, max(max(H, W) / 10, 0.8))
    disp = disp / disp.std().clamp_min(1e-6) * 0.12 * strength  # displacement in [-1, 1] grid units
    base = F.affine_grid(torch.eye(2, 3).unsqueeze(0).repeat(n, 1, 1), [n, 1, H, W], align_corners=False)
    return F.grid_sample(t, base + disp.permute(0, 2, 3, 1), align_corners=False, padding_mode="border")


# ---------------------------------------------------------------------------------------- tabular ops
def _tabular_op(name: str, X: np.ndarray, rng: np.random.Generator, strength: float,
                scale: np.ndarray | None, fill: np.ndarray | None) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    s = np.ones(X.shape[1]) if scale is None else np.asarray(scale, dtype=np.float64)
    if name == "feature_noise":
        return X + rng.normal(0, 1.0 * strength, X.shape) * s
    mask = rng.random(X.shape) < min(0.9, 0.5 * strength)  # feature_mask
    f = np.zeros(X.shape[1]) if fill is None else np.asarray(fill, dtype=np.float64)
    return np.where(mask, f[None, :], X)


def apply_transform(name: str, X: np.ndarray, rng: np.random.Generator, *, strength: float = 1.0,
                    scale: np.ndarray | None = None, fill: np.ndarray | None = None) -> np.ndarray:
    """One transform ``name`` applied to every row of ``X`` (a new array, same shape and dtype).

    ``strength`` scales the random magnitudes (1 = defaults). Tabular only: ``scale`` (d,) per-feature spread
    for ``feature_noise`` (default 1 = standardised features), ``fill`` (d,) values for ``feature_mask``.
    """
    X = np.asarray(X)
    check_transforms((name,), X)
    if data_kind(X) == "tabular":
        return _tabular_op(name, X, rng, strength, scale, fill).astype(X.dtype, copy=False)
    t, shape = _as_nchw(X)
    with torch.no_grad():
        return _back(_image_op(name, t, rng, strength), shape, X.dtype)


def random_copies(x: np.ndarray, n_copies: int, names, rng: np.random.Generator, **kwargs) -> tuple[np.ndarray, list[str]]:
    """``n_copies`` transformed copies of ONE input ``x`` (feature shape), each with one transform drawn from
    ``names`` (cycled through a seeded permutation so every transform is used). Returns ``(copies, used)``."""
    names = check_transforms(names, np.asarray(x)[None])
    order = [names[i % len(names)] for i in range(n_copies)]
    order = [order[i] for i in rng.permutation(n_copies)]
    out = np.empty((n_copies, *np.shape(x)), dtype=np.asarray(x).dtype)
    for k, name in enumerate(order):
        out[k] = apply_transform(name, np.asarray(x)[None], rng, **kwargs)[0]
    return out, order

