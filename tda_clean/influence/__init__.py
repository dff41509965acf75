"""Influence engine: per-sample gradients, curvature solvers, cross-loss objectives, estimators, DualDA.

Sign convention everywhere: a POSITIVE influence of removing training row i on objective f means removing the
row INCREASES f. Main entry points::

    from tda_clean.influence import compute_influence, self_influence, MeanLoss
    res = compute_influence(model, (X, y), MeanLoss(X_val, y_val), l2=cfg.l2, solver="exact")
    res.scores          # (m, n): predicted change of f when each training row is removed

Solvers: ``"exact" | "cg" | "lissa" | "kfac" | "ekfac"`` by name or as settings objects
(:class:`ExactSettings`, :class:`CGSettings`, :class:`LissaSettings`, :class:`KFACSettings`).
"""
from tda_clean.influence.curvature import (
    SOLVERS, CurvatureSolver, NegativeCurvatureWarning, TrainingLoss, make_solver, register_solver,
)
from tda_clean.influence.dualda import DualDA, model_features
from tda_clean.influence.estimators import (
    InfluenceEngine, InfluenceResult, compute_influence, pairwise_influence, projected_influence, self_influence,
)
from tda_clean.influence.gradients import check_finite_rows, per_sample_grads, per_sample_grads_loop
from tda_clean.influence.kfac import KFACSolver
from tda_clean.influence.objectives import (
    CallableObjective, DemographicParityGap, EqualizedOddsGap, GroupLossDifference, Margin, MeanLoss, Objective,
    PerSampleLoss, ScalarObjective, WorstGroupLoss,
)
from tda_clean.influence.params import ParamSpace, model_fingerprint
from tda_clean.influence.projection import RandomProjector
from tda_clean.influence.settings import (
    CGSettings, DualDASettings, ExactSettings, GradientSettings, KFACSettings, LissaSettings, solver_settings,
)
from tda_clean.influence.solvers import CGSolver, ExactSolver, LissaSolver
from tda_clean.influence.store import GradientStore, store_fingerprint
from tda_clean.influence.tracin import CheckpointRecorder, gradient_similarity, tracin_cp

__all__ = [
    "SOLVERS", "CurvatureSolver", "NegativeCurvatureWarning", "TrainingLoss", "make_solver", "register_solver",
    "DualDA", "model_features", "InfluenceEngine", "InfluenceResult", "compute_influence", "pairwise_influence",
    "projected_influence", "self_influence", "check_finite_rows", "per_sample_grads", "per_sample_grads_loop",
    "KFACSolver", "CallableObjective", "DemographicParityGap", "EqualizedOddsGap", "GroupLossDifference", "Margin",
    "MeanLoss", "Objective", "PerSampleLoss", "ScalarObjective", "WorstGroupLoss", "ParamSpace", "model_fingerprint",
    "RandomProjector", "CGSettings", "DualDASettings", "ExactSettings", "GradientSettings", "KFACSettings",
    "LissaSettings", "solver_settings", "CGSolver", "ExactSolver", "LissaSolver", "GradientStore",
    "store_fingerprint", "CheckpointRecorder", "gradient_similarity", "tracin_cp",
]
