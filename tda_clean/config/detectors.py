"""Detector configs (``detector.kind``): one pydantic model per selector in :mod:`tda_clean.selection`, joined in
the :data:`Detector` discriminated union. A selector takes its config whole as ``spec`` (the simple ones field by
field); influence settings and budgets are read through ``spec.influence`` and ``spec.budget``."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from tda_clean.config.base import _Frozen
from tda_clean.config.influence import AutoBudgetField, BudgetFields, InfluenceFields, ParamSubset, SolverKind


class CleanlabDetector(AutoBudgetField):
    """Confident learning (cleanlab) on out-of-sample predicted probabilities from ``folds``-fold
    cross-validation with the run's model family, or — with ``pred_probs_path`` — the user's own out-of-sample
    probabilities (a ``.npy`` array (n_train, n_classes), rows in training-split order, columns in class order).
    ``max_flagged`` caps the flagged rows (most suspicious first); ``max_flagged: auto`` (``auto_budget``) chooses
    the cap on the validation split (:class:`~tda_clean.config.influence.AutoBudget`)."""

    kind: Literal["cleanlab"] = "cleanlab"
    folds: int = Field(default=5, ge=2)
    filter_by: Literal["prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given"] = (
        "prune_by_noise_rate"
    )
    max_flagged: int | None = Field(default=None, ge=1)
    pred_probs_path: Path | None = None


class _InfluenceDetectorBase(InfluenceFields, BudgetFields):
    """Shared settings of the influence detectors (``tda_clean.selection.influence_detectors``): the influence
    fields (:class:`~tda_clean.config.influence.InfluenceFields`) and a budget of at most ``max_flagged`` rows
    and/or a ``fraction`` of the training rows (5% when neither is set)."""


InfluenceObjectiveName = Literal[
    "val_loss", "worst_group_loss", "group_loss_gap", "demographic_parity_gap", "equalized_odds_gap"
]


class SelfInfluenceDetector(_InfluenceDetectorBase):
    """Label issues by self-influence (highest first); suggested label = model argmax. ``score``:
    ``self_influence`` = the predicted RISE of the row's own loss when it is removed,
    ``g_i^T A^-1 (g_i + l2 theta*) / (n - 1)``; ``loo_loss`` = the row's loss plus that rise, the first-order
    leave-one-out loss ``-log p_{-i}(y_i | x_i)`` (an out-of-sample self-confidence without refitting)."""

    kind: Literal["self_influence"] = "self_influence"
    score: Literal["self_influence", "loo_loss"] = "self_influence"


class HarmfulDetector(_InfluenceDetectorBase):
    """Rows whose removal most DECREASES ``objective`` on the validation split (validation loss, worst-group
    loss, group loss gap, smooth demographic-parity / equalized-odds gap). ``group_column`` names the group
    column for group objectives (default: the intersection of all group columns)."""

    kind: Literal["harmful"] = "harmful"
    objective: InfluenceObjectiveName = "val_loss"
    group_column: str | None = None


class LabelNoiseDetector(_InfluenceDetectorBase):
    """Label noise of unknown kind: ``self_influence`` with ``score: loo_loss`` or ``harmful`` (``val_loss``), chosen
    by how much their top-k sets agree (``tda_clean.selection.label_noise``): the Jaccard overlap of the budget's
    top rows of both is at least ``min_agreement`` -> ``loo_loss`` (the flips are improbable rows, as under uniform
    noise), else ``harmful`` (the clean validation rows point at other rows than self-confidence does: a flip the
    model has learned as a pattern). With ``max_flagged: auto`` the overlap is taken at the budget ``loo_loss``'s
    automatic budget chooses (0 rows: no overlap) and the chosen detector's own automatic budget gives k."""

    kind: Literal["label_noise"] = "label_noise"
    min_agreement: float = Field(default=0.42, ge=0, le=1)


class InfluenceRelabelDetector(_InfluenceDetectorBase):
    """Rows whose label flip most decreases ``objective`` on the validation split; suggests that label."""

    kind: Literal["influence_relabel"] = "influence_relabel"
    objective: InfluenceObjectiveName = "val_loss"
    group_column: str | None = None


