"""Influence estimators on top of gradients + curvature (docs/methods.md#influence-functions).

Sign convention (everywhere): a POSITIVE influence of removing training row i on objective f means that
removing the row INCREASES f. The model minimises ``L = (1/n) sum_i CE_i + (l2/2) ||theta||^2``; retraining
without row i minimises the MEAN over the other ``n - 1`` rows with the SAME ``l2``, so every row carries its
share of the regulariser: per-row loss ``CE_i + (l2/2) ||theta||^2`` with gradient ``gt_i = g_i + l2 theta*``.
With ``A = H + damping I`` the training-loss curvature over the parameter subset, ``g_i`` the per-row CE
gradient and ``q`` an objective's query gradient (derivation: docs/methods.md#influence-functions):

    influence(i -> f)    = q^T A^-1 gt_i / (n - 1)                    (removal of row i, first order)
    self_influence(i)    = g_i^T A^-1 gt_i / (n - 1)  = the predicted change of row i's own loss when it is removed
    flip(i, c)           = (1/n) q^T A^-1 (g_i(y_i) - g_i(c))  = predicted change of f when row i's label becomes c

(``q^T A^-1 g_i / n`` alone, the textbook form, leaves out the re-weighting of the regulariser against the data
mean: a shift common to all rows that decides the sign of most scores when l2 is small.)

``InfluenceEngine`` fits the curvature once and answers many queries; ``compute_influence`` / ``self_influence``
/ ``pairwise_influence`` are one-call wrappers. Training rows come as an ``IndexedDataset``, a tuple ``(X, y)``
(``X`` may be a ``np.memmap``: ``np.load(path, mmap_mode="r")``), a ``DataLoader`` (``shuffle=False``) or a
:class:`~tda_clean.influence.rows.TrainRows`; every pass reads them one block at a time (never X whole).
Scores can be reduced on the fly (``reducer=``: per-row sums, top-k per query, chunked to disk;
:mod:`tda_clean.influence.reducers`) so no (m, n) matrix is held unless asked.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from torch.func import jvp, vmap

from tda_clean.config.influence import InfluenceSpec
from tda_clean.errors import InputError
from tda_clean.influence.curvature import CurvatureSolver, TrainingLoss
from tda_clean.influence.gradients import RowLoss, as_tensors, check_finite_rows, iter_per_sample_grads, rows_per_batch
from tda_clean.influence.objectives import Objective, PerSampleLoss, PerSampleObjective
from tda_clean.influence.params import ParamSpace, model_fingerprint, prepare_model
from tda_clean.influence.reducers import DenseScores, ScoreReducer
from tda_clean.influence.result import InfluenceResult
from tda_clean.influence.rows import ArrayRows, TrainRows, as_rows
from tda_clean.influence.solvers import make_solver
from tda_clean.influence.store import GradientStore, rows_digest, store_fingerprint
from tda_clean.objective import TrainingObjective


def train_arrays(train) -> tuple[np.ndarray, np.ndarray]:
    """``IndexedDataset`` or ``(X, y)`` -> ``(X, y)``."""
    if hasattr(train, "X") and hasattr(train, "y"):
        return train.X, train.y
    if isinstance(train, (tuple, list)) and len(train) == 2:
        return train[0], train[1]
    raise InputError(f"train: expected an IndexedDataset or a tuple (X, y), got {type(train).__name__}")


class InfluenceEngine:
    """Curvature fitted once on the training set; per-row gradients streamed in chunks (optionally from a
    memory-mapped :class:`GradientStore`).

    model:     a trained model (never modified; a cast copy is used when ``spec.gradients.dtype/device`` ask).
    train:     training rows, ``X`` (n, ...), ``y`` (n,): an ``IndexedDataset``, ``(X, y)`` (``X`` possibly a
               ``np.memmap``), a ``DataLoader`` or :class:`TrainRows` -- read in blocks, never whole.
    spec:      the :class:`InfluenceSpec` (solver settings with their damping, gradient settings), used whole.
    training:  the :class:`TrainingObjective` the model was trained with (its loss and ``l2`` make the Hessian).
    store_dir: optional directory of a gradient store (created, reused, or refused on fingerprint mismatch).
    """

    def __init__(self, model: nn.Module, train, spec: InfluenceSpec, training: TrainingObjective,
                 store_dir: str | Path | None = None):
        self.spec = spec
        self.training = training
        self.model = prepare_model(model, spec.gradients)
        self.rows: TrainRows = as_rows(train)
        self.space = ParamSpace(self.model, self.spec.gradients.params, layers_only=self.spec.solver.kind in ("kfac", "ekfac"))
        self.loss = TrainingLoss(self.space, self.rows, None, training, batch_size=self.spec.gradients.batch_size)
        self.n = self.loss.n
        self.store_dir = store_dir
        self._solver: CurvatureSolver | None = None

    @property
    def X(self):
        """The training features as given (an array, memmap or tensor; a stream of batches is materialised)."""
        return self.rows.X if isinstance(self.rows, ArrayRows) else self.loss.X

    @property
    def y(self) -> np.ndarray:
        """(n,) int64 training labels."""
        return self.rows.labels

    @property
    def solver(self) -> CurvatureSolver:
        """The fitted curvature solver (fitted on first use)."""
        if self._solver is None:
            self._solver = make_solver(self.spec.solver).fit(self.loss)
        return self._solver

    # ----------------------------------------------------------------------------- gradients
    def fingerprint(self) -> str:
        return store_fingerprint(model_fingerprint(self.model), rows_digest(self.rows), np.asarray(self.y),
                                 str(self.space.subset), str(self.loss.dtype))

    def train_gradients(self, label_override: np.ndarray | None = None, rows: slice | None = None,
                        loss: RowLoss | None = None) -> Iterator[tuple[slice, torch.Tensor]]:
        """Yield ``(rows, G_rows)`` blocks of per-row gradients ``(len(rows), p)`` of ``loss`` (default the
        training objective's per-row loss; only those are ever stored).

        ``label_override`` (n,) computes them for other labels (never stored). ``rows`` restricts them to one
        contiguous range of training rows (a shard); the yielded slices are absolute row positions.
        """
        default = loss is None
        loss = self.training.row if default else loss
        if rows is not None or self.store_dir is None or label_override is not None or not default:
            yield from iter_per_sample_grads(self.space, self.rows, label_override, loss=loss, rows=rows,
                                             memory_mb=self.spec.gradients.memory_mb)
            return
        yield from self._stored_gradients()

    def _stored_gradients(self) -> Iterator[tuple[slice, torch.Tensor]]:
        dtype = str(self.loss.dtype).replace("torch.", "")
        store = GradientStore.open(self.store_dir, fingerprint=self.fingerprint(), n=self.n, p=self.space.p,
                                   dtype=dtype, chunk_rows=self._chunk_rows())
        for chunk in store.missing_chunks():
            rows = store.chunk_slice(chunk)
            for _, G in iter_per_sample_grads(self.space, self.rows, loss=self.training.row, rows=rows,
                                              batch_size=rows.stop - rows.start):
                store.write_chunk(chunk, G.cpu().numpy())
        for rows, block in store.iter_chunks():
            yield rows, torch.as_tensor(block, device=self.loss.device)

    def _chunk_rows(self) -> int:
        return min(self.n, rows_per_batch(self.space.p, self.loss.theta.element_size(), self.spec.gradients.memory_mb))

    # ------------------------------------------------------------------------------ queries
    def inverse_hvp(self, objective: Objective) -> torch.Tensor:
        """``A^-1 q`` for each query gradient of ``objective``: (m, p)."""
        Q = objective.query_gradients(self.space, self.spec.gradients.memory_mb)
        return self.solver.solve(Q)

    def influence(self, objective: Objective) -> InfluenceResult:
        """Influence of removing each training row on ``objective`` -> :class:`InfluenceResult` (m, n)."""
        return InfluenceResult(self.scores(objective), objective.name, self.spec.solver.kind, self._info())

    def scores(self, objective: Objective, train_loss: RowLoss | None = None,
               reducer: ScoreReducer | None = None) -> Any:
        """(m, n) influence of removing each training row, ``q_j^T A^-1 (g_i + l2 theta*) / (n - 1)`` with ``q_j``
        the objective's query gradients and ``g_i`` the training loss's gradient at row i (module docstring).
        With another ``train_loss`` (a row function ``h``), ``(1/n) q_j^T A^-1 grad h_i`` instead: not a removal.

        With a solver that scores in an eigenbasis (``solver.eigenbasis``: K-FAC / EK-FAC), a row-wise objective and
        no gradient store, both sides are projected on the
        Kronecker eigenbasis from their layer factors, where ``A^-1`` is diagonal
        (:meth:`KFACSolver.eigenbasis_gradients`): no (m, p) back-projection, and Linear layers' row gradients are
        never expanded before projecting. Same numbers as ``scores_for(inverse_hvp(objective))`` (tested).

        ``reducer`` (default :class:`DenseScores`: the (m, n) matrix) consumes the scores one block of training rows
        at a time and its ``result()`` is returned (e.g. ``RowSum()`` -> (n,), ``TopK(k)`` -> (m, k) values and
        indices, ``DiskScores(path)`` -> (m, n) memmap): the dense matrix is then never built.
        """
        reducer = DenseScores() if reducer is None else reducer
        if self._feed_eigenbasis(objective, train_loss, reducer):
            return reducer.result()
        return self.scores_for(self.inverse_hvp(objective), train_loss=train_loss, reducer=reducer)

    # ---------------------------------------------------------------------- removal: the regulariser's share
    def regulariser_gradient(self) -> torch.Tensor:
        """``l2 theta*`` (p,): the gradient of the regulariser share ``(l2/2) ||theta||^2`` every row carries."""
        return self.loss.l2 * self.loss.theta

    def removal_scale(self) -> float:
        """``1 / (n - 1)``: removing one row leaves a mean over ``n - 1`` rows."""
        if self.n < 2:
            raise InputError("training set: removal influence needs at least 2 training rows (removing the only "
                             "row leaves nothing to train on)")
        return 1.0 / (self.n - 1)

    def _regulariser_offsets(self, objective: PerSampleObjective) -> torch.Tensor:
        """(m,) ``q_j^T A^-1 l2 theta*``: forward-mode derivatives of the objective's outputs along ``A^-1 l2 theta*``
        (no (m, p) query gradients)."""
        reg = self.regulariser_gradient()
        Xq, tq = as_tensors(self.space, objective.X, objective.targets)
        if not float(reg.abs().max()) > 0:
            d = torch.zeros(len(Xq), dtype=torch.float64)
        else:
            v = self.solver.solve(reg[None])[0].to(self.loss.theta)
            theta, bs, parts = self.loss.theta, self.spec.gradients.batch_size, []
            for start in range(0, len(Xq), bs):
                xb, tb = Xq[start:start + bs], tq[start:start + bs]
                f = lambda th: vmap(objective.row_value)(self.space.forward(th, xb), tb)  # noqa: E731
                parts.append(jvp(f, (theta,), (v,))[1].detach())
            d = torch.cat(parts).double().cpu()
        return d.mean(0, keepdim=True) if objective.reduce == "mean" else d

    def _eigenbasis_scores(self, objective: Objective, train_loss: RowLoss | None) -> np.ndarray | None:
        """(m, n) scores by the eigenbasis path, or None where it does not apply."""
        dense = DenseScores()
        return dense.result() if self._feed_eigenbasis(objective, train_loss, dense) else None

    def _feed_eigenbasis(self, objective: Objective, train_loss: RowLoss | None, reducer: ScoreReducer) -> bool:
        """Feed ``reducer`` the scores computed in the solver's eigenbasis; False (nothing fed) where that path
        does not apply (see :meth:`scores`)."""
        if not isinstance(objective, PerSampleObjective) or self.store_dir is not None or not self.solver.eigenbasis:
            return False
        solver = self.solver
        Xq, tq = as_tensors(self.space, objective.X, objective.targets)
        Q = solver.eigenbasis_gradients(Xq, tq, objective.row_value)
        if Q is None:
            return False
        check_finite_rows(Q, what=f"{objective.name} query gradients")
        Q = (Q.mean(0, keepdim=True) if objective.reduce == "mean" else Q) * solver.eigenbasis_scale()
        removal = train_loss is None
        scale = self.removal_scale() if removal else 1.0 / self.n
        offsets = self._regulariser_offsets(objective)[:, None] if removal else 0.0
        size = rows_per_batch(self.space.p, Q.element_size(), self.spec.gradients.memory_mb, self.rows.row_elems)
        started = False
        for rows, Xb, yb in self.loss.blocks(size):
            G = solver.eigenbasis_gradients(Xb, yb, train_loss or self.training.row)
            if G is None:  # decided by the model's structure: the first block already says so
                return False
            if not started:
                reducer.start(len(Q), range(self.n))
                started = True
            check_finite_rows(G, offset=rows.start)
            reducer.add(rows, ((Q @ G.T).double().cpu() + offsets) * scale)
        return True

    def self_influence(self, rows: slice | None = None) -> np.ndarray:
        """(n,) ``g_i^T A^-1 (g_i + l2 theta*) / (n - 1)``: the predicted change of row i's own loss when it is
        removed (the diagonal of pairwise influence on the training losses); with ``rows``, only that shard's
        values (len(rows),)."""
        offset = 0 if rows is None else (rows.start or 0)
        out = np.zeros(self.n if rows is None else len(range(self.n)[rows]))
        if self._eigenbasis_self_influence(rows, out):
            return out
        scale, reg = self.removal_scale(), self.regulariser_gradient()
        for block, G in self.train_gradients(rows=rows):
            value = (self.solver.solve(G) * (G + reg.to(G))).sum(1) * scale
            out[block.start - offset:block.stop - offset] = value.double().cpu().numpy()
        return out

    def _eigenbasis_self_influence(self, rows: slice | None, out: np.ndarray) -> bool:
        """Self-influence in the solver's eigenbasis (K-FAC / EK-FAC, no gradient store), written into ``out``:
        ``g~_i . (s * (g~_i + reg~)) / (n - 1)`` with ``g~`` the rotated row gradient, ``s`` the inverse eigenvalues
        -- equal to ``g_i^T A^-1 (g_i + l2 theta*) / (n - 1)`` (the basis is orthogonal), without the rotation back.
        False (``out`` untouched) where that path does not apply."""
        solver = self.solver
        if self.store_dir is not None or not solver.eigenbasis:
            return False
        s = solver.eigenbasis_scale()
        reg = solver.to_eigenbasis(self.regulariser_gradient()[None])[0]
        offset, scale = (0 if rows is None else rows.start or 0), self.removal_scale()
        size = rows_per_batch(self.space.p, s.element_size(), self.spec.gradients.memory_mb, self.rows.row_elems)
        for block, Xb, yb in self.loss.blocks(size, rows):
            G = solver.eigenbasis_gradients(Xb, yb, self.training.row)
            if G is None:  # decided by the model's structure: the first block already says so
                return False
            check_finite_rows(G, offset=block.start)
            out[block.start - offset:block.stop - offset] = ((G * s * (G + reg)).sum(1) * scale).double().cpu().numpy()
        return True

    def scores_for(self, W: torch.Tensor, rows: slice | None = None, train_loss: RowLoss | None = None,
                   reducer: ScoreReducer | None = None) -> Any:
        """(m, n) removal influence ``W (G + l2 theta*)^T / (n - 1)`` of each training row (or of ``rows`` only:
        (m, len(rows))) for precomputed ``W = A^-1 Q`` (:meth:`inverse_hvp`); ``G`` holds the rows' training-loss
        gradients. With another ``train_loss``: ``(1/n) W G^T`` with ``G`` its gradients (see :meth:`scores`).
        ``reducer``: as in :meth:`scores` (its ``result()`` is returned; default the dense matrix)."""
        reducer = DenseScores() if reducer is None else reducer
        reducer.start(W.shape[0], range(self.n)[rows] if rows is not None else range(self.n))
        removal = train_loss is None
        scale = self.removal_scale() if removal else 1.0 / self.n
        reg = self.regulariser_gradient()
        for block, G in self.train_gradients(rows=rows, loss=train_loss):
            if removal:
                G = G + reg.to(G)
            reducer.add(block, (W @ G.T).double().cpu() * scale)
        return reducer.result()

    def flip_influence(self, objective: Objective, n_classes: int) -> np.ndarray:
        """(n, n_classes) predicted change of a SCALAR objective when row i's label becomes c (0 at c = y_i).

        Negative entries are label changes predicted to decrease (improve) the objective.
        """
        W = self.inverse_hvp(objective)
        if W.shape[0] != 1:
            raise InputError(f"flip_influence: objective {objective.name!r} has {W.shape[0]} outputs; use a scalar one")
        w = W[0]
        own = np.zeros(self.n)
        for rows, G in self.train_gradients():
            own[rows] = (G @ w).double().cpu().numpy()
        out = np.zeros((self.n, n_classes))
        for c in range(n_classes):
            other = np.zeros(self.n)
            for rows, G in self.train_gradients(label_override=np.full(self.n, c)):
                other[rows] = (G @ w).double().cpu().numpy()
            out[:, c] = (own - other) / self.n
        out[np.arange(self.n), np.asarray(self.y)] = 0.0
        return out

    def predicted_labels(self) -> np.ndarray:
        """(n,) int64 most probable class of each training row under the (eval-mode) model, as
        ``predict_proba(model, X).argmax(1)`` but streamed one block at a time."""
        out = np.zeros(self.n, dtype=np.int64)
        with torch.no_grad():
            for rows, Xb, _ in self.rows.batches(self.spec.gradients.batch_size, None, *_input_device(self.model)):
                out[rows] = torch.softmax(self.model(Xb), dim=1).double().cpu().numpy().argmax(1)
        return out

    def _info(self) -> dict[str, Any]:
        s = self.solver
        return {"damping": float(s.damping_), "negative_curvature": bool(s.negative_curvature_),
                "params": str(self.space.subset), "p": self.space.p, "n": self.n, "solver": self.spec.solver.kind,
                "influence_params": self.space.describe(), **({"fisher": s.fisher_} if hasattr(s, "fisher_") else {})}


def _input_device(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters())
    return param.device, param.dtype


# ------------------------------------------------------------------------------------- one-call API
def compute_influence(model: nn.Module, train, objective: Objective, spec: InfluenceSpec, training: TrainingObjective,
                      store_dir: str | Path | None = None) -> InfluenceResult:
    """Influence of removing each training row on ``objective`` (m, n); see :class:`InfluenceEngine`."""
    return InfluenceEngine(model, train, spec, training, store_dir=store_dir).influence(objective)


def self_influence(model: nn.Module, train, spec: InfluenceSpec, training: TrainingObjective) -> np.ndarray:
    """(n,) self-influence ``g_i^T A^-1 (g_i + l2 theta*) / (n - 1)`` (high = the model had to bend to fit the row)."""
    return InfluenceEngine(model, train, spec, training).self_influence()


def pairwise_influence(model: nn.Module, train, spec: InfluenceSpec, training: TrainingObjective,
                       query=None) -> np.ndarray:
    """(m, n) influence of removing training row i on the loss of query row j (query defaults to ``train``)."""
    Xq, yq = train_arrays(train if query is None else query)
    return compute_influence(model, train, PerSampleLoss(Xq, yq), spec, training).scores


def __getattr__(name: str):
    """``projected_influence`` lives in :mod:`tda_clean.influence.projected` (imported from here before)."""
    if name == "projected_influence":
        from tda_clean.influence.projected import projected_influence

        return projected_influence
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
