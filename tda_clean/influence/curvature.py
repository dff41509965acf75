"""Curvature of the training loss behind one interface: ``fit(loss)``, ``hvp(V)``, ``solve(V)``.

The curvature is the Hessian of the TRAINING objective the trainer minimises (:class:`~tda_clean.objective.
TrainingObjective`, unweighted), restricted to the parameter subset:

    L(theta) = (1/n) sum_i loss(f(x_i; theta), y_i) + (l2/2) ||theta||^2,   H = d^2 L / d theta^2 = H_loss + l2 I

and every solver works on the damped system ``A = H + damping I`` (K-FAC solvers replace ``H_loss`` by their
Kronecker approximation). Vectors come in batches ``V`` of shape ``(k, p)``:

* ``hvp(V)``   -> ``(k, p)`` rows ``A v``
* ``solve(V)`` -> ``(k, p)`` rows ``A^-1 v``  (so ``solve(hvp(V)) == V`` up to solver accuracy)

After ``fit`` a solver exposes ``damping_`` (the value used), ``negative_curvature_`` (True when H was found to
have a negative eigenvalue / direction; a warning is also emitted) and ``min_eigenvalue_`` where known.
A damping that leaves ``A`` singular raises :class:`InputError`.

Solvers register by name in ``SOLVERS`` (``register_solver``); ``tda_clean.influence.solvers.make_solver(settings)``
builds one from its settings object, whose ``kind`` is the registered name. Solvers declare what they can do as
class attributes (``eigenbasis``: scores ``q^T A^-1 g`` from gradients projected on the solver's eigenbasis).
"""
from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from typing import Callable, ClassVar, Iterator, Literal

import torch
from torch import nn
from torch.func import grad, jvp, vmap

from tda_clean.config.influence import AUTO_DAMPING_FACTOR, Damping, SolverSettings
from tda_clean.errors import InputError
from tda_clean.influence.params import ParamSpace
from tda_clean.influence.rows import Block, TrainRows, as_rows
from tda_clean.objective import TrainingObjective
from tda_clean.progress import progress_bar


class NegativeCurvatureWarning(UserWarning):
    """The training-loss Hessian has negative curvature (the model is not at a minimum of a convex loss)."""


