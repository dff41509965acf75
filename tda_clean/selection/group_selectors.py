"""Harmful-subset selection under a budget for subgroup debiasing (issue 4), registered as ``group_first_order``,
``group_second_order``, ``d3m`` and ``random``.

Every selector flags EXACTLY ``budget`` rows: ``max_flagged`` rows and/or ``ceil(fraction * n)`` (the smaller;
5% when neither is set). A budget larger than the training set (or equal to it) raises :class:`InputError`.
Exception: the three influence selectors first test whether the validation split's group gap is distinguishable
from zero (``min_gap_confidence``, :mod:`tda_clean.selection.gap_check`); when it is not they flag nothing
(``info["budget"]`` 0, ``info["reason"]`` and ``info["gap_check"]`` say why).

* ``group_first_order``  top-k rows by first-order group influence on the validation ``objective``: the exact
  maximiser of the first-order predicted decrease ``-(1/((1-p)n)) sum_U s_i`` (docs/methods.md#second-order-group-influence);
* ``group_second_order`` the set minimising the SECOND-order predicted change (quadratic in the membership
  vector, :class:`~tda_clean.influence.group.QuadraticGroupModel`): greedy with second-order re-scoring, the
  relaxed quadratic with projected gradient descent, or the better of both (``method="best"``);
* ``d3m``               D3M-style alignment (docs/methods.md#d3m) from the engine's influence on each validation
  group's mean loss;
* ``random``            seeded uniform draw (the floor).

Max-type objectives (``worst_group_loss``, ``equalized_odds_gap``, ``demographic_parity_gap``) with ``components``
``"auto"``/``"on"`` (``"off"`` keeps the scalar path above): both influence selectors predict EVERY component at
``theta* + dtheta`` and minimise their smooth max (``sharpness``; docs/methods.md#second-order-group-influence,
:mod:`tda_clean.influence.group_minimax`), ``group_second_order`` in ``rounds`` slices of the budget with a
warm-started refit on the kept rows between slices (``context.train_config``). ``info`` then holds
``objective_before``, ``objective_measured_at_refits``, ``predicted_objective``, ``predicted_change`` (hard
aggregate of the smoothed components) and per-round candidates; there are no ``contributions_`` (a max is not
additive over rows): flagged rows score above every other row, ordered by ``row_effects_`` (the linearised per-row
effect, negative = lowers the objective). Defaults: ``components="auto"``, ``temperature=0.3``, ``sharpness=50``,
``rounds=3`` (second order; first order is one shot). Cost per projected-gradient step: two per-row
Hessian-vector passes over the training rows and four solves; ``rounds - 1`` refits.

Scores: HIGHER = more harmful. On the scalar path ``contributions_[i]`` (``Selection.contributions``) is row i's
share of the predicted change of the objective when the selected set is removed (``info["predicted_change"]`` is
the change itself, negative = decrease; the flagged rows' contributions sum to it) and ``scores_ = -contributions_``;
the report passes ``selection.contributions`` to :func:`explain_selection`. ``suggested_labels_`` (for
``action: relabel``) is, per row, the label whose first-order flip most decreases the objective (the given label
when no flip helps).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tda_clean.config import (
    Budget, D3MDetector, GroupFirstOrderDetector, GroupSecondOrderDetector, RandomDetector,
)
from tda_clean.errors import InputError
from tda_clean.influence.objectives import Objective
from tda_clean.selection import gap_check
from tda_clean.selection.base import BaseSelector, FitContext, influence_engine, register_selector, top_k_mask
from tda_clean.selection.influence_detectors import _group_keys, _InfluenceSelector


def exact_budget(n: int, budget: Budget) -> int:
    """Rows to flag exactly: ``budget.rows(n)`` (5% of n when no limit is set), within ``[1, n - 1]``."""
    if budget.max_flagged is not None and budget.max_flagged >= n:
        raise InputError(f"detector.max_flagged={budget.max_flagged}: the budget must be smaller than the "
                         f"candidate pool ({n} training rows)")
    k = budget.rows(n)
    if k < 1 or k >= n:
        raise InputError(f"detector budget: {k} rows out of {n}; it must lie in [1, {n - 1}]")
    return k


class _GroupSelector(_InfluenceSelector):
    name = "group"

    def check_inputs(self, X, y, context: FitContext) -> None:
        """Refuse a bad budget before the gap check (:func:`gap_check.gated`)."""
        exact_budget(len(y), self.spec.budget)

    def _setup(self, X, y, context: FitContext):
        from tda_clean.influence.group import GroupInfluence

        k = exact_budget(len(y), self.spec.budget)
        engine, objective = self._engine_objective(X, y, context)
        return k, engine, GroupInfluence(engine), objective

    def _suggest_labels(self, engine, objective, y, context) -> np.ndarray:
        n_classes = context.n_classes or int(engine.model.head.out_features)
        flip = engine.flip_influence(objective, n_classes)  # (n, C), 0 at the given label
        best = flip.argmin(1)
        return np.where(flip[np.arange(len(y)), best] < 0, best, np.asarray(y)).astype(np.int64)

    def _store(self, chosen: np.ndarray, contributions: np.ndarray, info: dict[str, Any]) -> None:
        n = len(contributions)
        self.contributions_ = np.asarray(contributions, dtype=float)
        self.scores_ = -self.contributions_
        self.support_ = np.zeros(n, dtype=bool)
        self.support_[chosen] = True
        self.threshold_ = float("nan")
        self.info_ = {"budget": int(len(chosen)), "objective": self.spec.objective, **info}

    def reason(self, i: int) -> str:
        change = (f"{self.name}: removing the selected set is predicted to change {self.spec.objective} by "
                  f"{self.info_['predicted_change']:.4g}")
        if getattr(self, "contributions_", None) is None:
            return f"{change} (every component predicted); this row's linearised effect {self.row_effects_[i]:.4g}"
        return f"{change}; this row's share {self.contributions_[i]:.4g}"

    # ------------------------------------------------------------------ max-type objectives: components
    def _use_components(self) -> bool:
        from tda_clean.influence.group_minimax import COMPONENT_OBJECTIVES

        spec = self.spec
        if spec.components == "on" and spec.objective not in COMPONENT_OBJECTIVES:
            raise InputError(f"detector.components=on: objective {spec.objective!r} is not max-type (one of "
                             f"{', '.join(COMPONENT_OBJECTIVES)})")
        return spec.components != "off" and spec.objective in COMPONENT_OBJECTIVES

    def _fit_components(self, X: np.ndarray, y: np.ndarray, context: FitContext, *, order: int, rounds: int,
                        iters: int) -> None:
        """Max-type objective (module docstring): every component of the objective predicted with the
        ``order``-order parameter change and their smooth max minimised
        (:mod:`tda_clean.influence.group_minimax`): first-order top-k (``order=1``) or the relaxed minimax
        (``order=2``), in ``rounds`` slices of the budget with a warm-started refit on the kept rows between
        slices (``context.train_config``)."""
        import copy

        from tda_clean.influence.group import GroupInfluence
        from tda_clean.influence.group_minimax import (
            GroupComponents, ParameterChangeModel, components_at, first_order_select, minimax_select,
        )
        from tda_clean.models.trainer import fit as fit_model

        spec = self.spec
        k, engine, _, objective = self._setup(X, y, context)
        engine0 = engine
        keys = _group_keys(context.groups_val, spec.group_column, len(context.y_val))
        comps = GroupComponents(spec.objective, context.X_val, context.y_val, keys, temperature=spec.temperature,
                                sharpness=spec.sharpness)
        n = len(y)
        slices = [len(a) for a in np.array_split(np.arange(k), min(int(rounds), k))]
        removed = np.zeros(n, dtype=bool)
        effects = np.zeros(n)
        model = engine.model
        before, comp_before = components_at(comps, engine.space, engine.loss.theta)
        measured, per_round = [before], []
        result = None
        for r, m_r in enumerate(slices):
            kept = np.flatnonzero(~removed)
            if r > 0:  # refit on the kept rows from the current weights, then linearise there
                model = copy.deepcopy(model).train()
                fit_model(model, X[kept], y[kept], context.train_config, context.seed, progress=False)
                model.eval()
                engine = influence_engine(X[kept], y[kept], context, spec.influence, self.name, model=model)
                measured.append(components_at(comps, engine.space, engine.loss.theta)[0])
            pcm = ParameterChangeModel(GroupInfluence(engine), order=order)
            if order == 1:
                result = first_order_select(pcm, comps, engine.space, engine.loss.theta, m_r)
            else:
                result = minimax_select(pcm, comps, engine.space, engine.loss.theta, m_r, iters=iters)
            effects[kept] = result.scores  # rows still in the pool: scored at this round's linearisation
            removed[kept[result.positions]] = True
            per_round.append({"rows": int(m_r), "method": result.method,
                              "predicted_candidates": {a: float(b) for a, b in result.candidates.items()}})
        # flagged rows (any round) rank above every other row; within each part, by the linearised effect
        scores = effects.copy()
        scores[removed] += np.abs(effects).max() + 1.0
        self.suggested_labels_ = self._suggest_labels(engine0, objective, y, context)
        self.scores_ = scores
        self.support_ = removed
        self.threshold_ = float("nan")
        self.info_ = {**engine._info(), "budget": int(removed.sum()), "objective": spec.objective,
                      "method": f"components_order{order}", "rounds": per_round,
                      "temperature": float(spec.temperature),
                      "objective_before": float(before),
                      "objective_measured_at_refits": [float(v) for v in measured],
                      "predicted_objective": float(result.predicted),
                      "predicted_change": float(result.predicted - before),
                      "components_before": comp_before, "components_predicted": result.components}
        self.row_effects_ = -effects  # (n,) linearised predicted change of the smooth objective per row


class GroupFirstOrderSelector(_GroupSelector):
    """Top-``budget`` rows by first-order group influence (see module docstring)."""

    name = "group_first_order"
    spec_type = GroupFirstOrderDetector

    @gap_check.gated()
    def fit(self, X: np.ndarray, y: np.ndarray, context: FitContext) -> "GroupFirstOrderSelector":
        if self._use_components():
            self._fit_components(X, y, context, order=1, rounds=1, iters=0)
            return self
        k, engine, gi, objective = self._setup(X, y, context)
        a = gi.query(objective)
        if a.shape[0] != 1:
            raise InputError(f"{self.name}: objective {self.spec.objective!r} must be scalar")
        s = (gi.row_gradients() @ a[0]).double().cpu().numpy()
        from tda_clean.influence.group import coefficients

        c1 = float(coefficients(np.array([k]), len(y))[0][0])
        contributions = c1 * s
        chosen = np.flatnonzero(top_k_mask(-contributions, k))
        second = gi.objective_change([chosen], objective).second[0, 0]
        self.suggested_labels_ = self._suggest_labels(engine, objective, y, context)
        self._store(chosen, contributions, {**engine._info(), "predicted_change": float(contributions[chosen].sum()),
                                            "predicted_change_second_order": float(second)})
        return self


class GroupSecondOrderSelector(_GroupSelector):
    """The budget's set with the lowest SECOND-order predicted objective change (see module docstring)."""

    name = "group_second_order"
    spec_type = GroupSecondOrderDetector

    @gap_check.gated()
    def fit(self, X: np.ndarray, y: np.ndarray, context: FitContext) -> "GroupSecondOrderSelector":
        spec = self.spec
        if self._use_components():
            self._fit_components(X, y, context, order=2, rounds=spec.rounds, iters=spec.iters)
            return self
        k, engine, gi, objective = self._setup(X, y, context)
        qm = gi.row_terms(objective)
        first_top = np.flatnonzero(top_k_mask(-qm.s.cpu().numpy(), k))
        candidates: dict[str, np.ndarray] = {}
        if spec.method in ("greedy", "best"):
            candidates["greedy"] = qm.greedy(k, steps=spec.steps)
        if spec.method in ("relaxed", "best"):
            candidates["relaxed"] = qm.relaxed(k, iters=spec.iters, init=first_top)[0]
        if spec.method == "best":  # never worse (as predicted) than the first-order top-k
            candidates["first_order_topk"] = first_top
        values = {name: qm.value(_indicator(pos, len(y), qm), k) for name, pos in candidates.items()}
        used = min(values, key=values.get)
        chosen = candidates[used]
        w = _indicator(chosen, len(y), qm)
        contributions = qm.contributions(w, k)
        self.suggested_labels_ = self._suggest_labels(engine, objective, y, context)
        self._store(chosen, contributions, {
            **engine._info(), "method": used, "predicted_change": float(values[used]),
            "predicted_change_first_order": float(qm.value(w, k, order=1)),
            "first_order_topk_predicted_change": float(qm.value(_indicator(first_top, len(y), qm), k)),
            **{f"predicted_change_{name}": float(v) for name, v in values.items()},
        })
        return self


