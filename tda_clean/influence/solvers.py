"""Exact, conjugate-gradient and LiSSA solvers for ``(H + damping I) x = v`` (interface in ``curvature.py``), and
``make_solver``: the registered solver (these three, K-FAC / EK-FAC from ``kfac.py``) for a settings object."""
from __future__ import annotations

import torch

from tda_clean.config.influence import CGSettings, ExactSettings, LissaSettings, SolverSettings
from tda_clean.errors import InputError
from tda_clean.influence.curvature import (
    SOLVERS, CurvatureSolver, TrainingLoss, register_solver, resolve_damping, warn_negative_curvature,
)
from tda_clean.influence.kfac import KFACSolver  # noqa: F401  (registers kfac / ekfac)
from tda_clean.progress import progress_bar

_SINGULAR_RTOL = 1e-12


def _negative_tolerance(dtype: torch.dtype) -> float:
    """Relative size below which an eigenvalue of H counts as zero, not negative (float rounding of H)."""
    return max(1e-9, 100 * torch.finfo(dtype).eps)


@register_solver("exact")
class ExactSolver(CurvatureSolver):
    """Direct solve with the full damped matrix ``A = H + damping I`` (p, p).

    Builds the Hessian from HVPs, so it refuses ``p > settings.max_params`` (use ``params="head"`` or the
    cg / lissa / ekfac solvers). ``A`` positive definite and well conditioned (the usual case): Cholesky factor,
    ``solve(V)`` by two triangular solves. Otherwise (``A`` indefinite, singular or nearly so): the eigendecomposition
    ``H = Q diag(lam) Q^T``, which solves an indefinite nonsingular system and refuses a singular one (slower
    to fit).

    Attributes after fit: ``matrix_`` (p, p) = ``A``, ``damping_``, ``factorization_`` (``"cholesky"`` or
    ``"eigh"``), ``negative_curvature_`` (H has an eigenvalue below ``-tol * ||H||``, tol = max(1e-9, 100 eps):
    on the Cholesky path, the factorisation of ``H + tol ||H|| I`` fails) and ``min_eigenvalue_`` of H (computed
    on first access after a Cholesky fit: an eigenvalue solve). ``||H||`` is the Gershgorin bound max_i sum_j |H_ij|.
    """

    name = "exact"
    settings: ExactSettings

    def fit(self, loss: TrainingLoss) -> "ExactSolver":
        s = self.settings
        if loss.p > s.max_params:
            raise InputError(
                f"exact solver: {loss.p} parameters exceed max_params={s.max_params} (the Hessian would be "
                f"{loss.p}x{loss.p}); use params='head' or a named-module subset, or solver cg / lissa / ekfac"
            )
        self.p_, self.out_dtype_ = loss.p, loss.dtype
        work = torch.float64 if s.float64 else loss.dtype
        H = loss.hessian(chunk=s.hvp_chunk, dtype=work)
        self.damping_ = resolve_damping(s.damping, lambda: float(torch.diagonal(H).mean()))  # trace / p
        scale = max(float(H.abs().sum(1).max()), 1e-30) if loss.p else 1.0  # >= the largest |eigenvalue| of H
        tol = _negative_tolerance(work) * scale
        for stale in ("factor_", "eigenvalues_", "eigenvectors_", "inv_eigenvalues_"):
            self.__dict__.pop(stale, None)
        H.diagonal().add_(self.damping_)  # H becomes A in place: one p x p matrix kept
        self.matrix_, self._min_eigenvalue = H, None
        if self._cholesky(H, work):
            H.diagonal().add_(tol - self.damping_)
            self.negative_curvature_ = int(torch.linalg.cholesky_ex(H)[1]) != 0
            H.diagonal().add_(self.damping_ - tol)
            if self.negative_curvature_:
                warn_negative_curvature("exact", f"H + {tol:.2g} I is not positive definite; H + damping*I is")
            return self
        H.diagonal().sub_(self.damping_)
        lam, Q = torch.linalg.eigh(H)
        H.diagonal().add_(self.damping_)
        self.factorization_, self.eigenvalues_, self.eigenvectors_ = "eigh", lam, Q
        self._min_eigenvalue = float(lam[0])
        self.negative_curvature_ = self._min_eigenvalue < -tol
        if self.negative_curvature_:
            warn_negative_curvature("exact", f"smallest eigenvalue {self._min_eigenvalue:.3g}")
        shifted = lam + self.damping_
        if float(shifted.abs().min()) <= _SINGULAR_RTOL * max(float(shifted.abs().max()), 1e-30):
            raise InputError(
                f"exact solver: damping={self.damping_:.3g} leaves H + damping*I singular (eigenvalue "
                f"{float(shifted[shifted.abs().argmin()]):.3g}); use a positive damping larger than "
                f"{max(0.0, -self._min_eigenvalue):.3g} or damping='auto'"
            )
        self.inv_eigenvalues_ = 1.0 / shifted
        return self

    def _cholesky(self, A: torch.Tensor, work: torch.dtype) -> bool:
        """Factor ``A``; accept it only if a seeded test solve has a small residual (pivots alone can hide a
        near-singular A)."""
        L, info = torch.linalg.cholesky_ex(A)
        if int(info) != 0:
            return False
        v = torch.randn(len(A), 1, dtype=work, generator=torch.Generator().manual_seed(0)).to(A.device)
        x = torch.cholesky_solve(v, L)
        if not bool(torch.isfinite(x).all()) or float((A @ x - v).norm()) > torch.finfo(work).eps ** 0.5 * float(v.norm()):
            return False
        self.factorization_, self.factor_ = "cholesky", L
        return True

    @property
    def min_eigenvalue_(self) -> float:
        """Smallest eigenvalue of the undamped H (an eigenvalue solve on first access after a Cholesky fit)."""
        self._check_fitted()
        if self._min_eigenvalue is None:
            self._min_eigenvalue = float(torch.linalg.eigvalsh(self.matrix_)[0]) - self.damping_
        return self._min_eigenvalue

    def hvp(self, V: torch.Tensor) -> torch.Tensor:
        V = self._check_vectors(V)
        return (V.to(self.matrix_.dtype) @ self.matrix_).to(V.dtype)

    def solve(self, V: torch.Tensor) -> torch.Tensor:
        V = self._check_vectors(V)
        W = V.to(self.matrix_.dtype)
        if self.factorization_ == "cholesky":
            return torch.cholesky_solve(W.T, self.factor_).T.to(V.dtype)
        Q = self.eigenvectors_
        return (((W @ Q) * self.inv_eigenvalues_) @ Q.T).to(V.dtype)


