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

from pydantic import Field, field_validator, model_validator

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


class ProjectionSettings(_Frozen):
    """The random projection of projected (TRAK-style) influence (``projected_influence``).

    method:    ``"factored"`` (default): per ``nn.Linear`` / ``nn.Conv2d`` layer a Kronecker product
               ``P_out (x) P_in`` applied to layer inputs and output gradients, no per-sample gradient materialised;
               other selected parameters (BatchNorm, ...) are left out. ``"dense"``: one ``(p, k)`` matrix over every
               selected parameter, applied to materialised per-sample gradients.
    k:         projected width (``"factored"``: at most ``k``, see ``factored_projection``).
    kind:      Rademacher or Gaussian entries; ``seed``: the projection's seed.
    precision: dtype of the scoring product (queries x training rows); the curvature is always float64.
    """

    method: Literal["factored", "dense"] = "factored"
    k: int = Field(default=512, gt=0)
    kind: Literal["rademacher", "gaussian"] = "rademacher"
    seed: int = 0
    precision: Literal["float64", "float32"] = "float64"


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


#: default candidate budgets of the automatic budget: fractions of the training rows, roughly x1.5 apart
AUTO_FRACTIONS = (0.0025, 0.004, 0.006, 0.009, 0.013, 0.02, 0.03, 0.045, 0.065, 0.1, 0.15, 0.22)


class AutoBudget(_Frozen):
    """The budget chosen from evidence (``tda_clean.selection.budget_curve``, docs/methods.md#automatic-budget).

    The validation split is split (seeded by ``seed`` and the run seed, stratified by label) into a selection
    part (``selection_share`` of its rows) and a held-out part. The detector ranks the training rows using the
    selection part only; for each candidate budget k (``rows``, else ``ceil(f * n_train)`` for each f in
    ``fractions``; kept when 1 <= k < n_train) the top-k rows are removed or relabelled as the action would and the
    model refitted (warm start from the trained model, the run's training config). Chosen: the k with the largest
    decrease of the objective on the selection part (``rule: max``; ``one_se``: the smallest k within one standard
    error of the paired per-row difference of it, for ``val_loss`` and ``criterion: accuracy``), among the
    candidates whose selection-part accuracy is at most ``tolerance`` (a fraction: 0.005 = half a point; plus two
    standard errors) below the refitted k = 0 model's; the decrease must exceed ``min_gain``. It must hold on the
    held-out part too (objective lower by more than ``min_gain``, accuracy within the same tolerance), else the largest smaller
    candidate that holds, else 0 (nothing worth cleaning). ``criterion: accuracy`` measures the curve as the error
    rate (1 - accuracy) instead of the detector's objective."""

    fractions: tuple[float, ...] = AUTO_FRACTIONS
    rows: tuple[int, ...] | None = None
    criterion: Literal["objective", "accuracy"] = "objective"
    rule: Literal["max", "one_se"] = "max"
    tolerance: float = Field(default=0.005, ge=0, lt=1)
    min_gain: float = Field(default=0.0, ge=0)
    selection_share: float = Field(default=0.5, gt=0, lt=1)
    seed: int = 0

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, value):
        if not value:
            raise ValueError("expected at least one candidate fraction of the training rows")
        bad = [f for f in value if not 0 < f < 1]
        if bad:
            raise ValueError(f"candidate fractions must lie in (0, 1); got {bad[0]!r}")
        return tuple(sorted(set(value)))

    @field_validator("rows")
    @classmethod
    def _rows(cls, value):
        if value is None:
            return value
        if not value:
            raise ValueError("expected at least one candidate row count (or leave rows unset)")
        bad = [k for k in value if k < 1]
        if bad:
            raise ValueError(f"candidate row counts must be >= 1; got {bad[0]!r}")
        return tuple(sorted(set(value)))

    def candidates(self, n: int) -> list[int]:
        """The candidate budgets for ``n`` training rows, ascending, each in ``[1, n - 1]`` (may be empty)."""
        ks = self.rows if self.rows is not None else [int(math.ceil(f * n)) for f in self.fractions]
        return sorted({int(k) for k in ks if 1 <= k < n})


class Budget(_Frozen):
    """How many rows a selector may flag: at most ``max_flagged`` and at most ``ceil(fraction * n)`` (the
    smaller when both are set); or, with ``auto``, a budget chosen on the validation split (:class:`AutoBudget`)."""

    max_flagged: int | None = Field(default=None, ge=1)
    fraction: float | None = Field(default=None, gt=0, lt=1)
    auto: AutoBudget | None = None

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
    together as the :class:`InfluenceSpec` ``influence``. ``influence_memory_mb`` / ``influence_batch_size``: the
    memory budget of one block of per-sample gradients and the rows per forward pass (``memory_mb`` / ``batch_size``
    of :class:`GradientSettings`); peak memory follows them, not the number of training rows (rows are streamed)."""

    device: ClassVar[str] = "auto"
    solver: SolverKind = "exact"
    params: ParamSubset = "head"
    damping: Damping = "auto"
    dtype: Literal["model", "float32", "float64"] = "float32"
    influence_memory_mb: float = Field(default=256.0, gt=0)
    influence_batch_size: int = Field(default=1024, gt=0)

    @property
    def influence(self) -> InfluenceSpec:
        return InfluenceSpec(solver={"kind": self.solver, "damping": self.damping},
                             gradients=GradientSettings(params=self.params, dtype=self.dtype, device=self.device,
                                                        memory_mb=self.influence_memory_mb,
                                                        batch_size=self.influence_batch_size))


class AutoBudgetField(_Frozen):
    """Config field ``auto_budget`` (:class:`AutoBudget`; ``max_flagged: auto`` is short for ``auto_budget: {}``).
    It replaces ``max_flagged`` / ``fraction``: setting both is an error."""

    auto_budget: AutoBudget | None = None

    @model_validator(mode="before")
    @classmethod
    def _auto_shorthand(cls, data):
        if isinstance(data, dict) and data.get("max_flagged") == "auto":
            data = {k: v for k, v in data.items() if k != "max_flagged"}
            data["auto_budget"] = data.get("auto_budget") or {}
        if isinstance(data, dict) and data.get("auto_budget") is not None:
            fixed = [k for k in ("max_flagged", "fraction") if data.get(k) is not None]
            if fixed:
                raise ValueError(f"auto_budget chooses the budget; remove {fixed[0]} (or auto_budget)")
        return data


class BudgetFields(AutoBudgetField):
    """Config fields ``max_flagged`` / ``fraction`` (or ``auto_budget``), read together as the :class:`Budget`
    ``budget``."""

    max_flagged: int | None = Field(default=None, ge=1)
    fraction: float | None = Field(default=None, gt=0, lt=1)

    @property
    def budget(self) -> Budget:
        return Budget(max_flagged=self.max_flagged, fraction=self.fraction, auto=self.auto_budget)
