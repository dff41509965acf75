"""The influence spec: which curvature solver (with its settings and damping), which parameters, which dtype.

One typed, validated (pydantic, frozen) description passed whole from the config to
``InfluenceEngine.from_spec``; nothing downstream re-reads a solver name or a damping. Solver settings carry a
``kind`` naming the registered solver (``SOLVERS`` in ``tda_clean.influence.curvature``).

Damping lives in the solver settings only: ``"auto"`` means ``AUTO_DAMPING_FACTOR`` (0.01) x the mean eigenvalue
of the training-loss Hessian over the chosen parameters (trace / p) -- a scale-free default that keeps
non-convex (MLP, CNN) systems well posed. For convex models trained to the optimum (L2 logistic regression with
lbfgs) pass ``damping=0.0``: the Hessian already contains ``l2 * I`` and the exact solver is then exact.
"""
from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal, Union

from pydantic import Field, field_validator

from tda_clean.config.base import _Frozen

AUTO_DAMPING_FACTOR = 0.01
DEFAULT_FRACTION = 0.05

Damping = Union[Annotated[float, Field(ge=0)], Literal["auto"]]
SolverKind = Literal["exact", "cg", "lissa", "kfac", "ekfac"]
ParamSubset = Union[Literal["all", "head"], str, tuple[str, ...]]  # str / tuple: module names or glob patterns


class ExactSettings(_Frozen):
    """Direct solve with the full damped Hessian over the parameter subset (p <= ``max_params``): Cholesky, or an
    eigendecomposition when ``H + damping I`` is not positive definite (see ``solvers.ExactSolver``).

    ``float64``: build and factor the Hessian in float64 whatever the model dtype.
    """

    kind: Literal["exact"] = "exact"
    damping: Damping = "auto"
    float64: bool = True
    max_params: int = Field(default=10_000, gt=0)
    hvp_chunk: int = Field(default=256, gt=0)  # basis vectors pushed through one batched HVP when building H


class CGSettings(_Frozen):
    """Batched conjugate gradient on ``(H + damping I) x = v`` using exact Hessian-vector products.

    Stops when every column has ``||r|| <= tol * ||v||`` or after ``max_iter`` iterations.
    """

    kind: Literal["cg"] = "cg"
    damping: Damping = "auto"
    max_iter: int = Field(default=200, gt=0)
    tol: float = Field(default=1e-8, gt=0)


class LissaSettings(_Frozen):
    """LiSSA (Agarwal et al.; Koh & Liang): ``h <- v + (1 - d) h - H h / scale``, result ``h / scale``.

    With ``d = damping / scale`` the fixed point is ``(H + damping I)^-1 v``. ``scale="auto"`` takes 1.1 x the
    largest eigenvalue of ``H + damping I`` (power iteration), which guarantees convergence for a PSD system.
    ``batch_size=None`` uses full-batch HVPs (deterministic Neumann series); an integer draws a seeded
    mini-batch per step (stochastic LiSSA) and averages ``repeats`` independent runs.
    Stops early when ``||h_t - h_{t-1}|| <= tol * ||h_t||`` for every column.
    """

    kind: Literal["lissa"] = "lissa"
    damping: Damping = "auto"
    scale: Union[Annotated[float, Field(gt=0)], Literal["auto"]] = "auto"
    depth: int = Field(default=10_000, gt=0)
    repeats: int = Field(default=1, gt=0)
    batch_size: int | None = Field(default=None, gt=0)
    tol: float = Field(default=1e-10, ge=0)
    seed: int = 0


class KFACSettings(_Frozen):
    """K-FAC / EK-FAC block-diagonal curvature for ``nn.Linear`` and ``nn.Conv2d`` layers.

    ``eigen_correction`` (``kind="ekfac"``) is EK-FAC (George et al. 2018): the Kronecker eigenbasis with
    eigenvalues re-fitted to per-sample gradients. ``fisher="sampled"`` draws labels from the model's predictive
    distribution (true Fisher = Gauss-Newton for cross-entropy); ``"empirical"`` uses the given labels (always
    when the training loss is not cross-entropy).
    """

    kind: Literal["kfac", "ekfac"] = "ekfac"
    damping: Damping = "auto"
    fisher: Literal["sampled", "empirical"] = "sampled"
    seed: int = 0

    @property
    def eigen_correction(self) -> bool:
        return self.kind == "ekfac"


SolverSettings = Annotated[Union[ExactSettings, CGSettings, LissaSettings, KFACSettings], Field(discriminator="kind")]


