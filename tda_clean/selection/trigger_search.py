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

Also the corner-patch scan (:func:`trigger_scan`, :func:`stamp_patch`) and :func:`dilate` (a region grown by whole
pixels) used by Δ-influence's trigger search.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def stamp_patch(X: np.ndarray, corner: str, size: int, value: float) -> np.ndarray:
    """Copy of images ``X`` (n, [C,] H, W) with a ``size`` square of ``value`` in ``corner`` (br, bl, tr, tl)."""
    out = np.array(X, copy=True)
    rows = slice(-size, None) if corner[0] == "b" else slice(0, size)
    cols = slice(-size, None) if corner[1] == "r" else slice(0, size)
    out[..., rows, cols] = value
    return out


def trigger_scan(model, X: np.ndarray, min_flip: float) -> dict[str, Any] | None:
    """Best candidate corner patch on inputs ``X`` (images) by the share of other-class predictions it sends
    to one class; ``None`` when no candidate reaches ``min_flip``."""
    from tda_clean.models.trainer import predict_proba

    base = predict_proba(model, X).argmax(1)
    H, W = X.shape[-2:]
    best = None
    for corner in ("br", "bl", "tr", "tl"):
        for size in range(1, max(1, min(3, min(H, W) // 4)) + 1):
            for value in (1.0, 0.0):
                stamped = stamp_patch(X, corner, size, value)
                probs = predict_proba(model, stamped)
                pred = probs.argmax(1)
                for c in np.unique(pred):
                    others = base != c
                    if others.sum() < 2:
                        continue
                    rate = float(np.mean(pred[others] == c))
                    if best is None or rate > best["flip_rate"]:
                        best = {"corner": corner, "size": size, "value": value, "target": int(c), "flip_rate": rate,
                                "X": stamped, "probs": probs, "base": base}
    if best is None or best["flip_rate"] < min_flip:
        return None
    return best


def dilate(region: np.ndarray, pixels: int) -> np.ndarray:
    """Bool (H, W) ``region`` grown by ``pixels`` in the 8-neighbourhood (a reconstructed mask only approximates
    the trigger's extent; erasing a margin around it removes the whole trigger)."""
    out = np.asarray(region, dtype=bool)
    for _ in range(pixels):
        grown = out.copy()
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                src = out[max(0, -dr): out.shape[0] - max(0, dr), max(0, -dc): out.shape[1] - max(0, dc)]
                grown[max(0, dr): out.shape[0] - max(0, -dr), max(0, dc): out.shape[1] - max(0, -dc)] |= src
        out = grown
    return out


def erase_probs(model, X: np.ndarray, region: np.ndarray, fill: np.ndarray,
                target: int) -> tuple[np.ndarray, np.ndarray]:
    """``(probs (n, C), p_target_after (n,))``: the model's probabilities on images ``X`` and its target probability
    on copies whose ``region`` (H, W) bool is set to ``fill`` (one image's shape, e.g. the per-pixel median)."""
    from tda_clean.models.trainer import predict_proba

    return predict_proba(model, X), predict_proba(model, erase_region(X, region, fill))[:, target]


def erase_region(X: np.ndarray, region: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Copy of images ``X`` (n, [C,] H, W) whose ``region`` (H, W) bool pixels are set to ``fill`` (one image's
    shape)."""
    out = np.array(X, copy=True)
    out[..., region] = fill[..., region]
    return out


def nearest_rows(F: np.ndarray, rows: np.ndarray, reference: np.ndarray, k: int, block: int = 256) -> np.ndarray:
    """(len(rows), min(k, m - 1)) positions into ``F`` (n, d): for each of ``rows``, its nearest rows (Euclidean,
    unordered) among the ``reference`` positions (m of them), never the row itself."""
    rows, ref = np.asarray(rows, dtype=np.int64), np.asarray(reference, dtype=np.int64)
    k = min(k, len(ref) - 1)
    F = np.asarray(F, dtype=np.float64)
    R = F[ref]
    sq_ref = (R * R).sum(1)
    out = np.empty((len(rows), k), dtype=np.int64)
    for start in range(0, len(rows), block):
        r = rows[start:start + block]
        d = (F[r] * F[r]).sum(1)[:, None] - 2.0 * F[r] @ R.T + sq_ref[None, :]
        d[r[:, None] == ref[None, :]] = np.inf          # not the row itself
        out[start:start + len(r)] = ref[np.argpartition(d, k - 1, axis=1)[:, :k]]
    return out


def erasure_evidence(model, X_val: np.ndarray, y_val: np.ndarray, region: np.ndarray, fill: np.ndarray, target: int,
                     n_pool_target: int, n_erased: int, min_precision: float) -> dict[str, Any]:
    """How specific erasing ``region`` is. Clean validation rows labelled ``target`` and predicted as it give the
    rate at which the erasure alone takes the target away (p < 0.1) from a clean input (Laplace estimate
    ``rate = (k + 1) / (m + 2)``, ``k`` of ``m`` rows). ``n_pool_target``: training rows of the pool predicted as
    the target; ``n_erased``: those the erasure took the target from. Returns ``erase_rate_clean``,
    ``erase_expected_false`` (rate x n_pool_target: clean rows expected among the erased ones),
    ``erasure_trusted`` (expected false at most ``1 - min_precision`` of ``n_erased``) and ``erase_p_value``
    (binomial tail ``P(X >= n_erased)`` at that rate: small when the training pool holds far more
    trigger-dependent rows than clean data explains, i.e. poisons); ``{}`` without such validation rows."""
    from scipy.stats import binom

    rows = np.flatnonzero(y_val == target)
    if not len(rows):
        return {}
    before, after = erase_probs(model, X_val[rows], region, fill, target)
    kept = before.argmax(1) == target
    k, m = int((kept & (after < 0.1)).sum()), int(kept.sum())
    rate = (k + 1) / (m + 2)
    expected = rate * n_pool_target
    return {"erase_val_rows": m, "erase_val_lost": k, "erase_rate_clean": rate, "erase_expected_false": expected,
            "erase_n_train": n_erased, "erasure_trusted": bool(n_erased and expected <= (1 - min_precision) * n_erased),
            "erase_p_value": float(binom.sf(n_erased - 1, n_pool_target, rate)) if n_erased else 1.0}


def neighbour_other_share(X: np.ndarray, y: np.ndarray, rows: np.ndarray, region: np.ndarray, target: int,
                          k: int = 5, block: int = 256) -> float:
    """Share of training ``rows`` (positions into ``X`` (n, [C,] H, W), labels ``y`` (n,)) whose ``k`` nearest
    other training rows (Euclidean, on the pixels OUTSIDE ``region`` (H, W) bool) carry mostly a label other than
    ``target`` (majority vote, ties to the smaller label). A dirty-label poison is an image of another class with
    the trigger added: with the trigger region left out, its neighbours are of its source class; a clean row of the
    target class has target-class neighbours. 0.0 for no rows."""
    rows = np.asarray(rows, dtype=np.int64)
    if not len(rows):
        return 0.0
    keep = ~np.broadcast_to(region, X.shape[1:]).reshape(-1)
    F = np.asarray(X).reshape(len(X), -1)[:, keep]
    nn = nearest_rows(F, rows, np.arange(len(X)), k, block)
    votes = np.stack([np.bincount(lab, minlength=int(y.max()) + 1) for lab in y[nn]])
    return float((votes.argmax(1) != target).mean())


def _optimise(model, X: np.ndarray, classes: list[int], steps: int, success: float, lo: float, hi: float,
              gen) -> list[tuple[float, Any, Any]]:
    """Per job ``j`` (class ``classes[j]``, inputs ``X[j]`` (k, *shape)): the smallest mask L1 norm that flipped
    at least ``success`` of ``X[j]`` to ``classes[j]`` (inf if never reached), with that step's mask (H, W) and
    pattern (shape) as numpy. All jobs are optimised together (one batched forward per step; a class may appear
    in several jobs, one per restart); the model's parameters are left untouched."""
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
    best: list[tuple[float, Any, Any]] = [(float("inf"), None, None)] * K
    for _ in range(steps):
        m = torch.sigmoid(a)
        p = lo + (hi - lo) * torch.sigmoid(b)
        logits = model(((1 - m) * xb + m * p).reshape((K * k,) + shape))
        ce = F.cross_entropy(logits, target, reduction="none").reshape(K, k).mean(1)
        norm = m.reshape(K, -1).sum(1)
        with torch.no_grad():
            rate = (logits.argmax(1) == target).reshape(K, k).double().mean(1)
            for j in range(K):
                if rate[j] >= success and float(norm[j]) < best[j][0]:
                    best[j] = (float(norm[j]), m[j].reshape(shape[-2:]).cpu().numpy().copy(),
                               p[j, 0].cpu().numpy().copy())
            lam = torch.where(rate >= success, lam * 1.2, lam / 1.2)
        opt.zero_grad()
        a.grad, b.grad = torch.autograd.grad((ce + lam * norm).sum(), [a, b])
        opt.step()
    return best


def reconstruct_trigger(model, X: np.ndarray, seed: int, steps: int = 200, max_inputs: int = 32,
                        success: float = 0.95, min_anomaly: float = 2.0, restarts: int = 1) -> dict[str, Any] | None:
    """Reconstructed trigger on probe images ``X`` (n, [C,] H, W) of the model's suspected target class.

    ``restarts`` independent reconstructions per class (own random start and own draw of ``max_inputs`` probe
    inputs, all optimised in one batch); a class's norm is the MEDIAN of its restarts' norms, so one lucky or
    unlucky start does not pick the target. Returns ``None`` when no class's norm is an outlier (anomaly index
    <= ``min_anomaly``), else a dict with ``target``, ``mask`` (H, W) and ``pattern`` (the target's smallest
    restart), ``alternates`` (the target's other restarts that reached ``success``, smallest norm first: dicts with
    ``norm``, ``mask``, ``pattern``), ``norms`` (per class median; inf = never reached ``success``), ``restart_norms`` (per class list),
    ``agreement`` (share of restarts in which the target's mask was the smallest of all classes), ``anomaly``,
    ``flip_rate`` (share of the probe images predicted as another class that the stamped copy sends to the
    target), ``X`` (all probe images stamped), ``probs`` (the model's probabilities on them) and ``base`` (the
    predictions on the unstamped probe images)."""
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
        classes = [c for c in range(n_classes) if (base != c).sum() >= max_inputs]
        if len(classes) < 3:
            return None
        jobs, inputs = [], []
        for _ in range(max(1, restarts)):
            for c in classes:
                pool = np.flatnonzero(base != c)
                jobs.append(c)
                inputs.append(X[np.sort(rng.choice(pool, size=max_inputs, replace=False))])
        found = _optimise(model, np.stack(inputs), jobs, steps, success, lo, hi, gen)
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)
    runs = {c: [found[j][0] for j in range(len(jobs)) if jobs[j] == c] for c in classes}
    norms = {c: float(np.median(v)) for c, v in runs.items()}
    finite = np.log([max(v, 1e-12) for v in norms.values() if np.isfinite(v)])
    if len(finite) < 3:
        return None
    t = min(norms, key=norms.get)
    med = np.median(finite)
    mad = 1.4826 * np.median(np.abs(finite - med))
    anomaly = float((med - np.log(max(norms[t], 1e-12))) / max(mad, 1e-12))
    if anomaly <= min_anomaly:
        return None
    n_runs = len(runs[t])
    agreement = float(np.mean([min(classes, key=lambda c: runs[c][r]) == t for r in range(n_runs)]))
    own = sorted((j for j in range(len(jobs)) if jobs[j] == t and np.isfinite(found[j][0])), key=lambda j: found[j][0])
    _, mask, pattern = found[own[0]]
    alternates = [{"norm": found[j][0], "mask": found[j][1], "pattern": found[j][2]} for j in own[1:]]
    return {**stamped_candidate(model, X, base, int(t), mask, pattern), "norms": norms, "restart_norms": runs,
            "agreement": agreement, "anomaly": anomaly, "alternates": alternates}


def stamped_candidate(model, X: np.ndarray, base: np.ndarray, target: int, mask: np.ndarray,
                      pattern: np.ndarray) -> dict[str, Any]:
    """A candidate trigger ``mask`` (H, W) / ``pattern`` for class ``target`` on probe images ``X`` (n, [C,] H, W)
    whose unstamped predictions are ``base`` (n,): ``target``, ``mask``, ``pattern``, ``base``, ``X`` (the stamped
    copies ``(1 - mask) * X + mask * pattern``), ``probs`` (n, k) on them and ``flip_rate`` (share of the images
    predicted as another class that the stamped copy sends to the target)."""
    from tda_clean.models.trainer import predict_proba

    X = np.asarray(X, dtype=np.float32)
    stamped = ((1 - mask) * X + mask * pattern).astype(X.dtype)
    probs = predict_proba(model, stamped)
    others = base != target
    flip = float(np.mean(probs.argmax(1)[others] == target)) if others.any() else 0.0
    return {"target": target, "mask": mask, "pattern": pattern, "base": base, "X": stamped, "probs": probs,
            "flip_rate": flip}
