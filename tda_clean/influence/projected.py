"""TRAK-style influence in a seeded random projection of the per-sample gradients (one-call API).

Sign convention and removal form of :mod:`tda_clean.influence.estimators`: scores (m, n), POSITIVE = removing
training row i INCREASES output j. Training rows are streamed (:mod:`tda_clean.influence.rows`); projected
gradients optionally go to a memory-mapped :class:`GradientStore`. The projection is Kronecker-factored per layer
(:mod:`~tda_clean.influence.factored_projection`, default) or one dense matrix (:mod:`~tda_clean.influence.projection`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from pydantic import ValidationError

from tda_clean.config.influence import GradientSettings, ProjectionSettings
from tda_clean.errors import InputError
from tda_clean.influence.factored_projection import FactoredProjector
from tda_clean.influence.gradients import iter_per_sample_grads
from tda_clean.influence.objectives import Objective
from tda_clean.influence.params import ParamSpace, model_fingerprint, prepare_model
from tda_clean.influence.projection import RandomProjector
from tda_clean.influence.result import InfluenceResult
from tda_clean.influence.rows import as_rows
from tda_clean.influence.store import GradientStore, rows_digest, store_fingerprint
from tda_clean.objective import TrainingObjective


def projected_influence(model: nn.Module, train, objective: Objective, *, l2: float, k: int = 512,
                        kind: str = "rademacher", seed: int = 0, damping: float = 0.0,
                        gradients: GradientSettings = GradientSettings(),
                        store_dir: str | Path | None = None,
                        training: TrainingObjective = TrainingObjective(), method: str = "factored",
                        precision: str = "float64", projection: ProjectionSettings | None = None) -> InfluenceResult:
    """TRAK-style influence in a seeded ``k``-dim random projection of the gradients (for large models / data).

    ``projection``: the whole :class:`ProjectionSettings` (method, k, kind, seed, precision); when ``None`` it is
    built from the keyword shorthands ``method``, ``k``, ``kind``, ``seed`` and ``precision``.

    Curvature: the projected empirical Fisher ``F = (1/n) sum_i (P g_i)(P g_i)^T + (l2 + damping) I`` (k, k);
    scores ``(P q)^T F^-1 P (g_i + l2 theta*) / (n - 1)`` (m, n), the removal form and sign convention of
    :class:`InfluenceEngine`. Projected training gradients go to the
    optional ``store_dir`` (memory-mapped, fingerprint includes the projection), so n x p never sits in RAM; without
    one they are kept in RAM between the curvature and scoring passes when n x k fits in ``gradients.memory_mb``.
    ``g_i``: gradients of ``training``'s per-row loss (the objective the model was trained with).
    """
    model = prepare_model(model, gradients)
    train_rows = as_rows(train)
    space = ParamSpace(model, gradients.params)
    if projection is None:
        try:
            projection = ProjectionSettings(method=method, k=k, kind=kind, seed=seed, precision=precision)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(map(str, err["loc"]))
            raise InputError(f"projection.{where}: {err['msg']} (got {err.get('input')!r})") from None
    spec = projection
    if spec.method == "factored":
        proj = FactoredProjector(space, spec.k, spec.kind, spec.seed)
    else:
        proj = RandomProjector(space.p, spec.k, spec.kind, spec.seed)
    k = proj.k
    n = train_rows.n
    if n < 2:
        raise InputError(f"training set: removal influence needs at least 2 training rows, got {n}")

    def blocks(rows: slice | None = None) -> Iterator[tuple[slice, torch.Tensor]]:
        if isinstance(proj, FactoredProjector):
            yield from proj.iter_rows(train_rows, training.row, memory_mb=gradients.memory_mb, span=rows)
            return
        for sub, G in iter_per_sample_grads(space, train_rows, loss=training.row, memory_mb=gradients.memory_mb, rows=rows):
            yield sub, proj.project(G)

    if store_dir is not None:
        fp = store_fingerprint(model_fingerprint(model), rows_digest(train_rows), np.asarray(train_rows.labels), str(space.subset),
                               proj.describe(), str(space.flat().dtype))
        dtype = str(space.flat().dtype).replace("torch.", "")
        store = GradientStore.open(store_dir, fingerprint=fp, n=n, p=k, dtype=dtype, chunk_rows=min(n, 8192),
                                   info={"projection": proj.describe()})
        for chunk in store.missing_chunks():
            rows = store.chunk_slice(chunk)
            store.write_chunk(chunk, np.concatenate([Pg.cpu().numpy() for _, Pg in blocks(rows)]))
        device = space.flat().device
        source = lambda: ((rows, torch.as_tensor(b, device=device)) for rows, b in store.iter_chunks())  # noqa: E731
    else:
        source = blocks
    # without a store, the projected rows (n, k) are kept from the curvature pass for scoring when they fit in
    # gradients.memory_mb (else the second pass recomputes them: same numbers)
    keep = store_dir is None and n * k * space.flat().element_size() <= gradients.memory_mb * 2**20
    kept: list[tuple[slice, torch.Tensor]] = []
    F = torch.zeros(k, k, dtype=torch.float64)
    for rows, Pg in source():
        if keep:
            kept.append((rows, Pg))
        Pg = Pg.double().cpu()
        F += Pg.T @ Pg
    if keep:
        source = lambda: iter(kept)  # noqa: E731
    F = F / n + (l2 + damping) * torch.eye(k, dtype=torch.float64)
    Pq = proj.project(objective.query_gradients(space, gradients.memory_mb)).double().cpu()
    W = torch.linalg.solve(F, Pq.T).T
    Preg = proj.project((l2 * space.flat())[None]).double().cpu()  # (1, k): P l2 theta*
    dtype = getattr(torch, spec.precision)
    W, Preg = W.to(dtype), Preg.to(dtype)
    scores = torch.zeros(len(Pq), n, dtype=dtype)
    for rows, Pg in source():
        scores[:, rows] = W @ (Pg.to(dtype).cpu() + Preg).T / (n - 1)
    return InfluenceResult(scores.double().numpy(), objective.name, "projected",
                           {"k": k, "projection": proj.describe(), "precision": spec.precision})