class _GroupSelectorBase(_InfluenceDetectorBase):
    """Shared settings of the group selectors (``tda_clean.selection.group_selectors``, issue 4): choose EXACTLY
    ``max_flagged`` rows or ``fraction`` of the training rows (the smaller when both; 5% when neither) to remove
    together so that ``objective`` on the validation split decreases most. Group objectives use ``group_column``
    (default: the intersection of all group columns, e.g. sex x race). Influence runs in ``dtype`` (float64
    default: second-order terms are small differences). Max-type objectives (``worst_group_loss``,
    ``equalized_odds_gap``, ``demographic_parity_gap``) are handled by components (``components: auto``): every
    group (x label) rate or loss is predicted at the predicted parameters and a soft-max of them (``sharpness``;
    rates smoothed with ``temperature``) is minimised (``tda_clean.influence.group_minimax``).
    ``min_gap_confidence``: before selecting, a permutation test of the group labels on the validation split
    (``tda_clean.selection.gap_check``) must find the objective's group gap (equalized-odds / demographic-parity
    gap, or the spread of group losses) at permutation p <= 1 - this value; otherwise nothing is flagged and the
    selection's ``info.reason`` says so. ``null`` (or 0) turns the check off; it does not apply to ``val_loss``."""

    objective: InfluenceObjectiveName = "worst_group_loss"
    group_column: str | None = None
    dtype: Literal["float32", "float64"] = "float64"
    components: Literal["auto", "on", "off"] = "auto"
    temperature: float = Field(default=0.3, gt=0)
    sharpness: float = Field(default=50.0, gt=0)
    min_gap_confidence: float | None = Field(default=0.95, ge=0, lt=1)


class GroupFirstOrderDetector(_GroupSelectorBase):
    """First-order top-k: the rows whose first-order group influence most decreases the objective."""

    kind: Literal["group_first_order"] = "group_first_order"


class GroupSecondOrderDetector(_GroupSelectorBase):
    """Second-order group selection (Basu et al. 2020, docs/methods.md): ``greedy`` adds rows in ``steps`` rounds
    re-scored with the second-order group influence of the set so far; ``relaxed`` runs ``iters`` steps of
    projected gradient descent on the relaxed quadratic; ``best`` runs both and keeps the lowest predicted change
    (the first-order top-k set competes too, so ``best`` is never predicted worse than first order). With
    components, the budget is chosen in ``rounds`` slices with a warm-started refit on the kept rows in between."""

    kind: Literal["group_second_order"] = "group_second_order"
    method: Literal["greedy", "relaxed", "best"] = "best"
    steps: int = Field(default=50, ge=1)
    iters: int = Field(default=200, ge=1)
    rounds: int = Field(default=3, ge=1)


class D3MDetector(_InfluenceDetectorBase):
    """D3M-style group alignment (Jain et al. 2024, docs/methods.md#d3m) from the engine's influence scores: exactly
    the budget's rows with the lowest alignment ``A_i = (1/G) sum_g L_g * influence(i -> L_g)`` over the
    validation groups of ``group_column`` (default: the intersection of all group columns). ``min_gap_confidence``:
    as for the group selectors, on the spread of the validation groups' mean losses (``null``: off)."""

    kind: Literal["d3m"] = "d3m"
    group_column: str | None = None
    dtype: Literal["float32", "float64"] = "float64"
    min_gap_confidence: float | None = Field(default=0.95, ge=0, lt=1)


class RandomDetector(BudgetFields):
    """Uniformly random rows (seeded by the run seed): the floor every selector must beat at the same budget."""

    kind: Literal["random"] = "random"


class BlendRule(_Frozen):
    """The blended-trigger estimate of Δ-influence's data-side rule (``tda_clean.selection.blend_pattern``): the
    elements whose flagged-row distribution differs from clean images' (Kolmogorov-Smirnov statistic above ``ks``
    times its null scale) and is compressed (spread ratio at most ``max_ratio``), read as ``(1 - alpha) x +
    alpha p`` with ``alpha`` at most ``max_alpha`` (above it the stamp rule applies); rows scored with Gaussian
    kernels of width ``bandwidth``. ``veto``: unflag flagged rows scoring no higher than 90% of the target class's
    clean validation rows (and at most 0: better explained as a clean image than as a blended one)."""

    ks: float = Field(default=2.0, gt=0)
    max_ratio: float = Field(default=0.75, gt=0, lt=1)
    max_alpha: float = Field(default=0.8, gt=0, lt=1)
    bandwidth: float = Field(default=0.05, gt=0)
    veto: bool = True


