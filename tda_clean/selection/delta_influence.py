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
fewer than half are not (:mod:`tda_clean.selection.shared_pattern`).

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
from pathlib import Path
from typing import Any

import numpy as np

from tda_clean.config import DeltaInfluenceDetector
from tda_clean.errors import InputError
from tda_clean.selection.base import (
    BaseSelector, FitContext, cap_flagged, influence_engine, register_selector, trained_model,
)
from tda_clean.selection.delta_scores import delta_votes, penultimate, predict, spectral_outlier_scores, spread_top
from tda_clean.selection.score_cuts import separated_high_group, split_high_cluster
from tda_clean.selection.trigger_search import (
    dilate, erase_probs, erasure_evidence, neighbour_other_share, stamp_patch, trigger_scan,
)


#: a reconstructed mask whose L1 norm exceeds this share of the image's pixels is not taken as a trigger (an
#: input-wide change flips any class; backdoor triggers are small)
MAX_TRIGGER_SHARE = 0.25


# -------------------------------------------------------------------------------------------- detector
class DeltaInfluenceSelector(BaseSelector):
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

    # --------------------------------------------------------------------------------------- queries
    def _given_queries(self, model, X: np.ndarray) -> tuple[np.ndarray, int, dict[str, Any]]:
        if self.spec.queries == "rows":
            if not self.spec.query_rows:
                raise InputError("detector.queries=rows: give the training row positions in detector.query_rows")
            rows = np.asarray(self.spec.query_rows, dtype=np.int64)
            bad = rows[(rows < 0) | (rows >= len(X))]
            if len(bad):
                raise InputError(f"detector.query_rows: position {int(bad[0])} is outside 0..{len(X) - 1}")
            Xq, where = X[rows], "detector.query_rows"
        else:
            if not self.spec.query_file:
                raise InputError("detector.queries=file: give a .npy file of inputs in detector.query_file")
            path = Path(self.spec.query_file)
            if not path.is_file():
                raise InputError(f"detector.query_file: file not found: {path}")
            Xq, where = np.load(path, allow_pickle=False).astype(X.dtype), "detector.query_file"
            if Xq.shape[1:] != X.shape[1:]:
                raise InputError(f"{where}: inputs of shape {Xq.shape[1:]} do not match the training features "
                                 f"{X.shape[1:]}")
        if len(Xq) == 0:
            raise InputError(f"{where}: no queries given")
        pred = predict(model, Xq).argmax(1)
        classes, counts = np.unique(pred, return_counts=True)
        if len(classes) > 1:
            shown = ", ".join(f"class {int(c)}: {int(k)}" for c, k in zip(classes, counts))
            raise InputError(f"{where}: the queries are not predicted as one single class ({shown}); Δ-influence "
                             "needs queries the model sends to the suspected target class -- drop the others")
        target = int(classes[0])
        if self.spec.target is not None and target != self.spec.target:
            raise InputError(f"{where}: the queries are predicted as class {target}, not detector.target={self.spec.target}")
        return Xq, target, {"query_source": self.spec.queries}

    def _auto_queries(self, model, X: np.ndarray, y: np.ndarray, context: FitContext) -> tuple[np.ndarray, int, dict]:
        self._erase = None
        probe = context.X_val if context.X_val is not None and len(context.X_val) else X
        if X.ndim >= 3 and self.spec.trigger_search != "none":
            found = self._find_trigger(model, probe, context)
            unconfirmed = None
            while found is not None and (self.spec.target is None or found["target"] == self.spec.target):
                t = found["target"]
                cand = np.flatnonzero((found["probs"].argmax(1) == t) & (found["base"] != t))
                pick = spread_top(cand, found["probs"][:, t], found["base"], self.spec.n_queries)
                if len(pick):
                    self._erase = (found["region"], np.median(probe, axis=0))
                    if found["info"]["query_source"] == "trigger_reconstruction" and self.spec.erase_trigger:
                        # confirmation: the training rows of the target class must depend on the trigger region
                        # far more often than clean validation rows do, else it is a small natural feature
                        erased_t = self._erased(model, X, y == t, t)
                        evidence = self._erasure_evidence(model, context, t, erased_t)
                        if evidence and evidence["erase_p_value"] >= self.spec.erase_confirm_p:
                            evidence.update(self._neighbour_evidence(X, y, erased_t, found["region"], t, evidence))
                        found["info"].update(evidence)
                        if evidence and not evidence.get("erase_confirmed", evidence["erase_p_value"] < self.spec.erase_confirm_p):
                            self.unconfirmed_erase_ = self._erase   # (region, fill), for diagnostics
                            self._erase = None      # the reconstruction is not a backdoor of this training set
                            unconfirmed = {**found["info"], "query_source": "no_trigger_found"}
                            found = found.get("fallback")
                            continue
                        rows = self._erased_rows(model, X, y, t)
                        if len(rows) >= min(4, self.spec.n_queries):
                            return X[rows], t, {**found["info"], "query_source": "trigger_reconstruction_rows"}
                    return found["X"][pick], t, found["info"]
                break
            if self.spec.no_trigger == "none" and self.spec.target is None:
                return None, None, unconfirmed or {"query_source": "no_trigger_found"}
        return self._class_outlier_queries(model, X, y)

    def _class_outlier_queries(self, model, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, int, dict]:
        """Outlying training rows of the suspected target class (``target``, or the class whose training rows hold
        the strongest spectral outlier cluster), predicted as that class."""
        pred = predict(model, X)
        F = penultimate(model, X)
        outlier = np.zeros(len(X))
        strength = {}
        for c in np.unique(y):
            rows = np.flatnonzero(y == c)
            s = spectral_outlier_scores(F[rows])
            outlier[rows] = s / max(np.median(s), 1e-12)
            k = max(1, int(math.ceil(0.01 * len(y))))
            strength[int(c)] = float(np.sort(outlier[rows])[-k:].mean())
        t = int(self.spec.target) if self.spec.target is not None else max(strength, key=strength.get)
        cand = np.flatnonzero((y == t) & (pred.argmax(1) == t))
        if len(cand) == 0:
            raise InputError(f"delta_influence: no training row labelled {t} is predicted as {t}; give queries")
        pick = cand[np.argsort(-outlier[cand], kind="stable")[: self.spec.n_queries]]
        return X[pick], t, {"query_source": "class_outliers"}

    def _find_trigger(self, model, probe: np.ndarray, context: FitContext) -> dict[str, Any] | None:
        """``trigger_search``: ``corners`` (square corner patches of value 0 / 1, taken at ``scan_min_flip``),
        ``optimise`` (a reconstructed mask + pattern of any place, shape and pattern,
        :mod:`tda_clean.selection.trigger_search`) or ``auto`` (a corner patch that flips at least
        ``scan_accept_flip``, else the reconstruction unless a corner patch at ``scan_min_flip`` flips with no more
        pixels than its mask, else that corner patch)."""
        corner = None
        if self.spec.trigger_search in ("corners", "auto"):
            corner = trigger_scan(model, probe, self.spec.scan_min_flip)
            if corner is not None:
                corner["info"] = {"query_source": "trigger_scan", "trigger_flip_rate": corner["flip_rate"],
                                  "trigger": {k: corner[k] for k in ("corner", "size", "value")}}
                corner["region"] = stamp_patch(np.zeros((1,) + probe.shape[-2:]), corner["corner"], corner["size"], 1.0)[0] > 0
            if self.spec.trigger_search == "corners" or (corner is not None and corner["flip_rate"] >= self.spec.scan_accept_flip):
                return corner
        from tda_clean.selection.trigger_search import reconstruct_trigger

        seed = int(np.random.default_rng([self.spec.seed, context.seed, 0x7216]).integers(2**31))
        found = reconstruct_trigger(model, probe, seed=seed, steps=self.spec.search_steps,
                                    restarts=self.spec.search_restarts)
        if (found is None or found["flip_rate"] < self.spec.scan_min_flip
                or found["mask"].sum() > MAX_TRIGGER_SHARE * found["mask"].size):
            return corner  # nothing flips, or the "trigger" covers much of the image: not a backdoor patch
        if corner is not None and corner["region"].sum() <= found["mask"].sum():
            return corner  # a corner patch that flips with no more pixels than the reconstruction: the smaller trigger
        grow = self.spec.erase_dilate if self.spec.erase_dilate is not None else int(min(probe.shape[-2:]) >= 16)
        info = {"query_source": "trigger_reconstruction", "trigger_anomaly_index": found["anomaly"],
                "trigger_agreement": found["agreement"]}
        # taken in turn when the erasure does not confirm a candidate: the corner patch, then the target's other
        # restarts (a restart's smallest mask can be a natural feature of the class while another's is the trigger)
        restarts = [found] + [c for c in (self._restart_candidate(model, probe, found, alt) for alt in found["alternates"])
                              if c["flip_rate"] >= self.spec.scan_min_flip and c["mask"].sum() <= MAX_TRIGGER_SHARE * c["mask"].size]
        for rank, cand in enumerate(restarts):
            cand["region"] = dilate(cand["mask"] >= 0.5 * cand["mask"].max(), grow)
            cand["info"] = {**info, "trigger_flip_rate": cand["flip_rate"], "trigger_mask_l1": float(cand["mask"].sum()),
                            "trigger_restart_rank": rank}
        chain = [restarts[0]] + ([corner] if corner is not None else []) + restarts[1:]
        for cand, after in zip(chain, chain[1:] + [None]):
            cand["fallback"] = after
        return found

    @staticmethod
    def _restart_candidate(model, probe: np.ndarray, found: dict[str, Any], alt: dict[str, Any]) -> dict[str, Any]:
        """Another restart's mask and pattern for ``found``'s target, with its stamped probe inputs and their
        probabilities (the keys the query choice reads)."""
        from tda_clean.models.trainer import predict_proba

        X = np.asarray(probe, dtype=np.float32)
        stamped = ((1 - alt["mask"]) * X + alt["mask"] * alt["pattern"]).astype(X.dtype)
        probs = predict_proba(model, stamped)
        others = found["base"] != found["target"]
        flip = float(np.mean(probs.argmax(1)[others] == found["target"])) if others.any() else 0.0
        return {"target": found["target"], "mask": alt["mask"], "pattern": alt["pattern"], "X": stamped,
                "probs": probs, "base": found["base"], "flip_rate": flip}

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
        carries, lacks, n_pattern = self._pattern_flags(X, pool, flagged, context)
        support = cap_flagged((flagged & ~lacks) | carries, cont, self.spec.budget.cap(len(y)))
        self.erased_ = erased
        self.erase_drop_ = drop
        self.pixel_added_, self.pixel_vetoed_ = added, vetoed
        self.pattern_added_, self.pattern_vetoed_ = carries & ~flagged, lacks & flagged
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
                      "pattern_pixels": n_pattern,
                      "n_flagged_by_pattern_only": int((support & carries & ~flagged).sum()),
                      "n_vetoed_by_pattern": int((lacks & flagged & ~carries).sum()),
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

    def _pattern_flags(self, X: np.ndarray, pool: np.ndarray, flagged: np.ndarray,
                       context: FitContext) -> tuple[np.ndarray, np.ndarray, int]:
        """``(carries, lacks, n_pixels)``: bool (n,) pool rows that match at least ``shared_pattern.add`` of the
        flagged rows' shared pixels, bool (n,) flagged rows matching fewer than ``shared_pattern.veto`` of them, and
        the number of shared pixels (:mod:`~tda_clean.selection.shared_pattern`, clean reference: the validation
        images). Nothing without a found trigger, images, a validation split or ``min_pixels`` shared pixels."""
        none = np.zeros(len(X), dtype=bool)
        rule = self.spec.shared_pattern
        if rule is None or self._erase is None or X.ndim < 3 or context.X_val is None or flagged.sum() < 2:
            return none, none.copy(), 0
        from tda_clean.selection.shared_pattern import shared_pattern

        pattern = shared_pattern(X[flagged], np.asarray(context.X_val), rule)
        if pattern.size < rule.min_pixels:
            return none, none.copy(), pattern.size
        match = np.zeros(len(X))
        match[pool | flagged] = pattern.match(X[pool | flagged])
        carries = pool & (match >= rule.add - 1e-9)
        lacks = flagged & (match < rule.veto - 1e-9) if rule.veto is not None else none.copy()
        return carries, lacks, pattern.size

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
                      "pattern_pixels": 0, "n_flagged_by_pattern_only": 0, "n_vetoed_by_pattern": 0}
        return self

    def _erased_rows(self, model, X: np.ndarray, y: np.ndarray, target: int) -> np.ndarray:
        """Training rows labelled ``target`` that :meth:`_erased` flags, lowest target probability after the
        erasure first, the stronger half of them (at least 4, at most ``n_queries``): inputs that carry the real
        trigger (a reconstructed trigger only approximates it), used as queries."""
        pool = y == target
        rows = np.flatnonzero(self._erased(model, X, pool, target))
        if not len(rows):
            return rows
        _, after = self._erase_probs(model, X, rows, target)
        half = max(4, (len(rows) + 1) // 2)             # the stronger half: clean rows flip less completely
        return rows[np.argsort(after, kind="stable")[: min(half, self.spec.n_queries)]]

    def _erasure_evidence(self, model, context: FitContext, target: int, erased: np.ndarray) -> dict[str, Any]:
        """:func:`~tda_clean.selection.trigger_search.erasure_evidence` of the found trigger (``{}`` without one
        or without a validation split)."""
        if self._erase is None or context.X_val is None or context.y_val is None:
            return {}
        return erasure_evidence(model, np.asarray(context.X_val), np.asarray(context.y_val), *self._erase, target,
                                self._n_pool_target, int(erased.sum()), self.spec.erase_min_precision)

    def _neighbour_evidence(self, X: np.ndarray, y: np.ndarray, erased: np.ndarray, region: np.ndarray, target: int,
                            evidence: dict[str, Any]) -> dict[str, Any]:
        """Second chance for a reconstruction the erasure test left unconfirmed at ``erase_confirm_p`` (small
        validation splits give a loose clean rate): confirmed when its p-value is below ``erase_confirm_p_neighbours``
        AND at least ``neighbour_share`` of the erased training rows have nearest neighbours (outside the trigger
        region) of other classes -- they are images of other classes labelled the target, as dirty-label poisons
        are (:func:`~tda_clean.selection.trigger_search.neighbour_other_share`)."""
        if evidence["erase_p_value"] >= self.spec.erase_confirm_p_neighbours or not erased.any():
            return {"erase_confirmed": False}
        share = neighbour_other_share(X, y, np.flatnonzero(erased), region, target)
        return {"erase_neighbour_share": share, "erase_confirmed": share >= self.spec.neighbour_share}

    def _erase_probs(self, model, X: np.ndarray, rows: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray]:
        return erase_probs(model, X[rows], *self._erase, target)

    def _erased(self, model, X: np.ndarray, pool: np.ndarray, target: int) -> np.ndarray:
        """Bool (n,): pool rows predicted as ``target`` that are not (p < 0.1) once the found trigger's region
        is set to the probe inputs' per-pixel median; all False without a found trigger or ``erase_trigger``.
        Also sets ``self._drop`` (n,): the target probability lost by the erasure (0 outside the pool), and
        ``self._n_pool_target``: the number of pool rows predicted as the target."""
        out = np.zeros(len(X), dtype=bool)
        self._drop = np.zeros(len(X))
        if not self.spec.erase_trigger or self._erase is None or not pool.any():
            return out
        rows = np.flatnonzero(pool)
        before, after = self._erase_probs(model, X, rows, target)
        out[rows] = (before.argmax(1) == target) & (after < 0.1)
        self._drop[rows] = before[:, target] - after
        self._n_pool_target = int((before.argmax(1) == target).sum())
        return out

    def reason(self, i: int) -> str:
        erased = "; predicted as another class once the trigger is erased" if self.erased_[i] else ""
        if self.pattern_added_[i]:
            erased += "; carries the pixels the other flagged rows share (the trigger)"
        return (f"support of {int(self.votes_[i])}/{len(self.queries_)} class-{self.target_} queries collapsed "
                f"under trigger-breaking transforms (Δ-influence score {self.delta_scores_[i]:.3g}){erased}")


register_selector("delta_influence", DeltaInfluenceSelector)
