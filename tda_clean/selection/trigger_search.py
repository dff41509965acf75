"""Trigger reconstruction for image backdoors, without guessing the trigger's shape, place or pattern.

Neural-Cleanse style (Wang et al. 2019): for every candidate target class ``c``, optimise a mask ``m`` (H, W)
in [0, 1] and a pattern ``p`` (one image's shape, in the data's pixel range) so that the stamped inputs

    x' = (1 - m) * x + m * p

of the probe images NOT predicted as ``c`` are sent to ``c``, while the mask's L1 norm ``sum(m)`` is pushed
down (cross-entropy + ``lam * sum(m)``, ``lam`` adapted each step: up while at least ``success`` of the
inputs flip, down otherwise). A backdoor is a shortcut: its class needs a much smaller mask than every other
class. The class with the smallest mask is the suspected target; its anomaly index is the robust z of how
far that norm lies below the others on a log scale (norms spread multiplicatively across classes),
``(median(log norm) - log norm_t) / (1.4826 MAD(log norm))``, and the
trigger is taken as found when the index exceeds ``min_anomaly``. Every random step takes ``seed``.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def _optimise(model, X: np.ndarray, classes: list[int], steps: int, success: float, lo: float, hi: float,
              gen) -> dict[int, tuple[float, Any, Any]]:
    """Per class ``c``: the smallest mask L1 norm that flipped at least ``success`` of ``X[c]`` (k, *shape) to
    ``c`` (inf if never reached), with that step's mask (H, W) and pattern (shape) as numpy. All classes are
    optimised together (one batched forward per step); the model's parameters are left untouched."""
    import torch
    import torch.nn.functional as F

    param = next(model.parameters())
    K, k, shape = len(classes), X.shape[1], tuple(X.shape[2:])
    xb = torch.as_tensor(np.ascontiguousarray(X), device=param.device, dtype=param.dtype)      # (K, k, *shape)
    a = (torch.randn((K, 1) + (1,) * (len(shape) - 2) + shape[-2:], generator=gen, dtype=param.dtype) * 0.1)
    b = torch.randn((K, 1) + shape, generator=gen, dtype=param.dtype) * 0.1
    a, b = a.to(param.device).requires_grad_(True), b.to(param.device).requires_grad_(True)
    opt = torch.optim.Adam([a, b], lr=0.1)
    target = torch.as_tensor(classes, device=param.device).repeat_interleave(k)
    lam = torch.full((K,), 1e-3, dtype=param.dtype, device=param.device)
    best: dict[int, tuple[float, Any, Any]] = {c: (float("inf"), None, None) for c in classes}
    for _ in range(steps):
        m = torch.sigmoid(a)
        p = lo + (hi - lo) * torch.sigmoid(b)
        logits = model(((1 - m) * xb + m * p).reshape((K * k,) + shape))
        ce = F.cross_entropy(logits, target, reduction="none").reshape(K, k).mean(1)
        norm = m.reshape(K, -1).sum(1)
        with torch.no_grad():
            rate = (logits.argmax(1) == target).reshape(K, k).double().mean(1)
            for j, c in enumerate(classes):
                if rate[j] >= success and float(norm[j]) < best[c][0]:
                    best[c] = (float(norm[j]), m[j].reshape(shape[-2:]).cpu().numpy().copy(),
                               p[j, 0].cpu().numpy().copy())
            lam = torch.where(rate >= success, lam * 1.2, lam / 1.2)
        opt.zero_grad()
        a.grad, b.grad = torch.autograd.grad((ce + lam * norm).sum(), [a, b])
        opt.step()
    return best


def reconstruct_trigger(model, X: np.ndarray, seed: int, steps: int = 200, max_inputs: int = 32,
                        success: float = 0.95, min_anomaly: float = 2.0) -> dict[str, Any] | None:
    """Reconstructed trigger on probe images ``X`` (n, [C,] H, W) of the model's suspected target class.

    Returns ``None`` when no class's mask is an outlier (anomaly index <= ``min_anomaly``), else a dict with
    ``target``, ``mask`` (H, W), ``pattern``, ``norms`` (per class; inf = never reached ``success``),
    ``anomaly``, ``flip_rate`` (share of the probe images predicted as another class that the stamped copy
    sends to the target), ``X`` (all probe images stamped), ``probs`` (the model's probabilities on them) and
    ``base`` (the predictions on the unstamped probe images)."""
    import torch

    from tda_clean.models.trainer import predict_proba

    X = np.asarray(X, dtype=np.float32)
    base = predict_proba(model, X).argmax(1)
    n_classes = predict_proba(model, X[:1]).shape[1]
    lo, hi = float(X.min()), float(X.max())
    if hi <= lo:
        return None
    rng = np.random.default_rng([seed, 0x7216])
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    was_training = model.training
    model.eval()
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        classes, inputs = [], []
        for c in range(n_classes):
            pool = np.flatnonzero(base != c)
            if len(pool) >= max_inputs:
                classes.append(c)
                inputs.append(X[np.sort(rng.choice(pool, size=max_inputs, replace=False))])
        if len(classes) < 3:
            return None
        found = _optimise(model, np.stack(inputs), classes, steps, success, lo, hi, gen)
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)
    norms = {c: v[0] for c, v in found.items()}
    finite = np.log([max(v, 1e-12) for v in norms.values() if np.isfinite(v)])
    if len(finite) < 3:
        return None
    t = min(norms, key=norms.get)
    med = np.median(finite)
    mad = 1.4826 * np.median(np.abs(finite - med))
    anomaly = float((med - np.log(max(norms[t], 1e-12))) / max(mad, 1e-12))
    if anomaly <= min_anomaly:
        return None
    _, mask, pattern = found[t]
    stamped = ((1 - mask) * X + mask * pattern).astype(X.dtype)
    probs = predict_proba(model, stamped)
    others = base != t
    flip = float(np.mean(probs.argmax(1)[others] == t)) if others.any() else 0.0
    return {"target": int(t), "mask": mask, "pattern": pattern, "norms": norms, "anomaly": anomaly,
            "flip_rate": flip, "X": stamped, "probs": probs, "base": base}