def _indicator(pos: np.ndarray, n: int, qm) -> torch.Tensor:
    w = torch.zeros(n, dtype=qm.G.dtype, device=qm.G.device)
    w[torch.as_tensor(pos, device=qm.G.device)] = 1.0
    return w


class GroupMeanLosses(Objective):
    """Mean cross-entropy of each validation group (G outputs, keys in ``keys``)."""

    name = "group_mean_losses"

    def __init__(self, X, y, groups):
        self.X, self.y = X, np.asarray(y)
        self.groups = np.asarray(groups, dtype=object)
        self.keys = sorted(set(self.groups.tolist()), key=str)
        if len(self.keys) < 2:
            raise InputError(f"d3m: needs at least two validation groups, found {self.keys}")

    def query_gradients(self, space, memory_mb: float = 256.0) -> torch.Tensor:
        from tda_clean.influence.gradients import per_sample_grads

        G = per_sample_grads(space, self.X, self.y, memory_mb=memory_mb)
        return torch.stack([G[torch.as_tensor(self.groups == k)].mean(0) for k in self.keys])

    def values(self, model) -> np.ndarray:
        from tda_clean.models.trainer import predict_proba

        prob = predict_proba(model, self.X)
        loss = -np.log(np.clip(prob[np.arange(len(self.y)), self.y], 1e-300, None))
        return np.array([loss[self.groups == k].mean() for k in self.keys])