class GradientSettings(_Frozen):
    """Where and how gradients are computed.

    params:     ``"all"``, ``"head"`` (module ``head``, else the last Linear), a module name or glob pattern over
                ``named_modules()`` (``"layer4.*"``), or a tuple of them (``("body.0", "head")``).
    memory_mb:  budget for one batch of per-sample gradients (rows per batch are derived from it).
    batch_size: rows per batch for HVPs / forward passes over the training set.
    dtype:      ``"model"`` keeps the model's dtype; ``"float32"`` / ``"float64"`` compute on a cast copy.
    device:     ``"model"`` keeps the model's device; ``"auto"`` picks CUDA when present; or ``"cpu"``/``"cuda"``.
    """

    params: ParamSubset = "all"
    memory_mb: float = Field(default=256.0, gt=0)
    batch_size: int = Field(default=1024, gt=0)
    dtype: Literal["model", "float32", "float64"] = "model"
    device: Literal["model", "auto", "cpu", "cuda"] = "model"

    @field_validator("params")
    @classmethod
    def _named_modules(cls, value):
        if not value:
            raise ValueError("expected 'all', 'head' or a non-empty tuple of module names")
        return value


class InfluenceSpec(_Frozen):
    """Everything that decides an influence computation besides the model, data and training objective:
    ``solver`` (settings object with its ``kind`` and ``damping``; a bare name such as ``"cg"`` means that
    solver's defaults) and ``gradients`` (parameter subset, dtype, device, memory). Built once (the config's
    ``influence`` property) and handed whole to ``InfluenceEngine.from_spec``."""

    solver: SolverSettings = ExactSettings()
    gradients: GradientSettings = GradientSettings()

    @field_validator("solver", mode="before")
    @classmethod
    def _solver_by_name(cls, value):
        return {"kind": value} if isinstance(value, str) else value


class DualDASettings(_Frozen):
    """Crammer-Singer multiclass SVM surrogate on penultimate features (DualDA).

    C:        box constraint of the dual (``alpha_i^{y_i} <= C``); it sets how many rows are support vectors, i.e.
              the sparsity of the attributions (measure it with ``DualDA.support_``: with overlapping classes a
              small C puts most rows at the bound, a large C keeps only margin violators).
    max_iter: accelerated projected-gradient iterations on the dual; ``tol`` stops on the relative duality gap.
    """

    C: float = Field(default=1.0, gt=0)
    max_iter: int = Field(default=5000, gt=0)
    tol: float = Field(default=1e-6, gt=0)
    batch_size: int = Field(default=1024, gt=0)


class Budget(_Frozen):
    """How many rows a selector may flag: at most ``max_flagged`` and at most ``ceil(fraction * n)`` (the
    smaller when both are set)."""

    max_flagged: int | None = Field(default=None, ge=1)
    fraction: float | None = Field(default=None, gt=0, lt=1)

    def cap(self, n: int) -> int | None:
        """The cap on ``n`` candidate rows, or None when neither limit is set."""
        caps = [int(self.max_flagged)] if self.max_flagged is not None else []
        if self.fraction is not None:
            caps.append(int(math.ceil(self.fraction * n)))
        return min(caps) if caps else None

    def rows(self, n: int, default: float = DEFAULT_FRACTION) -> int:
        """The cap, or ``ceil(default * n)`` when none is set; within ``[0, n]``."""
        cap = self.cap(n)
        return max(0, min(n, int(math.ceil(default * n)) if cap is None else cap))


class InfluenceFields(_Frozen):
    """Config fields of every influence-based part (detectors, unlearning): ``solver``, ``damping`` (added to
    the Hessian; ``auto`` = 0.01 x its mean eigenvalue; use 0 for an L2 logistic model trained with lbfgs),
    ``params`` (``head`` = last layer, exact-solver friendly; or module names / glob patterns) and ``dtype`` (CUDA used when present). Read them
    together as the :class:`InfluenceSpec` ``influence``. ``memory_mb`` / ``batch_size``: the memory budget of one
    block of per-sample gradients and the rows per forward pass (:class:`GradientSettings`); peak memory follows
    them, not the number of training rows (training rows are streamed)."""

    device: ClassVar[str] = "auto"
    solver: SolverKind = "exact"
    params: ParamSubset = "head"
    damping: Damping = "auto"
    dtype: Literal["model", "float32", "float64"] = "float32"
    memory_mb: float = Field(default=256.0, gt=0)
    batch_size: int = Field(default=1024, gt=0)

    @property
    def influence(self) -> InfluenceSpec:
        return InfluenceSpec(solver={"kind": self.solver, "damping": self.damping},
                             gradients=GradientSettings(params=self.params, dtype=self.dtype, device=self.device,
                                                        memory_mb=self.memory_mb, batch_size=self.batch_size))


class BudgetFields(_Frozen):
    """Config fields ``max_flagged`` / ``fraction``, read together as the :class:`Budget` ``budget``."""

    max_flagged: int | None = Field(default=None, ge=1)
    fraction: float | None = Field(default=None, gt=0, lt=1)

    @property
    def budget(self) -> Budget:
        return Budget(max_flagged=self.max_flagged, fraction=self.fraction)