class SharedPatternRule(_Frozen):
    """Δ-influence's data-side trigger estimate (``tda_clean.selection.shared_pattern``): the elements where at least
    ``agree`` of the flagged rows lie within ``tol`` of their median and at most ``clean`` of the clean validation
    images do. With at least ``min_pixels`` of them, a pool row matching at least ``add`` of the elements is
    flagged and a flagged row matching fewer than ``veto`` is unflagged (``veto: null``: never)."""

    tol: float = Field(default=0.05, gt=0)
    agree: float = Field(default=0.6, gt=0, le=1)
    clean: float = Field(default=0.25, ge=0, lt=1)
    min_pixels: int = Field(default=3, ge=1)
    add: float = Field(default=0.9, gt=0, le=1)
    veto: float | None = Field(default=0.5, gt=0, le=1)
    blend: BlendRule | None = BlendRule()


class DeltaInfluenceDetector(InfluenceFields, BudgetFields):
    """Δ-influence backdoor-poison detection (``tda_clean.selection.delta_influence``, docs/methods.md#delta-influence).

    ``queries``: ``auto`` (trigger search on validation inputs -- ``trigger_search``: ``corners`` patches,
    ``optimise`` a reconstructed mask + pattern of any place and shape with ``search_steps`` steps, ``auto``
    a corner patch flipping ``scan_accept_flip`` of the inputs, else the reconstruction, else a corner patch
    at ``scan_min_flip`` (also taken over a reconstruction with a larger mask); ``none`` -- else outlying rows of the suspected ``target`` class), ``rows`` (training positions ``query_rows``) or ``file`` (``.npy`` inputs ``query_file``).
    ``n_copies`` transformed copies per query (``transforms``: default all that apply to the data type; raw
    pixels in [0, 1]), relabelled to random non-target classes. Flag rule: per-copy robust z of the support
    change below ``-z_threshold`` in at least ``n_copies - tol`` copies for ``vote`` of the queries, and a
    continuous score more than ``min_gap_z`` robust deviations above the low cluster of a 2-means split
    (``split``: within the target class, or all rows). ``train_gradient: margin`` (default) uses the
    training rows' margin gradients (loss gradients vanish on well-fitted poisons). ``erase_trigger``: also
    flag pool rows the model stops predicting as the target once the found trigger's pixels are erased (a
    reconstructed region grown by ``erase_dilate`` pixels; ``None``: 1 on images of side >= 16, else 0), when
    their score lies more than ``erase_min_gap_z`` robust deviations above the low cluster -- or on their own when
    the rate at which clean validation rows lose the target under the same erasure predicts a precision of at
    least ``erase_min_precision``. A reconstruction (``search_restarts`` starts per class, median norm) is taken
    only when the target class's training rows lose the target under erasure more often than that rate explains
    (binomial tail below ``erase_confirm_p``), or below ``erase_confirm_p_neighbours`` when at least
    ``neighbour_share`` of the erased training rows have nearest neighbours (outside the trigger region) of other
    classes, as dirty-label poisons do; when the smallest of the target's restarts is not confirmed, its other
    restarts are tried in turn (after a flipping corner patch). ``separation``: when the log-scores of the rows above the clean
    cluster (more than ``erase_min_gap_z`` robust deviations) split into two groups with at least this share of
    their variance between the groups (Otsu), only the upper group is flagged (``None``: never). ``source_share``: with
    a found trigger, a pool row the rules above leave out is still flagged when its score lies more than
    ``source_min_gap_z`` robust deviations above the clean cluster, the model gives it a target probability below 0.5
    once the trigger region is erased, and at least this share of its ``source_neighbours`` nearest training rows
    (penultimate features of the erased images; pool rows above ``erase_min_gap_z`` left out) carry other labels --
    an image of another class labelled as the target (``None``: off). ``pixel_share``: also flagged when the score
    lies more than ``pixel_min_gap_z`` robust deviations above the clean cluster, the erased image's target
    probability is below 0.5 and at least this share of its ``source_neighbours`` nearest training rows on the PIXELS
    outside the trigger region carry other labels -- a share also above that of every clean validation row of the
    target class (calibrated per class; ``None``: off). ``pixel_veto_share``: a flagged pool row whose pixel-neighbour
    share is at most this is unflagged (``None``: off). ``shared_pattern``: with a found trigger, the flagged rows'
    shared pixels (or, for a blended trigger, the blend read off each pixel's distribution, :class:`BlendRule`) add
    the rows that carry them and unflag the rows that do not (:class:`SharedPatternRule`; ``None``: off).
    ``no_trigger``: ``none`` flags nothing when no trigger is found on images; ``class_outliers`` falls back to
    outlying rows of the suspected class.
    """

    kind: Literal["delta_influence"] = "delta_influence"
    queries: Literal["auto", "rows", "file"] = "auto"
    query_rows: tuple[int, ...] | None = None
    query_file: str | None = None
    target: int | None = Field(default=None, ge=0)
    n_queries: int = Field(default=16, ge=1)
    n_copies: int = Field(default=32, ge=1)
    transforms: tuple[str, ...] | None = None
    strength: float = Field(default=1.0, gt=0)
    tol: int = Field(default=12, ge=0)
    z_threshold: float = Field(default=2.0, gt=0)
    vote: float = Field(default=0.5, gt=0, le=1)
    split: Literal["target_class", "all"] = "target_class"
    min_gap_z: float = Field(default=3.0, ge=0)
    train_gradient: Literal["margin", "loss"] = "margin"
    scan_min_flip: float = Field(default=0.2, gt=0, le=1)
    scan_accept_flip: float = Field(default=0.8, gt=0, le=1)
    trigger_search: Literal["auto", "corners", "optimise", "none"] = "auto"
    search_steps: int = Field(default=200, ge=1)
    search_restarts: int = Field(default=3, ge=1)
    erase_dilate: int | None = Field(default=None, ge=0)
    no_trigger: Literal["none", "class_outliers"] = "none"
    erase_trigger: bool = True
    erase_min_gap_z: float = Field(default=1.5, ge=0)
    erase_min_precision: float = Field(default=0.8, ge=0, le=1)
    erase_confirm_p: float = Field(default=0.05, gt=0, le=1)
    erase_confirm_p_neighbours: float = Field(default=0.25, gt=0, le=1)
    neighbour_share: float = Field(default=0.5, gt=0, le=1)
    separation: float | None = Field(default=0.9, gt=0, le=1)
    source_share: float | None = Field(default=0.9, gt=0, le=1)
    source_min_gap_z: float = 0.5
    source_neighbours: int = Field(default=10, ge=1)
    pixel_share: float | None = Field(default=0.9, gt=0, le=1)
    pixel_min_gap_z: float = -1.0
    pixel_veto_share: float | None = Field(default=0.0, ge=0, lt=1)
    shared_pattern: SharedPatternRule | None = SharedPatternRule()
    solver: SolverKind = "ekfac"
    params: ParamSubset = "all"
    seed: int = 0

    @model_validator(mode="after")
    def _tol_below_copies(self) -> "DeltaInfluenceDetector":
        if self.tol >= self.n_copies:
            raise ValueError(f"tol={self.tol} must be below n_copies={self.n_copies}")
        return self


