"""The detector/selector interface and the one result type every detector returns.

Selectors follow scikit-learn conventions: ``__init__`` stores parameters only, ``fit(X, y, context=...)``
returns ``self``, learned state ends in ``_`` (``scores_``, ``threshold_``, ``support_`` and optionally
``suggested_labels_``, ``recommended_action_``), ``get_support(indices=False)`` returns the boolean mask (or
indices, most suspicious first). ``to_selection()`` packs the fitted state into a :class:`Selection`, which is all that actions,
evaluation and logging ever see.

Score convention: HIGHER score = MORE suspicious / more harmful. A row is flagged when ``score > threshold_``
(or, for budgeted selectors, when it is among the top ``budget``).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
from sklearn.base import BaseEstimator
from torch import nn

from tda_clean.config import TrainConfig


def serial_map(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """The default mapper: run ``fn`` on each item here, in order."""
    return [fn(item) for item in items]


def shard_ranges(n: int, shard_rows: int | None) -> list[tuple[int, int]]:
    """Contiguous ``(start, stop)`` row ranges of at most ``shard_rows`` rows covering ``range(n)``."""
    size = n if not shard_rows else shard_rows
    return [(start, min(n, start + size)) for start in range(0, n, max(1, size))]


@dataclass(frozen=True)
class FitContext:
    """What a detector may use besides the training arrays.

    ``make_model(seed)`` builds a fresh untrained model of the run's family; ``train_config`` trains it
    (``tda_clean.models.trainer.fit``); ``model`` is the model already trained on the full training set;
    ``X_val``/``y_val`` a clean validation split, ``groups_val`` its group columns (a DataFrame).
    ``map(fn, items)`` runs independent shards of work (``serial_map`` here; Prefect tasks on threads or Dask
    under the flow) and ``shard_rows`` sizes them; a detector's result must not depend on either.
    ``action`` is the run's ``action.kind`` (the automatic budget refits as that action would change the data;
    ``recommended``: ``label_noise`` simulates the action it recommends for each detector's rows).
    """

    seed: int
    make_model: Callable[[int], nn.Module] | None = None
    train_config: TrainConfig | None = None
    model: nn.Module | None = None
    X_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    groups_val: Any = None
    n_classes: int | None = None
    map: Callable[[Callable[[Any], Any], list[Any]], list[Any]] = serial_map
    shard_rows: int | None = None
    action: str = "remove"


@dataclass(frozen=True)
class Selection:
    """Rows a detector flags in the training split.

    mask:        (n,) bool, True = flagged.
    indices:     (k,) int positions of flagged rows, most suspicious first (k = mask.sum()).
    scores:      (n,) float, higher = more suspicious (only that, whatever the detector).
    threshold:   float, flagged rows score above it (NaN when the selection is budget-based).
    detector:    registered name of the detector.
    suggested_labels: (n,) int or None, the detector's label for each row (for ``relabel``).
    reasons:     (k,) str, one human-readable reason per flagged row, aligned with ``indices``.
    info:        small JSON-able metadata.
    suggested_weights: (n,) float in [0, 1] or None, the detector's training weight for each row (``reweight``).
    contributions: (n,) float or None, each row's additive share of the predicted objective change when the
                 flagged rows are removed together (negative = decrease); set by the selectors whose
                 prediction is a sum over rows (``harmful``, the group selectors' scalar path).
    recommended_action: ``"relabel"`` or ``"remove"``, what the detector recommends doing to its flagged rows
                 (``action.kind: recommended`` applies it); None when it recommends nothing.
    """

    mask: np.ndarray
    indices: np.ndarray
    scores: np.ndarray
    threshold: float
    detector: str
    suggested_labels: np.ndarray | None = None
    reasons: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)
    suggested_weights: np.ndarray | None = None
    contributions: np.ndarray | None = None
    recommended_action: str | None = None

    @property
    def n_flagged(self) -> int:
        return int(self.mask.sum())

    def restrict(self, keep: np.ndarray) -> "Selection":
        """The same selection with only the flagged rows where ``keep`` (n,) bool is True (order kept)."""
        from dataclasses import replace

        kept = keep[self.indices]
        return replace(self, mask=self.mask & keep, indices=self.indices[kept],
                       reasons=tuple(r for r, k in zip(self.reasons, kept) if k))

    def save(self, path) -> None:
        """Write to an ``.npz`` file (arrays) — ``load`` reads it back."""
        import json

        arrays = {"mask": self.mask, "indices": self.indices, "scores": self.scores}
        for name in ("suggested_labels", "suggested_weights", "contributions"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        meta = {"threshold": self.threshold, "detector": self.detector, "reasons": list(self.reasons),
                "info": self.info, "recommended_action": self.recommended_action}
        np.savez(path, meta=np.array(json.dumps(meta)), **arrays)

    @classmethod
    def load(cls, path) -> "Selection":
        import json

        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            return cls(
                mask=f["mask"], indices=f["indices"], scores=f["scores"], threshold=meta["threshold"],
                detector=meta["detector"],
                suggested_labels=f["suggested_labels"] if "suggested_labels" in f.files else None,
                suggested_weights=f["suggested_weights"] if "suggested_weights" in f.files else None,
                contributions=f["contributions"] if "contributions" in f.files else None,
                reasons=tuple(meta["reasons"]), info=meta["info"], recommended_action=meta.get("recommended_action"),
            )


class NotFittedError(RuntimeError):
    """A selector was used before ``fit``."""


class BaseSelector(BaseEstimator):
    """Base class for detectors: a scikit-learn estimator (``get_params``, ``set_params``, ``sklearn.base.clone``).
    Subclasses set ``name`` and implement ``fit``. A selector configured by a ``spec`` (its pydantic config)
    also exposes the spec's fields as ``spec__<field>`` (``get_params(deep=True)``, ``set_params``)."""

    name: ClassVar[str] = "base"

    def fit(self, X: np.ndarray, y: np.ndarray, context: FitContext) -> "BaseSelector":  # pragma: no cover
        raise NotImplementedError

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Constructor parameters, read back from attributes of the same name (plus ``spec__<field>`` when deep)."""
        params = super().get_params(deep=False)
        spec = params.get("spec")
        if deep and spec is not None:
            params.update({f"spec__{k}": v for k, v in spec if k != "kind"})
        return params

    def set_params(self, **params: Any) -> "BaseSelector":
        """Set constructor parameters; ``spec__<field>=value`` replaces the spec by a validated copy."""
        fields = {k.removeprefix("spec__"): params.pop(k) for k in list(params) if k.startswith("spec__")}
        if fields:
            from pydantic import ValidationError

            from tda_clean.errors import InputError

            spec = params.get("spec", self.spec)
            try:
                params["spec"] = type(spec).model_validate({**spec.model_dump(), **fields})
            except ValidationError as exc:
                err = exc.errors()[0]
                raise InputError(f"detector.{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        return super().set_params(**params)

    def _check_fitted(self) -> None:
        if not hasattr(self, "support_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted yet: call fit(X, y, context) first")

    def get_support(self, indices: bool = False) -> np.ndarray:
        """Boolean mask of flagged rows, shape (n,); or their positions, most suspicious first."""
        self._check_fitted()
        if not indices:
            return self.support_
        flagged = np.flatnonzero(self.support_)
        return flagged[np.argsort(-self.scores_[flagged], kind="stable")]

    def reason(self, i: int) -> str:
        """Why row position ``i`` was flagged (override for detector-specific wording)."""
        return f"{self.name} score {self.scores_[i]:.4g} > threshold {self.threshold_:.4g}"

    def to_selection(self) -> Selection:
        self._check_fitted()
        order = self.get_support(indices=True)
        return Selection(
            mask=self.support_.copy(),
            indices=order,
            scores=np.asarray(self.scores_, dtype=float),
            threshold=float(self.threshold_),
            detector=self.name,
            suggested_labels=getattr(self, "suggested_labels_", None),
            suggested_weights=getattr(self, "suggested_weights_", None),
            contributions=getattr(self, "contributions_", None),
            recommended_action=getattr(self, "recommended_action_", None),
            reasons=tuple(self.reason(int(i)) for i in order),
            info=dict(getattr(self, "info_", {})),
        )


def top_k_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the ``k`` highest scores (ties broken by position, deterministic)."""
    mask = np.zeros(len(scores), dtype=bool)
    if k > 0:
        mask[np.argsort(-scores, kind="stable")[:k]] = True
    return mask


def cap_flagged(flagged: np.ndarray, scores: np.ndarray, cap: int | None) -> np.ndarray:
    """``flagged`` (n,) bool limited to its ``cap`` highest ``scores`` (n,) (ties by position); unchanged when
    ``cap`` is None or not exceeded."""
    if cap is None or flagged.sum() <= cap:
        return flagged
    return top_k_mask(np.where(flagged, scores, -np.inf), cap)


# Registry: config ``detector.kind`` -> factory taking the detector config. The orchestration looks names
# up here and never branches on them.
DETECTORS: dict[str, Callable[[Any], BaseSelector]] = {}


def register_selector(kind: str, cls: type[BaseSelector]) -> type[BaseSelector]:
    """Register ``cls`` under config ``kind``; it is built from the config: passed whole when the constructor
    takes a ``spec``, else field by field (all but ``kind``)."""
    whole = "spec" in inspect.signature(cls.__init__).parameters
    DETECTORS[kind] = lambda cfg: cls(cfg) if whole else cls(**cfg.model_dump(exclude={"kind", "auto_budget"}))
    DETECTORS[kind].own_auto_budget = getattr(cls, "own_auto_budget", False)  # read by make_detector
    return cls


def influence_engine(X: np.ndarray, y: np.ndarray, context: FitContext, spec, owner: str, model=None):
    """The one place a detector builds its :class:`~tda_clean.influence.InfluenceEngine`: ``spec``
    (:class:`~tda_clean.config.influence.InfluenceSpec`) whole, the training objective of the context's training
    config, on ``model`` (default the context's trained model)."""
    from tda_clean.influence import InfluenceEngine
    from tda_clean.models.trainer import training_objective

    model = trained_model(X, y, context, owner) if model is None else model
    return InfluenceEngine(model, (X, y), spec, training_objective(context.train_config))


def trained_model(X: np.ndarray, y: np.ndarray, context: FitContext, owner: str) -> nn.Module:
    """The context's trained model, or one trained here from the context's factory and training config."""
    from tda_clean.errors import InputError

    if context.train_config is None:
        raise InputError(f"{owner} detector: needs the training config (l2 is part of the Hessian)")
    if context.model is not None:
        return context.model
    if context.make_model is None:
        raise InputError(f"{owner} detector: needs a trained model or a model factory in the context")
    from tda_clean.models.trainer import fit

    model = context.make_model(context.seed)
    fit(model, X, y, context.train_config, context.seed, X_val=context.X_val, y_val=context.y_val, progress=False)
    return model


def register_detector(kind: str) -> Callable[[Callable[[Any], BaseSelector]], Callable[[Any], BaseSelector]]:
    def wrap(factory: Callable[[Any], BaseSelector]) -> Callable[[Any], BaseSelector]:
        DETECTORS[kind] = factory
        return factory

    return wrap