@register_solver("cg")
class CGSolver(CurvatureSolver):
    """Batched conjugate gradient: one independent CG per row of ``V``, sharing each batched HVP.

    ``damping="auto"`` uses a Hutchinson estimate of trace(H)/p. A direction with ``d^T A d <= 0`` marks
    negative curvature (``negative_curvature_``, warning); if A is then not positive definite CG cannot solve it
    and an InputError asks for more damping. ``iterations_`` and ``residuals_`` (k,) report convergence.
    """

    name = "cg"
    settings: CGSettings

    def fit(self, loss: TrainingLoss) -> "CGSolver":
        self.loss_, self.p_ = loss, loss.p
        self.damping_ = resolve_damping(self.settings.damping, lambda: loss.trace_estimate() / loss.p)
        self.negative_curvature_ = False
        self.min_eigenvalue_ = None
        return self

    def solve(self, V: torch.Tensor) -> torch.Tensor:
        V = self._check_vectors(V)
        s = self.settings
        X = torch.zeros_like(V)
        R = V.clone()
        P = R.clone()
        rr = (R * R).sum(1)
        target = (s.tol * V.norm(dim=1)) ** 2
        active = rr > target
        it = 0
        with progress_bar(s.max_iter, "cg iterations", worth_showing=self.p_ * len(V) > 10**6) as bar:
            while bool(active.any()) and it < s.max_iter:
                AP = self.hvp(P)
                pAp = (P * AP).sum(1)
                bad = active & (pAp <= 0)
                if bool(bad.any()):
                    self.negative_curvature_ = True
                    warn_negative_curvature("cg", "a search direction with d^T (H + damping I) d <= 0")
                    raise InputError(
                        f"cg solver: H + damping*I is not positive definite with damping={self.damping_:.3g}; "
                        "raise damping (or use the exact solver for an indefinite system)"
                    )
                alpha = torch.where(active, rr / torch.where(active, pAp, torch.ones_like(pAp)), torch.zeros_like(rr))
                X += alpha[:, None] * P
                R -= alpha[:, None] * AP
                rr_new = (R * R).sum(1)
                beta = torch.where(active, rr_new / torch.where(active, rr, torch.ones_like(rr)), torch.zeros_like(rr))
                P = R + beta[:, None] * P
                rr = rr_new
                active = rr > target
                it += 1
                bar.update()
        self.iterations_ = it
        self.residuals_ = (rr.sqrt() / V.norm(dim=1).clamp_min(1e-300)).detach()
        return X


