"""Influence engine: per-sample gradients, curvature solvers, cross-loss objectives, estimators, DualDA.

Sign convention everywhere: a POSITIVE influence of removing training row i on objective f means removing the
row INCREASES f. Main entry points::

    from tda_clean.influence import InfluenceEngine, InfluenceSpec, MeanLoss, TrainingObjective
    engine = InfluenceEngine(model, (X, y), InfluenceSpec(solver="exact"), TrainingObjective(l2=cfg.l2))
    engine.influence(MeanLoss(X_val, y_val)).scores   # (m, n): change of f when each training row is removed
    engine.scores(MeanLoss(X_val, y_val), reducer=RowSum())  # (n,), reduced block by block (reducers.py)

``X`` may be a ``np.memmap`` (or the rows a ``DataLoader`` / :class:`TrainRows`): every pass streams blocks.

The :class:`InfluenceSpec` holds the solver settings (:class:`ExactSettings`, :class:`CGSettings`,
:class:`LissaSettings`, :class:`KFACSettings`; a bare name means that solver's defaults) with their damping, and
the :class:`GradientSettings` (parameter subset, dtype, device).
"""
from tda_clean.config.influence import (
    CGSettings, DualDASettings, ExactSettings, GradientSettings, InfluenceSpec, KFACSettings, LissaSettings,
    ProjectionSettings,
)
from tda_clean.influence.curvature import (
    SOLVERS, CurvatureSolver, NegativeCurvatureWarning, TrainingLoss, register_solver,
)
from tda_clean.influence.dualda import DualDA, model_features
from tda_clean.influence.estimators import (
    InfluenceEngine, InfluenceResult, compute_influence, pairwise_influence, self_influence,
)
from tda_clean.influence.projected import projected_influence
from tda_clean.influence.gradients import check_finite_rows, per_sample_grads, per_sample_grads_loop
from tda_clean.influence.kfac import KFACSolver
from tda_clean.influence.objectives import (
    CallableObjective, DemographicParityGap, EqualizedOddsGap, GroupLossDifference, Margin, MeanLoss, Objective,
    PerSampleLoss, ScalarObjective, WorstGroupLoss,
)
from tda_clean.influence.params import ParamSpace, model_fingerprint
from tda_clean.influence.factored_projection import FactoredProjector
from tda_clean.influence.projection import RandomProjector
from tda_clean.influence.reducers import DenseScores, DiskScores, RowMean, RowSum, ScoreReducer, Several, TopK
from tda_clean.influence.rows import ArrayRows, BatchRows, TrainRows, as_rows
from tda_clean.influence.solvers import CGSolver, ExactSolver, LissaSolver, make_solver
from tda_clean.influence.store import GradientStore, store_fingerprint
from tda_clean.influence.tracin import CheckpointRecorder, gradient_similarity, tracin_cp
from tda_clean.objective import TrainingObjective

__all__ = [
    "SOLVERS", "CurvatureSolver", "NegativeCurvatureWarning", "TrainingLoss", "make_solver", "register_solver",
    "DualDA", "model_features", "InfluenceEngine", "InfluenceResult", "compute_influence", "pairwise_influence",
    "projected_influence", "self_influence", "check_finite_rows", "per_sample_grads", "per_sample_grads_loop",
    "KFACSolver", "CallableObjective", "DemographicParityGap", "EqualizedOddsGap", "GroupLossDifference", "Margin",
    "MeanLoss", "Objective", "PerSampleLoss", "ScalarObjective", "WorstGroupLoss", "ParamSpace", "model_fingerprint",
    "RandomProjector", "FactoredProjector", "ProjectionSettings", "CGSettings", "DualDASettings", "ExactSettings", "GradientSettings", "KFACSettings",
    "LissaSettings", "InfluenceSpec", "TrainingObjective", "CGSolver", "ExactSolver", "LissaSolver", "GradientStore",
    "store_fingerprint", "CheckpointRecorder", "gradient_similarity", "tracin_cp",
    "DenseScores", "DiskScores", "RowMean", "RowSum", "ScoreReducer", "Several", "TopK",
    "ArrayRows", "BatchRows", "TrainRows", "as_rows",
]
