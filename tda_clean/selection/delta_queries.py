"""Query choice and trigger evidence of Δ-influence (:mod:`tda_clean.selection.delta_influence`): the queries
(given rows or a file, a found trigger's stamped inputs or erased training rows, or outlying rows of the suspected
class), the trigger search with its confirmation by erasure, and the erasure check's per-row evidence. A mixin:
:class:`~tda_clean.selection.delta_influence.DeltaInfluenceSelector` owns the spec (``self.spec``) and the state
these methods set (``_erase``: the found trigger's (region (H, W) bool, fill); ``_drop``; ``_n_pool_target``)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from tda_clean.errors import InputError
from tda_clean.selection.base import FitContext
from tda_clean.selection.delta_scores import penultimate, predict, spectral_outlier_scores, spread_top
from tda_clean.selection.trigger_search import (
    dilate, erase_probs, erasure_evidence, neighbour_other_share, stamp_patch, stamped_candidate, trigger_scan,
)

#: a reconstructed mask whose L1 norm exceeds this share of the image's pixels is not taken as a trigger (an
#: input-wide change flips any class; backdoor triggers are small)
MAX_TRIGGER_SHARE = 0.25


class TriggerQueries:
    """Query and trigger-evidence methods of the Δ-influence selector (see the module docstring)."""

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
        def takeable(cand: dict[str, Any]) -> bool:  # it flips, and does not cover much of the image
            return (cand["flip_rate"] >= self.spec.scan_min_flip
                    and cand["mask"].sum() <= MAX_TRIGGER_SHARE * cand["mask"].size)

        if found is None or not takeable(found):
            return corner  # nothing flips, or the "trigger" covers much of the image: not a backdoor patch
        if corner is not None and corner["region"].sum() <= found["mask"].sum():
            return corner  # a corner patch that flips with no more pixels than the reconstruction: the smaller trigger
        grow = self.spec.erase_dilate if self.spec.erase_dilate is not None else int(min(probe.shape[-2:]) >= 16)
        info = {"query_source": "trigger_reconstruction", "trigger_anomaly_index": found["anomaly"],
                "trigger_agreement": found["agreement"]}
        # taken in turn when the erasure does not confirm a candidate: the corner patch, then the target's other
        # restarts (a restart's smallest mask can be a natural feature of the class while another's is the trigger)
        others = (stamped_candidate(model, probe, found["base"], found["target"], alt["mask"], alt["pattern"])
                  for alt in found["alternates"])
        restarts = [found] + [c for c in others if takeable(c)]
        for rank, cand in enumerate(restarts):
            cand["region"] = dilate(cand["mask"] >= 0.5 * cand["mask"].max(), grow)
            cand["info"] = {**info, "trigger_flip_rate": cand["flip_rate"], "trigger_mask_l1": float(cand["mask"].sum()),
                            "trigger_restart_rank": rank}
        chain = [restarts[0]] + ([corner] if corner is not None else []) + restarts[1:]
        for cand, after in zip(chain, chain[1:] + [None]):
            cand["fallback"] = after
        return found

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