class D3MSelector(_InfluenceSelector):
    """D3M-style alignment: ``A_i = (1/G) sum_g L_g * T_ig`` with ``T_ig`` the engine's influence of removing row i
    on group g's mean validation loss (positive = the row helps g) and ``L_g`` that loss at the trained model.
    Flags exactly the budget's rows with the lowest ``A_i``; ``scores_ = -A_i``."""

    name = "d3m"
    spec_type = D3MDetector

    def check_inputs(self, X, y, context: FitContext) -> None:
        """Refuse a bad budget or a missing validation split before the gap check (:func:`gap_check.gated`)."""
        exact_budget(len(y), self.spec.budget)
        if context.X_val is None or context.y_val is None or len(context.X_val) == 0:
            raise InputError("d3m: needs a validation split (X_val, y_val) with group labels (groups_val)")

    @gap_check.gated("group_mean_losses")
    def fit(self, X: np.ndarray, y: np.ndarray, context: FitContext) -> "D3MSelector":
        k = exact_budget(len(y), self.spec.budget)
        engine = influence_engine(X, y, context, self.spec.influence, self.name)
        keys = _group_keys(context.groups_val, self.spec.group_column, len(context.y_val))
        objective = GroupMeanLosses(context.X_val, context.y_val, keys)
        T = engine.influence(objective).scores  # (G, n)
        L = objective.values(engine.model)  # (G,)
        A = (L[:, None] * T).mean(0)
        self.scores_ = -A
        self.support_ = top_k_mask(-A, k)
        self.threshold_ = float("nan")
        self.info_ = {**engine._info(), "budget": k, "group_losses": dict(zip(map(str, objective.keys), map(float, L))),
                      "n_negative_alignment": int((A < 0).sum())}
        return self

    def reason(self, i: int) -> str:
        return f"d3m: group alignment {-self.scores_[i]:.4g} (lowest {int(self.support_.sum())})"


