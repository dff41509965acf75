"""Is the validation split's group gap distinguishable from zero? A seeded permutation test run by the group
selectors (``group_first_order``, ``group_second_order``, ``d3m``) before they select anything
(``min_gap_confidence``; docs/methods.md#gap-check), wired into their ``fit`` by the :func:`gated` decorator.

Statistic (hard, at the trained model's argmax predictions on the validation split; cells = the selector's group
keys; ``positive`` = class 1):

* ``equalized_odds_gap``: max over true labels of the spread (max - min over cells) of the rate of predicting
  ``positive`` among the cell's rows of that label; null: group labels exchangeable WITHIN each true label
  (the cells' label counts are kept), i.e. predictions independent of the group given the label;
* ``demographic_parity_gap``: spread over cells of the rate of predicting ``positive``; null: group labels
  exchangeable over all rows;
* ``worst_group_loss``, ``group_loss_gap`` and ``d3m``'s group losses: spread over cells of the mean
  cross-entropy; null: group labels exchangeable over all rows.

The test statistic is the size-weighted dispersion of the cell means, ``sum_c n_c (mean_c - mean)^2 / var``
within each stratum (the chi-square statistic of independence for a rate; a one-way ANOVA numerator for losses),
summed over strata: unlike the spread it is not dominated by the smallest cell's sampling noise, and under the
null (every cell's rate / mean loss equal, which is what a zero gap means) it tests the same thing. p-value
``(1 + #{permuted statistic >= observed}) / (1 + permutations)``; the gap counts as real when
``p <= 1 - min_gap_confidence``. Under the null a selector then acts with probability at most
``1 - min_gap_confidence``. Permutations are drawn with ``numpy.random.default_rng([seed, SEED_TAG])``.
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

PERMUTATIONS = 1000  # permutations of the group labels per check
SEED_TAG = 7193  # mixed into the run seed: the check's draws differ from the selectors' other draws
LOSS_OBJECTIVES = ("worst_group_loss", "group_loss_gap", "group_mean_losses")
RATE_OBJECTIVES = ("equalized_odds_gap", "demographic_parity_gap")


@dataclass(frozen=True)
class GapCheck:
    """Outcome of one check: ``statistic`` (which gap), ``observed`` (its value on the validation split, >= 0),
    ``p_value`` (permutation p-value), ``confidence`` (``min_gap_confidence``), ``permutations``, ``cells``
    (number of group cells) and ``significant`` (``p_value <= 1 - confidence``)."""

    statistic: str
    observed: float
    p_value: float
    confidence: float
    permutations: int
    cells: int
    significant: bool

    @property
    def reason(self) -> str:
        verdict = "distinguishable from zero" if self.significant else "not distinguishable from zero"
        return (f"validation {self.statistic} {self.observed:.4g} over {self.cells} cells: permutation p = "
                f"{self.p_value:.3g} ({self.permutations} permutations), {verdict} at min_gap_confidence "
                f"{self.confidence:g}")

    def to_dict(self) -> dict:
        return {**asdict(self), "reason": self.reason}


def _codes(keys: np.ndarray) -> tuple[np.ndarray, int]:
    _, codes = np.unique(np.asarray(keys, dtype=str), return_inverse=True)
    return codes.astype(np.int64), int(codes.max()) + 1 if len(codes) else 0


def _cell_means(values: np.ndarray, codes: np.ndarray, n_cells: int) -> tuple[np.ndarray, np.ndarray]:
    counts = np.bincount(codes, minlength=n_cells)
    present = counts > 0
    return np.bincount(codes, weights=values, minlength=n_cells)[present] / counts[present], counts[present]


def _blocks(strata: np.ndarray | None, m: int) -> list[np.ndarray]:
    return [np.arange(m)] if strata is None else [np.flatnonzero(strata == s) for s in np.unique(strata)]


def gap_spread(codes: np.ndarray, n_cells: int, values: np.ndarray, strata: np.ndarray | None) -> float:
    """The gap itself (module docstring): max over strata of the spread (max - min) of the cell means of
    ``values`` (m,); cell ``codes`` (m,), ``strata`` the true labels for the equalized-odds gap (None: one)."""
    out = 0.0
    for rows in _blocks(strata, len(codes)):
        means, _ = _cell_means(values[rows], codes[rows], n_cells)
        if len(means) >= 2:
            out = max(out, float(means.max() - means.min()))
    return out


def dispersion(codes: np.ndarray, n_cells: int, values: np.ndarray, blocks: list[np.ndarray]) -> float:
    """The test statistic: ``sum over blocks, cells of n_c (mean_c - mean)^2 / var`` (module docstring)."""
    out = 0.0
    for rows in blocks:
        v = values[rows]
        var = v.var()
        if var <= 0:
            continue
        means, counts = _cell_means(v, codes[rows], n_cells)
        out += float((counts * (means - v.mean()) ** 2).sum() / var)
    return out


def permutation_test(keys: np.ndarray, values: np.ndarray, strata: np.ndarray | None, seed: int,
                     permutations: int = PERMUTATIONS) -> tuple[float, float, int]:
    """(observed gap spread, permutation p-value of the dispersion statistic, cells): the group keys (m,)
    shuffled ``permutations`` times (within each stratum when ``strata`` is given)."""
    codes, n_cells = _codes(keys)
    values = np.asarray(values, dtype=np.float64)
    blocks = _blocks(strata, len(codes))
    observed = dispersion(codes, n_cells, values, blocks)
    rng = np.random.default_rng([int(seed), SEED_TAG])
    perm = codes.copy()
    hits = 0
    for _ in range(permutations):
        for rows in blocks:
            perm[rows] = codes[rows][rng.permutation(len(rows))]
        hits += dispersion(perm, n_cells, values, blocks) >= observed * (1 - 1e-12)
    return gap_spread(codes, n_cells, values, strata), (1 + hits) / (1 + permutations), n_cells


def check_gap(kind: str, prob: np.ndarray, y: np.ndarray, keys: np.ndarray, confidence: float, seed: int,
              positive: int = 1, permutations: int = PERMUTATIONS) -> GapCheck:
    """Run the check for objective ``kind`` (module docstring) from the trained model's validation class
    probabilities ``prob`` (m, C), labels ``y`` (m,) and group keys ``keys`` (m,)."""
    y = np.asarray(y)
    if kind in RATE_OBJECTIVES:
        values = (np.asarray(prob).argmax(1) == positive).astype(np.float64)
        strata = y if kind == "equalized_odds_gap" else None
        statistic = kind
    elif kind in LOSS_OBJECTIVES:
        values = -np.log(np.clip(np.asarray(prob)[np.arange(len(y)), y], 1e-300, None))
        strata, statistic = None, "group_loss_gap"
    else:
        raise ValueError(f"gap check: objective {kind!r} has no group gap")
    observed, p, cells = permutation_test(keys, values, strata, seed, permutations)
    return GapCheck(statistic=statistic, observed=observed, p_value=float(p), confidence=float(confidence),
                    permutations=int(permutations), cells=cells, significant=bool(p <= 1 - confidence))


def gated(kind: str | None = None) -> Callable:
    """Decorator wiring the check into a group selector's ``fit(self, X, y, context)``: the selector's own input
    checks first (``self.check_inputs(X, y, context)``: a bad budget is refused whatever the gap), then
    :func:`gate` for objective ``kind`` (None: ``self.spec.objective``); when the gap is not distinguishable
    from zero ``fit`` is skipped (the selector flags nothing), else ``fit`` runs on the context :func:`gate`
    returns (holding the model the check trained, so a context with only a factory trains it once) and
    :func:`note` records the check in ``info_``."""

    def wrap(fit: Callable) -> Callable:
        @functools.wraps(fit)
        def checked_fit(self, X: np.ndarray, y: np.ndarray, context):
            self.check_inputs(X, y, context)
            context = gate(self, X, y, context, self.spec.objective if kind is None else kind)
            if context is not None:
                fit(self, X, y, context)
                note(self)
            return self

        return checked_fit

    return wrap


def gate(selector, X: np.ndarray, y: np.ndarray, context, kind: str):
    """Run the check for a group selector (its ``spec.min_gap_confidence`` and ``spec.group_column``) before it
    selects (use :func:`gated` rather than calling it). Returns the context to select with: ``context`` itself
    when the check is off, the objective has no group gap or there is no validation split
    (``selector.gap_check_`` None), else ``context`` with ``model`` set to the trained model the check used
    (``selector.gap_check_`` holds the :class:`GapCheck`). Returns None when the gap is not distinguishable from
    zero: ``selector`` is then fitted to flag nothing (``info_``: ``budget`` 0, ``gap_check``, ``reason``)."""
    from dataclasses import replace

    from tda_clean.models.trainer import predict_proba
    from tda_clean.selection.base import trained_model
    from tda_clean.selection.influence_detectors import _group_keys

    selector.gap_check_ = None
    confidence = getattr(selector.spec, "min_gap_confidence", None)
    if not confidence or kind not in RATE_OBJECTIVES + LOSS_OBJECTIVES or context.y_val is None \
            or len(context.y_val) == 0:
        return context
    keys = _group_keys(context.groups_val, selector.spec.group_column, len(context.y_val))
    model = trained_model(X, y, context, selector.name)
    check = check_gap(kind, predict_proba(model, context.X_val), context.y_val, keys, confidence, context.seed)
    selector.gap_check_ = check
    if check.significant:
        return context if context.model is model else replace(context, model=model)
    n = len(y)
    selector.scores_ = np.zeros(n)
    selector.support_ = np.zeros(n, dtype=bool)
    selector.threshold_ = float("nan")
    selector.contributions_ = None
    selector.suggested_labels_ = None
    selector.info_ = {"budget": 0, "objective": kind, "gap_check": check.to_dict(),
                      "reason": f"nothing worth cleaning: {check.reason}"}
    return None


def note(selector) -> None:
    """Record the check that let ``selector`` select (``info_['gap_check']``), if one ran."""
    check = getattr(selector, "gap_check_", None)
    if check is not None:
        selector.info_ = {**selector.info_, "gap_check": check.to_dict()}