@register_solver("lissa")
class LissaSolver(CurvatureSolver):
    """LiSSA recursion of docs/methods.md#solvers (see :class:`LissaSettings`). ``scale_`` is the scale used."""

    name = "lissa"
    settings: LissaSettings

    def fit(self, loss: TrainingLoss) -> "LissaSolver":
        s = self.settings
        self.loss_, self.p_ = loss, loss.p
        self.damping_ = resolve_damping(s.damping, lambda: loss.trace_estimate() / loss.p)
        self.negative_curvature_ = False
        self.min_eigenvalue_ = None
        if s.scale == "auto":
            top = self._power_iteration(loss)
            if top <= 0:
                raise InputError(f"lissa solver: H + damping*I has no positive curvature (top eigenvalue {top:.3g})")
            self.scale_ = 1.1 * top
        else:
            self.scale_ = float(s.scale)
        return self

    def _power_iteration(self, loss: TrainingLoss, iters: int = 50) -> float:
        gen = torch.Generator(device="cpu").manual_seed(self.settings.seed)
        v = torch.randn(1, loss.p, generator=gen).to(loss.device, loss.dtype)
        v /= v.norm()
        top = 0.0
        for _ in range(iters):
            w = loss.hvp(v) + self.damping_ * v
            top = float((v * w).sum())
            v = w / w.norm().clamp_min(1e-300)
        return top

    def solve(self, V: torch.Tensor) -> torch.Tensor:
        V = self._check_vectors(V)
        s = self.settings
        d = self.damping_ / self.scale_
        gen = torch.Generator(device="cpu").manual_seed(s.seed)
        total = torch.zeros_like(V)
        for _ in range(s.repeats):
            h = V.clone()
            for step in range(s.depth):
                rows = None
                if s.batch_size is not None:
                    rows = torch.randint(0, self.loss_.n, (s.batch_size,), generator=gen).to(V.device)
                Hh = self.loss_.hvp(h, rows=rows)
                new = V + (1 - d) * h - Hh / self.scale_
                if not bool(torch.isfinite(new.sum())):  # NaN/inf reach the sum: one pass over the batch
                    self.negative_curvature_ = True
                    raise InputError(
                        f"lissa solver diverged at step {step} (scale={self.scale_:.3g}, damping={self.damping_:.3g}): "
                        "raise scale or damping (negative curvature makes the series diverge)"
                    )
                converged = s.batch_size is None and bool(((new - h).norm(dim=1) <= s.tol * new.norm(dim=1)).all())
                h = new
                if converged:
                    break
            self.steps_ = step + 1
            total += h / self.scale_
        return total / s.repeats


def make_solver(settings: SolverSettings) -> CurvatureSolver:
    """Build the registered solver for ``settings.kind`` (unfitted)."""
    if settings.kind not in SOLVERS:
        raise InputError(f"solver: {settings.kind!r} is not registered (available: {', '.join(sorted(SOLVERS))})")
    return SOLVERS[settings.kind](settings)