class RandomSelector(BaseSelector):
    """Exactly the budget's rows drawn uniformly at random with the run seed (``FitContext.seed``)."""

    name = "random"

    def __init__(self, spec: RandomDetector = RandomDetector()):
        self.spec = spec

    def fit(self, X: np.ndarray, y: np.ndarray, context: FitContext) -> "RandomSelector":
        k = exact_budget(len(y), self.spec.budget)
        self.scores_ = np.random.default_rng(context.seed).random(len(y))
        self.support_ = top_k_mask(self.scores_, k)
        self.threshold_ = float("nan")
        self.info_ = {"budget": k, "seed": int(context.seed)}
        return self

    def reason(self, i: int) -> str:
        return f"random draw (seed {self.info_['seed']}, budget {self.info_['budget']})"


# --------------------------------------------------------------------------------------------- explain
def explain_selection(selection, train_groups, predicted_contributions, labels=None) -> list[dict]:
    """Which groups the flagged rows come from and how much of the predicted objective change each accounts for.

    selection:               a :class:`~tda_clean.selection.Selection` over the n training rows.
    train_groups:            DataFrame (n, g) of the training rows' group columns (``bundle.train.groups``).
    predicted_contributions: (n,) per-row share of the predicted objective change (``selection.contributions``
                             of a group selector), or None.
    labels:                  optional (n,) labels: groups are then split by label too (``label=`` key).

    Returns one dict per group value combination among the flagged rows, largest |predicted change| first
    (by count when no contributions): ``group`` (``"sex=Female&race=White"``), ``values`` ({column: value}),
    ``n_selected``, ``share_of_selected``, ``n_in_group`` (training rows in that group), ``fraction_of_group``,
    ``predicted_change`` (sum of the rows' contributions, negative = decrease) and ``share_of_predicted_change``
    (of the total predicted change; None without contributions). Pure function; JSON-able output.
    """
    import pandas as pd

    mask = np.asarray(selection.mask, dtype=bool)
    n = len(mask)
    frame = pd.DataFrame(index=range(n)) if train_groups is None else train_groups.reset_index(drop=True).copy()
    if len(frame) != n:
        raise InputError(f"explain_selection: {n} rows in the selection but {len(frame)} group rows")
    if labels is not None:
        if len(labels) != n:
            raise InputError(f"explain_selection: {n} rows in the selection but {len(labels)} labels")
        frame["label"] = np.asarray(labels)
    contrib = None
    if predicted_contributions is not None:
        contrib = np.asarray(predicted_contributions, dtype=float)
        if contrib.shape != (n,):
            raise InputError(f"explain_selection: predicted_contributions has shape {contrib.shape}, expected ({n},)")
    cols = list(frame.columns)
    if cols:
        keys = frame.astype(str).apply(lambda r: "&".join(f"{c}={r[c]}" for c in cols), axis=1).to_numpy()
    else:
        keys = np.full(n, "all", dtype=object)
    total_sel = int(mask.sum())
    total_change = float(contrib[mask].sum()) if contrib is not None else None
    out = []
    for key in sorted(set(keys[mask].tolist())):
        in_group = keys == key
        sel = in_group & mask
        change = float(contrib[sel].sum()) if contrib is not None else None
        first = int(np.flatnonzero(in_group)[0])
        out.append({
            "group": key,
            "values": {c: (frame[c].iloc[first].item() if hasattr(frame[c].iloc[first], "item") else frame[c].iloc[first])
                       for c in cols},
            "n_selected": int(sel.sum()),
            "share_of_selected": float(sel.sum() / total_sel) if total_sel else 0.0,
            "n_in_group": int(in_group.sum()),
            "fraction_of_group": float(sel.sum() / in_group.sum()),
            "predicted_change": change,
            "share_of_predicted_change": (change / total_change if change is not None and total_change else None),
        })
    out.sort(key=lambda d: -(abs(d["predicted_change"]) if d["predicted_change"] is not None else d["n_selected"]))
    return out


# -------------------------------------------------------------------------------------------- registry
register_selector("group_first_order", GroupFirstOrderSelector)
register_selector("group_second_order", GroupSecondOrderSelector)
register_selector("d3m", D3MSelector)
register_selector("random", RandomSelector)