class InfluenceThresholdDetector(_InfluenceDetectorBase):
    """Baseline of docs/methods.md#delta-influence: support of each row for the target-class margin of the poisoned queries
    (found like ``delta_influence``'s ``auto`` queries; training loss gradients, as in the paper's baseline),
    flagged above a robust z ``z_threshold``."""

    kind: Literal["influence_threshold"] = "influence_threshold"
    n_queries: int = Field(default=16, ge=1)
    z_threshold: float = Field(default=3.0, gt=0)
    scan_min_flip: float = Field(default=0.2, gt=0, le=1)
    target: int | None = Field(default=None, ge=0)


class SpectralSignatureDetector(_Frozen):
    """Spectral signatures (Tran et al. 2018): per label, squared projection of centred penultimate features on
    the top singular vector; flags the top ``eps_factor`` x ``expected_rate`` of each class (1.5 x 5% default)."""

    kind: Literal["spectral_signature"] = "spectral_signature"
    expected_rate: float = Field(default=0.05, gt=0, lt=0.5)
    eps_factor: float = Field(default=1.5, gt=0)


class ActivationClusteringDetector(_Frozen):
    """Activation clustering (Chen et al. 2018): per label, 2-means on the top ``n_components`` principal
    components of penultimate features; the smaller cluster is flagged when it holds at most ``max_share``."""

    kind: Literal["activation_clustering"] = "activation_clustering"
    n_components: int = Field(default=10, ge=1)
    max_share: float = Field(default=0.35, gt=0, lt=0.5)
    seed: int = 0


Detector = Annotated[
    Union[CleanlabDetector, SelfInfluenceDetector, HarmfulDetector, InfluenceRelabelDetector, LabelNoiseDetector,
          GroupFirstOrderDetector, GroupSecondOrderDetector, D3MDetector, RandomDetector,
          DeltaInfluenceDetector, InfluenceThresholdDetector, SpectralSignatureDetector, ActivationClusteringDetector],
    Field(discriminator="kind"),
]
