"""Typed settings for the influence engine, validated once in ``__post_init__`` (kronfluence style).

Every setting object is a frozen dataclass; a wrong value raises :class:`~tda_clean.errors.InputError` naming
the field. Solver settings carry a ``kind`` that names the registered solver (``SOLVERS`` in
``tda_clean.influence.curvature``), so the orchestration never branches on a solver name.

Damping: ``damping="auto"`` means ``AUTO_DAMPING_FACTOR`` (0.01) x the mean eigenvalue of the training-loss
Hessian over the chosen parameters (trace / p) -- a scale-free default that keeps non-convex (MLP, CNN) systems
well posed. For convex models trained to the optimum (L2 logistic regression with lbfgs) pass ``damping=0.0``:
the Hessian already contains ``l2 * I`` and the exact solver is then exact.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

from tda_clean.errors import InputError

AUTO_DAMPING_FACTOR = 0.01

Damping = Union[float, Literal["auto"]]
ParamSubset = Union[Literal["all", "head"], tuple[str, ...]]


def _check_damping(value: Damping, owner: str) -> None:
    if value == "auto":
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or value != value:
        raise InputError(f"{owner}.damping: expected a float >= 0 or 'auto', got {value!r}")


def _check_positive(value, owner: str, key: str, *, integer: bool = False, allow_zero: bool = False) -> None:
    kind = int if integer else (int, float)
    bad = isinstance(value, bool) or not isinstance(value, kind) or (value < 0 if allow_zero else value <= 0)
    if bad:
        raise InputError(f"{owner}.{key}: expected a {'non-negative' if allow_zero else 'positive'} "
                         f"{'integer' if integer else 'number'}, got {value!r}")


def _check_choice(value, owner: str, key: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InputError(f"{owner}.{key}: {value!r} is not one of {', '.join(allowed)}")


@dataclass(frozen=True)
class ExactSettings:
    """Direct solve with the full damped Hessian over the parameter subset (p <= ``max_params``): Cholesky, or an
    eigendecomposition when ``H + damping I`` is not positive definite (see ``solvers.ExactSolver``).

    ``float64``: build and factor the Hessian in float64 whatever the model dtype.
    """

    kind: Literal["exact"] = "exact"
    damping: Damping = "auto"
    float64: bool = True
    max_params: int = 10_000
    hvp_chunk: int = 256  # basis vectors pushed through one batched HVP when building H

    def __post_init__(self) -> None:
        _check_damping(self.damping, "exact")
        _check_positive(self.max_params, "exact", "max_params", integer=True)
        _check_positive(self.hvp_chunk, "exact", "hvp_chunk", integer=True)


@dataclass(frozen=True)
class CGSettings:
    """Batched conjugate gradient on ``(H + damping I) x = v`` using exact Hessian-vector products.

    Stops when every column has ``||r|| <= tol * ||v||`` or after ``max_iter`` iterations.
    """

    kind: Literal["cg"] = "cg"
    damping: Damping = "auto"
    max_iter: int = 200
    tol: float = 1e-8

    def __post_init__(self) -> None:
        _check_damping(self.damping, "cg")
        _check_positive(self.max_iter, "cg", "max_iter", integer=True)
        _check_positive(self.tol, "cg", "tol")


@dataclass(frozen=True)
class LissaSettings:
    """LiSSA (Agarwal et al.; Koh & Liang): ``h <- v + (1 - d) h - H h / scale``, result ``h / scale``.

    With ``d = damping / scale`` the fixed point is ``(H + damping I)^-1 v``. ``scale="auto"`` takes 1.1 x the
    largest eigenvalue of ``H + damping I`` (power iteration), which guarantees convergence for a PSD system.
    ``batch_size=None`` uses full-batch HVPs (deterministic Neumann series); an integer draws a seeded
    mini-batch per step (stochastic LiSSA) and averages ``repeats`` independent runs.
    Stops early when ``||h_t - h_{t-1}|| <= tol * ||h_t||`` for every column.
    """

    kind: Literal["lissa"] = "lissa"
    damping: Damping = "auto"
    scale: Union[float, Literal["auto"]] = "auto"
    depth: int = 10_000
    repeats: int = 1
    batch_size: int | None = None
    tol: float = 1e-10
    seed: int = 0

    def __post_init__(self) -> None:
        _check_damping(self.damping, "lissa")
        if self.scale != "auto":
            _check_positive(self.scale, "lissa", "scale")
        _check_positive(self.depth, "lissa", "depth", integer=True)
        _check_positive(self.repeats, "lissa", "repeats", integer=True)
        if self.batch_size is not None:
            _check_positive(self.batch_size, "lissa", "batch_size", integer=True)
        _check_positive(self.tol, "lissa", "tol", allow_zero=True)


@dataclass(frozen=True)
class KFACSettings:
    """K-FAC / EK-FAC block-diagonal curvature for ``nn.Linear`` and ``nn.Conv2d`` layers.

    ``eigen_correction=True`` is EK-FAC (George et al. 2018): the Kronecker eigenbasis with eigenvalues re-fitted
    to per-sample gradients. ``fisher="sampled"`` draws labels from the model's predictive distribution (true
    Fisher = Gauss-Newton for cross-entropy); ``"empirical"`` uses the given labels.
    """

    kind: Literal["kfac", "ekfac"] = "ekfac"
    damping: Damping = "auto"
    fisher: Literal["sampled", "empirical"] = "sampled"
    seed: int = 0

    @property
    def eigen_correction(self) -> bool:
        return self.kind == "ekfac"

    def __post_init__(self) -> None:
        _check_choice(self.kind, "kfac", "kind", ("kfac", "ekfac"))
        _check_damping(self.damping, self.kind)
        _check_choice(self.fisher, self.kind, "fisher", ("sampled", "empirical"))


SolverSettings = Union[ExactSettings, CGSettings, LissaSettings, KFACSettings]


@dataclass(frozen=True)
class GradientSettings:
    """Where and how gradients are computed.

    params:     ``"all"``, ``"head"`` (the last Linear) or a tuple of module names (``("body.0", "head")``).
    memory_mb:  budget for one batch of per-sample gradients (rows per batch are derived from it).
    batch_size: rows per batch for HVPs / forward passes over the training set.
    dtype:      ``"model"`` keeps the model's dtype; ``"float32"`` / ``"float64"`` compute on a cast copy.
    device:     ``"model"`` keeps the model's device; ``"auto"`` picks CUDA when present; or ``"cpu"``/``"cuda"``.
    """

    params: ParamSubset = "all"
    memory_mb: float = 256.0
    batch_size: int = 1024
    dtype: Literal["model", "float32", "float64"] = "model"
    device: Literal["model", "auto", "cpu", "cuda"] = "model"

    def __post_init__(self) -> None:
        if not (self.params in ("all", "head") or (isinstance(self.params, tuple) and self.params
                                                   and all(isinstance(p, str) for p in self.params))):
            raise InputError(f"gradients.params: expected 'all', 'head' or a tuple of module names, got {self.params!r}")
        _check_positive(self.memory_mb, "gradients", "memory_mb")
        _check_positive(self.batch_size, "gradients", "batch_size", integer=True)
        _check_choice(self.dtype, "gradients", "dtype", ("model", "float32", "float64"))
        _check_choice(self.device, "gradients", "device", ("model", "auto", "cpu", "cuda"))


@dataclass(frozen=True)
class DualDASettings:
    """Crammer-Singer multiclass SVM surrogate on penultimate features (DualDA).

    C:        box constraint of the dual (``alpha_i^{y_i} <= C``); it sets how many rows are support vectors, i.e.
              the sparsity of the attributions (measure it with ``DualDA.support_``: with overlapping classes a
              small C puts most rows at the bound, a large C keeps only margin violators).
    max_iter: accelerated projected-gradient iterations on the dual; ``tol`` stops on the relative duality gap.
    """

    C: float = 1.0
    max_iter: int = 5000
    tol: float = 1e-6
    batch_size: int = 1024

    def __post_init__(self) -> None:
        _check_positive(self.C, "dualda", "C")
        _check_positive(self.max_iter, "dualda", "max_iter", integer=True)
        _check_positive(self.tol, "dualda", "tol")
        _check_positive(self.batch_size, "dualda", "batch_size", integer=True)


def solver_settings(solver: "str | SolverSettings", damping: Damping | None = None) -> SolverSettings:
    """``"exact" | "cg" | "lissa" | "kfac" | "ekfac"`` (defaults) or a settings object -> a settings object.

    ``damping`` (when not None) overrides the damping of a solver given by name.
    """
    if not isinstance(solver, str):
        if not isinstance(solver, (ExactSettings, CGSettings, LissaSettings, KFACSettings)):
            raise InputError(f"solver: expected a solver name or settings object, got {type(solver).__name__}")
        return solver
    extra = {} if damping is None else {"damping": damping}
    table = {"exact": ExactSettings, "cg": CGSettings, "lissa": LissaSettings}
    if solver in table:
        return table[solver](**extra)
    if solver in ("kfac", "ekfac"):
        return KFACSettings(kind=solver, **extra)
    raise InputError(f"solver: {solver!r} is not one of exact, cg, lissa, kfac, ekfac")