class TrainingLoss:
    """The training ``objective`` over a :class:`ParamSpace`, on training rows ``X`` (n, ...), ``y`` (n,) -- or
    ``X`` a :class:`~tda_clean.influence.rows.TrainRows` (``y`` then ignored): rows are read in blocks of
    ``batch_size`` (:meth:`blocks`), never as one tensor; results do not depend on ``batch_size`` beyond rounding.
    """

    def __init__(self, space: ParamSpace, X, y, objective: TrainingObjective, batch_size: int = 1024):
        self.objective = objective
        self.space = space
        self.rows: TrainRows = X if isinstance(X, TrainRows) else as_rows((X, y))
        if self.rows.n == 0:
            raise InputError("training set is empty: influence needs at least one training row")
        self.n = self.rows.n
        self.l2 = float(objective.l2)
        self.batch_size = int(batch_size)
        self.theta = space.flat()
        self._dense: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def p(self) -> int:
        return self.space.p

    @property
    def dtype(self) -> torch.dtype:
        return self.theta.dtype

    @property
    def device(self) -> torch.device:
        return self.theta.device

    def blocks(self, size: int | None = None, rows: slice | None = None) -> Iterator[Block]:
        """``(rows_b, X_b, y_b)`` blocks of ``size`` (default ``batch_size``) training rows on the model's device."""
        return self.rows.batches(size or self.batch_size, rows, self.device, self.dtype)

    @property
    def labels(self) -> torch.Tensor:
        """(n,) long training labels on the model's device (labels are small: always in memory)."""
        return torch.as_tensor(self.rows.labels, device=self.device)

    @property
    def X(self) -> torch.Tensor:
        """ALL training features as one tensor (n, ...): materialised on first use, for small data sets and the
        group estimators; the streamed paths (solvers, K-FAC, scoring) never call it."""
        return self._materialised()[0]

    @property
    def y(self) -> torch.Tensor:
        return self._materialised()[1]

    def _materialised(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._dense is None:
            self._dense = self.rows.materialise(self.device, self.dtype)
        return self._dense

    def _sum_loss(self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.objective.data_sum(self.space.forward(theta, X), y)

    def value(self, theta: torch.Tensor | None = None) -> torch.Tensor:
        """``L(theta)`` (scalar) at ``theta`` (p,), default the current parameters."""
        theta = self.theta if theta is None else theta
        with torch.no_grad():
            total = sum(self._sum_loss(theta, Xb, yb) for _, Xb, yb in self.blocks())
        return total / self.n + self.objective.regulariser(theta)

    def hvp(self, V: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Undamped ``H V``: ``V`` (k, p) -> (k, p). ``rows`` (m,) restricts the CE part to those training rows
        (its mean over them), e.g. for stochastic LiSSA (needs a random-access source)."""
        if rows is None:
            n, blocks = self.n, ((Xb, yb) for _, Xb, yb in self.blocks())
        else:
            n = len(rows)
            blocks = (self.rows.take(rows[a:a + self.batch_size], self.device, self.dtype)
                      for a in range(0, n, self.batch_size))
        out = torch.zeros_like(V)
        for Xb, yb in blocks:
            out += loss_hvps(lambda th: self._sum_loss(th, Xb, yb), self.theta, V, hvp_mode(self.space, len(Xb)))
        return out / n + self.l2 * V

    def hessian(self, chunk: int = 256, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Full ``H`` (p, p), built from batched HVPs on basis vectors, symmetrised."""
        eye = torch.eye(self.p, dtype=self.dtype, device=self.device)
        blocks = []
        with progress_bar(self.p, "hessian columns", "col", worth_showing=self.p > chunk) as bar:
            for a in range(0, self.p, chunk):
                blocks.append(self.hvp(eye[a : a + chunk]))
                bar.update(len(blocks[-1]))
        H = torch.cat(blocks)
        H = 0.5 * (H + H.T)
        return H if dtype is None else H.to(dtype)

    def trace_estimate(self, probes: int = 16, seed: int = 0) -> float:
        """Hutchinson estimate of ``trace(H)`` with seeded Rademacher probes."""
        gen = torch.Generator(device="cpu").manual_seed(seed)
        Z = (torch.randint(0, 2, (probes, self.p), generator=gen) * 2 - 1).to(self.device, self.dtype)
        return float((Z * self.hvp(Z)).sum(dim=1).mean())


HvpMode = Literal["reverse", "vmap"]
REVERSE_MIN_WORK = 4_000_000  # rows x selected parameters above which the per-vector backward loop wins


def hvp_mode(space: ParamSpace, rows: int) -> HvpMode:
    """How :func:`loss_hvps` pushes vectors through ``rows`` training rows (deterministic: no timing involved).

    ``reverse`` when a convolution owns selected parameters or ``rows * p >= REVERSE_MIN_WORK``, else ``vmap``.
    Reverse-over-reverse (one graph, one backward per vector) wins over ``vmap(jvp(grad))`` on conv layers and
    on large ``rows * p``; ``vmap`` wins below ``REVERSE_MIN_WORK`` (small MLPs, last layers alone), where the
    per-call overhead of the loop dominates (timings: BENCHMARKS.md, ``benchmarks/engine_micro.py``).
    """
    has_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in space.owners().values())
    return "reverse" if has_conv or rows * space.p >= REVERSE_MIN_WORK else "vmap"


def loss_hvps(loss: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, V: torch.Tensor,
              mode: HvpMode = "reverse") -> torch.Tensor:
    """Hessian of the scalar ``loss(theta)`` at ``theta`` (p,) times each row of ``V`` (k, p) -> (k, p).

    ``reverse``: build ``grad loss`` with its graph once, then one backward per vector; ``vmap``: forward-over-
    reverse ``jvp(grad)`` vectorised over the rows of ``V``. Both are exact (they agree to float rounding).
    """
    if len(V) == 0:
        return torch.zeros_like(V)
    if mode == "vmap":
        g = grad(loss)
        with torch.no_grad():
            return vmap(lambda v: jvp(g, (theta,), (v,))[1])(V)
    th = theta.detach().requires_grad_(True)
    with torch.enable_grad():
        g = torch.autograd.grad(loss(th), th, create_graph=True)[0]
    if not g.requires_grad:  # loss linear in theta
        return torch.zeros_like(V)
    last = len(V) - 1
    return torch.stack([torch.autograd.grad(g, th, v, retain_graph=i < last)[0] for i, v in enumerate(V)])


def resolve_damping(damping: Damping, mean_eigenvalue: Callable[[], float]) -> float:
    """``"auto"`` -> ``AUTO_DAMPING_FACTOR`` x mean eigenvalue of H (at least a tiny positive floor)."""
    if damping != "auto":
        return float(damping)
    mean = float(mean_eigenvalue())
    return max(AUTO_DAMPING_FACTOR * abs(mean), 1e-8)


def warn_negative_curvature(solver: str, detail: str) -> None:
    warnings.warn(
        f"{solver}: the training-loss Hessian has negative curvature ({detail}); the model is not at a minimum of "
        "a convex loss. Influence uses the damped system H + damping*I; raise damping if results look unstable.",
        NegativeCurvatureWarning, stacklevel=3,
    )


class CurvatureSolver(ABC):
    """Base class: ``fit(loss)`` once, then ``hvp(V)`` / ``solve(V)`` on ``(k, p)`` batches (see module doc)."""

    name: ClassVar[str] = "base"
    eigenbasis: ClassVar[bool] = False  # provides eigenbasis_gradients / eigenbasis_scale (see kfac.py)

    def __init__(self, settings: SolverSettings):
        self.settings = settings

    @abstractmethod
    def fit(self, loss: TrainingLoss) -> "CurvatureSolver":
        ...

    def hvp(self, V: torch.Tensor) -> torch.Tensor:
        """``(H + damping I) V`` for ``V`` (k, p): exact, through the training loss kept by ``fit`` as ``loss_``
        (solvers with their own curvature model override it)."""
        V = self._check_vectors(V)
        return self.loss_.hvp(V) + self.damping_ * V

    @abstractmethod
    def solve(self, V: torch.Tensor) -> torch.Tensor:
        """``(H + damping I)^-1 V`` for ``V`` (k, p)."""

    def _check_fitted(self) -> None:
        if not hasattr(self, "damping_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(TrainingLoss(...)) first")

    def _check_vectors(self, V: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        if V.dim() == 1:
            V = V.unsqueeze(0)
        if V.dim() != 2 or V.shape[1] != self.p_:
            raise InputError(f"{self.name}: expected vectors of shape (k, {self.p_}), got {tuple(V.shape)}")
        return V


SOLVERS: dict[str, type[CurvatureSolver]] = {}


def register_solver(*kinds: str) -> Callable[[type[CurvatureSolver]], type[CurvatureSolver]]:
    def wrap(cls: type[CurvatureSolver]) -> type[CurvatureSolver]:
        for kind in kinds:
            SOLVERS[kind] = cls
        return cls

    return wrap

