"""A blended trigger read off the flagged rows: ``x' = (1 - alpha) x + alpha p`` on some pixels, no model needed.

A blend does not give its poisons one shared value per pixel (:mod:`~tda_clean.selection.shared_pattern` finds
none, or only the few pixels over a plain background), but it leaves a mark on each pixel's DISTRIBUTION: over the
poisons a blended pixel is the clean distribution shrunk by ``1 - alpha`` and shifted by ``alpha p``. So the pixels
where the flagged rows' distribution differs from clean images' (two-sample Kolmogorov-Smirnov statistic above
``ks`` times its null scale ``sqrt((m + n) / (m n))``) and is compressed (interquartile range at most
``max_ratio`` of the clean one -- or the clean pixel is nearly constant) are the candidates; ``alpha`` is the
weight (on a grid of 0.05) under which the flagged rows are most likely, ``p`` follows from the medians, and only
the candidates where the blend explains the flagged rows better than the clean images themselves do, by at least a
quarter of the best element's gain in log-likelihood, are kept (then ``alpha`` is refitted). A row is then scored
by the log-likelihood ratio of "a clean image blended with ``p``" against "a clean image", with per-pixel Gaussian
kernel densities of the clean reference.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tda_clean.config import BlendRule

_FLOOR = 1e-3          # density floor: one pixel far out of the reference cannot dominate a row's score
_MIN_SPREAD = 0.1      # a clean pixel whose interquartile range is below this is "nearly constant"
_MIN_GAIN = 0.25       # an element is kept when the blend gains at least this share of the best element's gain
_ALPHAS = np.round(np.arange(0.05, 0.96, 0.05), 2)   # the blend weights tried


@dataclass(frozen=True)
class BlendPattern:
    """``pixels``: bool of one image's shape ([C,] H, W), the blended elements; ``alpha``: the blend weight;
    ``values``: the pattern ``p`` (image shape; meaningful where ``pixels``); ``reference``: (r, k) the clean
    reference images on those elements; ``bandwidth``: the kernel width."""

    pixels: np.ndarray
    alpha: float
    values: np.ndarray
    reference: np.ndarray
    bandwidth: float

    @property
    def size(self) -> int:
        return int(self.pixels.sum())

    def score(self, X: np.ndarray) -> np.ndarray:
        """(n,) log-likelihood ratio of each image of ``X`` (n, [C,] H, W): positive when its values on the blended
        elements are better explained as a clean image blended with the pattern than as a clean image; 0.0 for an
        empty pattern."""
        if not self.size:
            return np.zeros(len(X))
        x = np.asarray(X, dtype=np.float64).reshape(len(X), -1)[:, self.pixels.reshape(-1)]
        unblended = (x - self.alpha * self.values.reshape(-1)[self.pixels.reshape(-1)]) / (1 - self.alpha)
        blended = np.log(self._density(unblended) / (1 - self.alpha) + _FLOOR)
        return (blended - np.log(self._density(x) + _FLOOR)).sum(1)

    def unblend(self, X: np.ndarray) -> np.ndarray:
        """Copy of images ``X`` (n, [C,] H, W) with the blend undone on its elements, ``(x - alpha p) / (1 - alpha)``
        clipped to the reference's range (input dtype): a poison's source image, if the blend is right."""
        out = np.array(X, copy=True).reshape(len(X), -1)
        on = self.pixels.reshape(-1)
        lo, hi = (self.reference.min(), self.reference.max()) if self.reference.size else (0.0, 1.0)
        out[:, on] = np.clip((out[:, on] - self.alpha * self.values.reshape(-1)[on]) / (1 - self.alpha), lo, hi)
        return out.reshape(np.shape(X))

    def _density(self, v: np.ndarray) -> np.ndarray:
        return _kde(v, self.reference, self.bandwidth)


def _kde(v: np.ndarray, reference: np.ndarray, bandwidth: float) -> np.ndarray:
    """(n, k) per-element Gaussian kernel density of ``reference`` (r, k) at ``v`` (n, k), in chunks of rows."""
    out = np.empty_like(v)
    norm = bandwidth * np.sqrt(2 * np.pi)
    for start in range(0, len(v), 256):
        z = (v[start:start + 256, :, None] - reference.T[None]) / bandwidth     # (b, k, r)
        out[start:start + 256] = np.exp(-0.5 * z * z).mean(2) / norm
    return out


def _ks(F: np.ndarray, R: np.ndarray) -> np.ndarray:
    """(d,) two-sample Kolmogorov-Smirnov statistic per column of ``F`` (m, d) against ``R`` (n, d)."""
    values = np.concatenate([F, R])
    sorted_f, sorted_r = np.sort(F, axis=0), np.sort(R, axis=0)
    out = np.zeros(F.shape[1])
    for j in range(F.shape[1]):
        grid = np.unique(values[:, j])
        cdf_f = np.searchsorted(sorted_f[:, j], grid, side="right") / len(F)
        cdf_r = np.searchsorted(sorted_r[:, j], grid, side="right") / len(R)
        out[j] = np.abs(cdf_f - cdf_r).max()
    return out


def estimate_blend(flagged: np.ndarray, reference: np.ndarray, rule: BlendRule) -> BlendPattern:
    """The blend that best explains the ``flagged`` images (m, [C,] H, W) against clean ``reference`` images
    (n, [C,] H, W) -- rows of the classes the poisons come from, e.g. the validation rows not of the target.
    Empty (``size`` 0) when no element differs and is compressed."""
    shape = np.asarray(flagged).shape[1:]
    F = np.asarray(flagged, dtype=np.float64).reshape(len(flagged), -1)
    R = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    ks = _ks(F, R)
    qf, qr = np.quantile(F, [0.25, 0.5, 0.75], axis=0), np.quantile(R, [0.25, 0.5, 0.75], axis=0)
    spread_f, spread_r = qf[2] - qf[0], qr[2] - qr[0]
    ratio = spread_f / np.maximum(spread_r, 1e-12)
    differs = ks > rule.ks * np.sqrt((len(F) + len(R)) / (len(F) * len(R)))
    shrunk = differs & (spread_r >= _MIN_SPREAD) & (ratio <= rule.max_ratio)
    flat = differs & (spread_r < _MIN_SPREAD)
    empty = BlendPattern(np.zeros(shape, dtype=bool), 1.0, np.zeros(shape), np.zeros((len(R), 0)), rule.bandwidth)
    if not shrunk.any():
        return empty
    pixels = shrunk | flat
    alpha = _best_alpha(F, R, qf[1], qr[1], shrunk, rule.bandwidth)
    # keep the elements the blend explains better than no blend at all: a flagged set drawn unevenly from the
    # source classes also differs (and looks compressed) where those classes' images are plain
    gain = (_loglik(F[:, pixels], R[:, pixels], qf[1][pixels], qr[1][pixels], alpha, rule.bandwidth)
            - np.log(_kde(F[:, pixels], R[:, pixels], rule.bandwidth) + _FLOOR).mean(0))
    pixels[np.flatnonzero(pixels)[gain <= max(0.0, _MIN_GAIN * gain.max())]] = False
    shrunk &= pixels
    if not shrunk.any():
        return empty
    alpha = _best_alpha(F, R, qf[1], qr[1], shrunk, rule.bandwidth)
    if alpha > rule.max_alpha:             # the pixels are stamped, not blended
        return empty
    values = (qf[1] - (1 - alpha) * qr[1]) / alpha
    return BlendPattern(pixels.reshape(shape), alpha, values.reshape(shape), R[:, pixels], rule.bandwidth)


def _best_alpha(F: np.ndarray, R: np.ndarray, median_f: np.ndarray, median_r: np.ndarray, on: np.ndarray,
                bandwidth: float) -> float:
    """The blend weight (of ``_ALPHAS``) under which the flagged rows ``F`` are likeliest on the elements ``on``."""
    fits = [(_loglik(F[:, on], R[:, on], median_f[on], median_r[on], alpha, bandwidth).sum(), alpha)
            for alpha in _ALPHAS]
    return float(max(fits)[1])


def _loglik(F: np.ndarray, R: np.ndarray, median_f: np.ndarray, median_r: np.ndarray, alpha: float,
            bandwidth: float) -> np.ndarray:
    """(k,) per-element mean log-likelihood of the flagged rows ``F`` (m, k) as clean rows ``R`` (r, k) blended at
    ``alpha``, the pattern following from the medians (``median_f = (1 - alpha) median_r + alpha p``)."""
    pattern = (median_f - (1 - alpha) * median_r) / alpha
    density = _kde((F - alpha * pattern) / (1 - alpha), R, bandwidth) / (1 - alpha)
    return np.log(density + _FLOOR).mean(0)
