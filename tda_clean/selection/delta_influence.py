"""Δ-influence poison detection (Li et al. 2024, docs/methods.md) with relative thresholds and several queries.

Idea: a poisoned query ``x_t`` (an input the model sends to the attacker's class ``t``) is supported by the
poisons through the trigger. Transform the query so the trigger breaks (flip, affine, blur, invert, jitter,
noise, elastic -- on RAW pixels; tabular: feature noise / masking), relabel each copy to a random non-target
class, and the poisons' support of the query collapses while clean rows' support barely moves.

Support (the opposite of the influence of a removal; sign convention of the engine: POSITIVE influence =
removing the row INCREASES the objective, so ``support = -influence`` for the loss-gradient variant):

    support(i -> x, c) = (1/n) grad margin_c(x)^T (H + damping I)^-1 grad m_i

with ``m_i`` = the smooth margin of row i's own label (``train_gradient="margin"``, default) or minus its
cross-entropy (``"loss"``). The margin variant matters: the loss gradient of a row the model fits with
p ~ 1 (every poison, once the backdoor is learned) is ~0, so loss-gradient influence hardly sees poisons.

For query q and copy k: ``Δ_qk = S_qk - S_q0`` (n,). Each row of Δ is normalised PER COPY (median-centred,
divided by 1.4826 x MAD), so thresholds are scale-free: ``z_qk,i < -z_threshold`` is a drop. A row is flagged
by query q when it drops in at least ``n_copies - tol`` copies, and flagged overall when at least
``ceil(vote * n_queries)`` queries flag it, AND its continuous score ``delta_scores_`` (the mean over queries
of the median over copies of ``-z``) lies more than ``min_gap_z`` robust deviations above the low cluster of a
2-means split within the target class, and lies in the upper group when the rows above the clean cluster split
into two separated groups (see :class:`DeltaInfluenceSelector`). Detection quality by
dataset, trigger and poison rate: BENCHMARKS.md "Poison detection and unlearning".

Queries (``queries``):
  * ``"rows"``: training row positions ``query_rows`` (e.g. inputs reported as attacked);
  * ``"file"``: a ``.npy`` file ``query_file`` of inputs (feature shape of the training data);
  * ``"auto"`` (default): (1) images -- a trigger search (``trigger_search``) on the validation inputs (training
    inputs when there is no validation split): ``corners`` stamps candidate corner patches (sizes 1-3, values
    0 / 1) and takes one that sends at least ``scan_min_flip`` of the inputs predicted as another class to ONE
    class ``t``; ``optimise`` reconstructs a mask + pattern of any place, shape and pattern per candidate class
    (Neural-Cleanse style, :mod:`tda_clean.selection.trigger_search`) and takes the class whose mask is an
    outlier in size; ``auto`` (default) takes a corner patch flipping at least ``scan_accept_flip``, else the
    reconstruction, else a corner patch at ``scan_min_flip``; ``none`` skips to
    (2). The most confidently-``t`` stamped inputs (spread over their original classes) are the queries; with a
    reconstructed trigger, the target-class training rows the erasure check below flags (inputs carrying the
    real trigger) when there are at least 4.
    (2) otherwise (tabular, or nothing found) -- the suspected target ``target`` (or the class whose training
    rows hold the strongest spectral outlier cluster) and its most outlying training rows predicted as that
    class.
Given queries must all be predicted as one class (the target), else :class:`InputError`.

Source evidence (``source_share``): with a found trigger, a pool row the rules leave out but whose score is above
the clean cluster is flagged when its erased image is no longer given the target and its nearest training rows in
feature space are of other classes (:mod:`tda_clean.selection.source_evidence`): an image of another class.
Pixel evidence (``pixel_share``, ``pixel_veto_share``): the same neighbour share on the pixels outside the trigger
region, calibrated on the clean validation rows of the target class, adds such rows (down to ``pixel_min_gap_z``) and
unflags pool rows whose pixel neighbours are all of the target class (:func:`~tda_clean.selection.source_evidence.pixel_rules`).
Shared pattern (``shared_pattern``): the pixels on which the flagged rows agree and clean validation images rarely
do are taken as the trigger itself; pool rows that carry (nearly) all of them are flagged, flagged rows that carry
fewer than half are not (:mod:`tda_clean.selection.shared_pattern`). A blend leaves no shared values but a compressed
distribution per pixel; then the rows whose pixels are likelier as a blend than as a clean image are
(:mod:`tda_clean.selection.blend_pattern`).

Trigger erasure (``erase_trigger``): with a found trigger, a pool row predicted as the target is also flagged
when the model stops predicting the target (p < 0.1) once the trigger's pixels are set to the validation
inputs' per-pixel median, and its score lies above ``erase_min_gap_z`` robust deviations of the low cluster, or
with no gap condition when clean validation rows of the target class rarely lose the target under the same
erasure (:meth:`DeltaInfluenceSelector._erasure_evidence`). A reconstructed trigger is confirmed the same way
(the target class's training rows must depend on its region far more often than clean validation rows); an
unconfirmed one, or none, on images gives "no trigger found" and no flagged row (``no_trigger="none"``).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from tda_clean.config import DeltaInfluenceDetector
from tda_clean.errors import InputError
from tda_clean.selection.base import (
    BaseSelector, FitContext, cap_flagged, influence_engine, register_selector, trained_model,
)
from tda_clean.selection.delta_queries import TriggerQueries
from tda_clean.selection.delta_scores import delta_votes, predict
from tda_clean.selection.score_cuts import separated_high_group, split_high_cluster
from tda_clean.selection.shared_pattern import PatternFlags, pattern_flags


# -------------------------------------------------------------------------------------------- detector
class DeltaInfluenceSelector(TriggerQueries, BaseSelector):
    """Δ-influence detector (see module docstring).

    Flag rule (all relative, no score-scale constants): a row is flagged when (1) it is in the pool (rows
    labelled the target class for ``split="target_class"``, the dirty-label backdoor setting; every row for
    ``"all"``), (2) its continuous score lies more than ``min_gap_z`` robust deviations (median / 1.4826 MAD)
    above the low cluster of the 2-means (Otsu) split of the pool's scores, and (3) at least
    ``ceil(vote * n_queries)`` queries saw its support drop (per-copy z below ``-z_threshold``) in at least
    ``n_copies - tol`` copies. The split only locates the clean rows: poisons' scores are skewed, and on
    Fashion-MNIST the Otsu cut itself fell inside the poison cluster (BENCHMARKS.md, Fashion 1% seed 2),
    so the cut is not a condition. (4) When the log-scores of the pool rows above the clean cluster (more than
    ``erase_min_gap_z`` robust deviations) fall into two well separated groups (share of variance between the
    groups of their Otsu split at least ``separation``, :func:`~tda_clean.selection.score_cuts.separated_high_group`),
    only rows of the upper group stay flagged: a good ranking with a tail of clean rows above the clean cluster.

    Learned state: ``scores_`` (vote share + tie-break), ``erased_`` (n,) (the trigger-erasure check),
    ``delta_scores_`` (continuous), ``votes_`` (n,), ``support_``, ``threshold_`` (NaN: rule-based),
    ``queries_`` (the query inputs), ``target_``, ``info_``."""

    name = "delta_influence"

    def __init__(self, spec: DeltaInfluenceDetector = DeltaInfluenceDetector()):
        self.spec = spec

    def _check_settings(self, n_classes: int) -> None:
        if self.spec.target is not None and not 0 <= self.spec.target < n_classes:
            raise InputError(f"detector.target: class {self.spec.target} not in 0..{n_classes - 1}")
        if n_classes < 2:
            raise InputError("delta_influence: needs at least two classes (copies are relabelled to non-target classes)")

    # ------------------------------------------------------------------------------------------- fit
    def fit(self, X: np.ndarray, y: np.ndarray, context: FitContext) -> "DeltaInfluenceSelector":
        from tda_clean.data.transforms import check_transforms, default_transforms, random_copies
        from tda_clean.influence import Margin

        X, y = np.asarray(X), np.asarray(y)
        self._erase = None
        n_classes = context.n_classes or int(y.max()) + 1
        self._check_settings(n_classes)
        names = check_transforms(self.spec.transforms, X) if self.spec.transforms is not None else default_transforms(X)
        model = trained_model(X, y, context, self.name)
        if self.spec.queries == "auto":
            Xq, target, info = self._auto_queries(model, X, y, context)
        else:
            Xq, target, info = self._given_queries(model, X)
        if Xq is None:
            return self._nothing_found(len(y), info)

        rng = np.random.default_rng([self.spec.seed, context.seed, 0xDE17A])
        others = np.array([c for c in range(n_classes) if c != target])
        scale = fill = None
        if X.ndim == 2:
            scale, fill = X.std(0) + 1e-12, X.mean(0)
        blocks, targets = [], []
        for x in Xq:
            kw = {} if X.ndim != 2 else {"scale": scale, "fill": fill}
            copies, _ = random_copies(x, self.spec.n_copies, names, rng, strength=self.spec.strength, **kw)
            blocks += [x[None], copies]
            targets += [[target], rng.choice(others, size=self.spec.n_copies)]
        Xall, Tall = np.concatenate(blocks), np.concatenate(targets)

        engine = influence_engine(X, y, context, self.spec.influence, self.name, model=model)
        train_loss, sign = (Margin.row_value, 1.0) if self.spec.train_gradient == "margin" else (None, -1.0)
        S = sign * engine.scores(Margin(Xall, Tall), train_loss)            # (m, n) supports
        S = S.reshape(len(Xq), self.spec.n_copies + 1, engine.n)

        self.supports_ = S  # (Q, N + 1, n) supports, for diagnostics and re-thresholding with delta_votes
        votes, cont = delta_votes(S, self.spec.z_threshold, self.spec.tol)
        needed = int(math.ceil(self.spec.vote * len(Xq) - 1e-9))
        pool = (y == target) if self.spec.split == "target_class" else np.ones(len(y), dtype=bool)
        cut, gap_z = split_high_cluster(cont, pool)
        support = pool & (gap_z > self.spec.min_gap_z) & (votes >= needed)
        erased = self._erased(model, X, pool, target)
        drop = self._drop
        evidence = self._erasure_evidence(model, context, target, erased) if self.spec.erase_trigger else {}
        support |= erased & ((gap_z > self.spec.erase_min_gap_z) | evidence.get("erasure_trusted", False))
        # rows above the clean cluster whose log-scores split into two well separated groups: only the upper one
        log_cut, eta = separated_high_group(cont, pool & (gap_z > self.spec.erase_min_gap_z))
        separated = self.spec.separation is not None and eta >= self.spec.separation
        if separated:
            support &= np.log(np.maximum(cont, 1e-300)) > log_cut
        sourced = self._source_flags(model, X, y, pool & ~support, target, gap_z)
        added, vetoed = self._pixel_flags(model, X, y, pool, support | sourced, target, gap_z, context)
        before_pixels = support | sourced
        flagged = (before_pixels & ~vetoed) | added
        pattern = self._pattern_flags(model, X, pool, flagged, target, context)
        carries, lacks = pattern.carries, pattern.lacks
        support = cap_flagged((flagged & ~lacks) | carries, cont, self.spec.budget.cap(len(y)))
        self.erased_ = erased
        self.erase_drop_ = drop
        self.pixel_added_, self.pixel_vetoed_ = added, vetoed
        self.pattern_added_, self.pattern_vetoed_ = carries & ~flagged, lacks   # rows the rule changed
        self.delta_scores_ = cont
        self.votes_ = votes.astype(np.int64)
        self.scores_ = votes / len(Xq) + 1e-3 * np.tanh(cont / 100.0)
        self.support_ = support
        self.threshold_ = float("nan")
        self.target_ = target
        self.queries_ = Xq
        self.info_ = {**info, **engine._info(), "target": target, "n_queries": int(len(Xq)),
                      "n_copies": self.spec.n_copies, "votes_needed": needed, "split_cut": cut, "transforms": list(names),
                      "train_gradient": self.spec.train_gradient, "n_erased": int(erased.sum()),
                      "n_flagged_by_erasure_only": int((support & ~sourced & ~((gap_z > self.spec.min_gap_z) & (votes >= needed))).sum()),
                      "cut_separation_eta": eta, "cut_separated": bool(separated),
                      "n_flagged_by_source_only": int((support & sourced & ~added).sum()),
                      "n_flagged_by_pixels_only": int((support & added).sum()),
                      "n_vetoed_by_pixels": int((vetoed & before_pixels).sum()),
                      **pattern.info(),
                      "n_flagged_by_pattern_only": int((support & self.pattern_added_).sum()),
                      "n_vetoed_by_pattern": int(self.pattern_vetoed_.sum()),
                      **evidence}
        return self

    def _source_flags(self, model, X: np.ndarray, y: np.ndarray, candidates: np.ndarray, target: int,
                      gap_z: np.ndarray) -> np.ndarray:
        """Bool (n,): ``candidates`` (pool rows not flagged otherwise) above ``source_min_gap_z`` whose erased image
        the model no longer gives the target (p < 0.5) and whose ``source_neighbours`` nearest training rows carry
        other labels in at least ``source_share`` (:func:`~tda_clean.selection.source_evidence.source_evidence`;
        pool rows above ``erase_min_gap_z`` are left out of the neighbours). All False without a found trigger."""
        out = np.zeros(len(y), dtype=bool)
        rows = np.flatnonzero(candidates & (gap_z > self.spec.source_min_gap_z))
        if self.spec.source_share is None or self._erase is None or not len(rows):
            return out
        from tda_clean.selection.source_evidence import source_evidence

        reference = ~((y == target) & (gap_z > self.spec.erase_min_gap_z))
        p_after, share = source_evidence(model, X, y, rows, *self._erase, target, reference, self.spec.source_neighbours)
        out[rows] = (p_after < 0.5) & (share >= self.spec.source_share - 1e-9)
        return out

    def _pattern_flags(self, model, X: np.ndarray, pool: np.ndarray, flagged: np.ndarray, target: int,
                       context: FitContext) -> PatternFlags:
        """The flagged rows' trigger read off the data (:func:`~tda_clean.selection.shared_pattern.pattern_flags`,
        clean reference: the validation images; ``model`` judges un-blended images). Nothing without a found
        trigger, images or a validation split."""
        rule = self.spec.shared_pattern
        if rule is None or self._erase is None or X.ndim < 3 or context.X_val is None or flagged.sum() < 2:
            return PatternFlags.nothing(len(X))
        return pattern_flags(X, pool, flagged, context.X_val, context.y_val, target, rule,
                             lambda images: predict(model, images)[:, target])

    def _pixel_flags(self, model, X: np.ndarray, y: np.ndarray, pool: np.ndarray, flagged: np.ndarray, target: int,
                     gap_z: np.ndarray, context: FitContext) -> tuple[np.ndarray, np.ndarray]:
        """``(added, vetoed)`` bool (n,): :func:`~tda_clean.selection.source_evidence.pixel_rules` with the found trigger
        region (pixel-space neighbours outside it; ``pixel_share``, ``pixel_min_gap_z``, ``pixel_veto_share``,
        calibrated on the validation rows of the target class). All False without a found trigger."""
        none = np.zeros(len(y), dtype=bool)
        if self._erase is None:
            return none, none.copy()
        from tda_clean.selection.source_evidence import pixel_rules

        X_val_t = None
        if context.X_val is not None and context.y_val is not None:
            X_val_t = np.asarray(context.X_val)[np.asarray(context.y_val) == target]
        return pixel_rules(model, X, y, pool, flagged, gap_z, self._erase, target, X_val_t, self.spec)

    def _nothing_found(self, n: int, info: dict[str, Any]) -> "DeltaInfluenceSelector":
        """No trigger found on images (``no_trigger: none``): no class is an outlier, so no row is flagged."""
        zeros = np.zeros(n)
        self.erased_, self.erase_drop_, self.delta_scores_, self.scores_ = zeros.astype(bool), zeros, zeros, zeros
        self.pixel_added_, self.pixel_vetoed_ = zeros.astype(bool), zeros.astype(bool)
        self.pattern_added_, self.pattern_vetoed_ = zeros.astype(bool), zeros.astype(bool)
        self.votes_ = np.zeros(n, dtype=np.int64)
        self.support_ = np.zeros(n, dtype=bool)
        self.supports_ = np.zeros((0, self.spec.n_copies + 1, n))
        self.threshold_ = float("nan")
        self.target_ = None
        self.queries_ = np.zeros((0,))
        self.info_ = {**info, "target": None, "n_queries": 0, "n_erased": 0, "n_flagged_by_erasure_only": 0,
                      "n_flagged_by_source_only": 0, "n_flagged_by_pixels_only": 0, "n_vetoed_by_pixels": 0,
                      **PatternFlags.nothing(0).info(), "n_flagged_by_pattern_only": 0, "n_vetoed_by_pattern": 0}
        return self


    def reason(self, i: int) -> str:
        erased = "; predicted as another class once the trigger is erased" if self.erased_[i] else ""
        if self.pattern_added_[i]:
            kind = "blended into" if self.info_.get("pattern_kind") == "blend" else "stamped on"
            erased += f"; carries the pattern {kind} the other flagged rows (the trigger)"
        return (f"support of {int(self.votes_[i])}/{len(self.queries_)} class-{self.target_} queries collapsed "
                f"under trigger-breaking transforms (Δ-influence score {self.delta_scores_[i]:.3g}){erased}")


register_selector("delta_influence", DeltaInfluenceSelector)
