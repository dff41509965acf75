"""Action configs (``action.kind``): what is done to the flagged rows, one pydantic model per action joined in
the :data:`Action` discriminated union (``tda_clean.actions``)."""
from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Union

from pydantic import Field

from tda_clean.config.base import _Frozen
from tda_clean.config.influence import InfluenceFields


class RemoveAction(_Frozen):
    """Drop the flagged rows from the training set."""

    kind: Literal["remove"] = "remove"


class RelabelAction(_Frozen):
    """Replace the labels of flagged rows by the detector's suggested labels."""

    kind: Literal["relabel"] = "relabel"


class ReweightAction(_Frozen):
    """Down-weight flagged rows in the retraining loss: the detector's suggested weights when it has them,
    else ``weight`` for every flagged row (0 = drop from the loss, 1 = unchanged)."""

    kind: Literal["reweight"] = "reweight"
    weight: float = Field(default=0.5, ge=0, le=1)


class NoAction(_Frozen):
    """Detect and evaluate only: the training set is left as it is."""

    kind: Literal["none"] = "none"


class UnlearnAction(InfluenceFields):
    """Remove the flagged rows and produce the after-model by unlearning (``tda_clean.actions.unlearn``).

    ``method``: ``retrain`` (from scratch without the rows; the reference), ``newton`` (second-order group
    removal update of docs/methods.md#unlearning with the ``influence`` spec (:class:`InfluenceFields`), then
    ``steps - 1`` Newton steps on the
    retained objective; exact for convex / last-layer), ``finetune`` (``epochs`` of Adam at ``lr`` on the
    retained rows, optionally re-initialising the head), ``ascent`` (gradient ascent on the forget set, weight
    ``ascent_weight``, with its loss clamped at ``max_forget_loss``, plus descent on the retained rows),
    ``counterexample`` (Adam steps at ``lr`` on ``layers`` over retained rows, the flagged rows with their trigger
    kept and a corrected label, and ``stamp`` retained rows per step with the trigger stamped on; at most
    ``counter_steps`` steps, or when unset a ``counter_budget`` share of the rows a full training run processes;
    ``target_gap``: stamped rows of another class are taught a target
    logit at least that far below their best other logit; ``tda_clean.actions.counterexample``).
    """

    kind: Literal["unlearn"] = "unlearn"
    device: ClassVar[str] = "model"
    method: Literal["retrain", "newton", "finetune", "ascent", "counterexample"] = "newton"
    dtype: Literal["model", "float32", "float64"] = "model"
    order: Literal[1, 2] = 2
    steps: int = Field(default=2, ge=1)
    epochs: int = Field(default=5, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    batch_size: int | None = Field(default=None, ge=1)
    reinit_head: bool = True
    ascent_weight: float = Field(default=0.5, ge=0)
    max_forget_loss: float = Field(default=3.0, gt=0)
    counter_steps: int | None = Field(default=None, ge=1)
    counter_budget: float = Field(default=0.04, gt=0, le=1)
    counter_lr: float | None = Field(default=None, gt=0)
    stamp: int = Field(default=16, ge=0)
    anchor_weight: float = Field(default=3.0, gt=0)
    layers: Literal["all", "body"] = "all"
    counter_loss: Literal["logits", "labels"] = "logits"
    target_gap: float | None = Field(default=3.0, ge=0)


Action = Annotated[Union[RemoveAction, RelabelAction, ReweightAction, NoAction, UnlearnAction], Field(discriminator="kind")]
