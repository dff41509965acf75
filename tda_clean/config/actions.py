"""Action configs (``action.kind``): what is done to the flagged rows, one pydantic model per action joined in
the :data:`Action` discriminated union (``tda_clean.actions``); ``unlearn`` is itself one spec per ``method``
(:data:`UnlearnAction`)."""
from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Discriminator, Field, Tag

from tda_clean.config.base import KEYED_ERROR, _Frozen
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


class RecommendedAction(_Frozen):
    """The action the detector recommends for the rows it flags (``Selection.recommended_action``): ``label_noise``
    relabels ``loo_loss``'s rows to the suggested label and removes ``harmful``'s. Only for a detector that
    recommends one (``detector.kind: label_noise``, whose default action it is)."""

    kind: Literal["recommended"] = "recommended"


class NoAction(_Frozen):
    """Detect and evaluate only: the training set is left as it is."""

    kind: Literal["none"] = "none"


class UnlearnSpec(_Frozen):
    """The base of the unlearning specs (``action.kind: unlearn``): one subclass per ``method``, each holding only
    that method's settings (another method's key is an unknown key), joined in the :data:`UnlearnAction`
    discriminated union (``tda_clean.actions.unlearn``; ``method`` defaults to ``newton``)."""

    kind: Literal["unlearn"] = "unlearn"
    method: str


class RetrainUnlearn(UnlearnSpec):
    """``retrain``: from scratch without the rows, with the run's training config (the reference); no settings."""

    method: Literal["retrain"] = "retrain"


class NewtonUnlearn(UnlearnSpec, InfluenceFields):
    """``newton``: second-order group removal update of docs/methods.md#unlearning (``order`` 1 or 2) with the
    ``influence`` spec (:class:`InfluenceFields`), then ``steps - 1`` Newton steps on the retained objective;
    exact for convex / last-layer."""

    device: ClassVar[str] = "model"
    method: Literal["newton"] = "newton"
    dtype: Literal["model", "float32", "float64"] = "model"
    order: Literal[1, 2] = 2
    steps: int = Field(default=2, ge=1)


class _GradientFields(_Frozen):
    """Settings of the gradient methods (``finetune``, ``ascent``): ``epochs`` of Adam at ``lr`` on the retained
    rows (``batch_size``, default the training batch size), the head re-initialised first when ``reinit_head``."""

    epochs: int = Field(default=5, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    batch_size: int | None = Field(default=None, ge=1)
    reinit_head: bool = True


class FinetuneUnlearn(_GradientFields, UnlearnSpec):
    """``finetune``: Adam on the retained rows from the before-model (:class:`_GradientFields`)."""

    method: Literal["finetune"] = "finetune"


class AscentUnlearn(_GradientFields, UnlearnSpec):
    """``ascent``: as ``finetune`` plus gradient ascent on the forget set, weight ``ascent_weight``, with its
    loss clamped at ``max_forget_loss``."""

    method: Literal["ascent"] = "ascent"
    ascent_weight: float = Field(default=0.5, ge=0)
    max_forget_loss: float = Field(default=3.0, gt=0)


class CounterexampleUnlearn(UnlearnSpec):
    """``counterexample`` (``tda_clean.actions.counterexample``): Adam steps at ``counter_lr`` (default the
    training lr) on ``layers`` over ``batch_size`` retained rows, the flagged rows with their trigger kept and a
    corrected label, and ``stamp`` retained rows per step with the trigger stamped on, matched on ``counter_loss``
    (retained rows weighted ``anchor_weight``); at most ``counter_steps`` steps, or when unset a ``counter_budget``
    share of the rows a full training run processes; ``target_drop``: stamped rows of another class are taught
    the before-model's trigger-free target logit lowered by that much; ``head_bias``: after the steps, per-class
    offsets added to the last linear layer's bias so that the model's softmax matches the before-model's on
    trigger-free retained rows (logits loss only; ``tda_clean.actions.head_bias``) -- ``held``: up to
    ``head_bias_rows`` retained rows the steps never drew (two forward passes over them), ``drawn``: the rows the
    steps drew (one forward pass), ``none``: off."""

    method: Literal["counterexample"] = "counterexample"
    batch_size: int | None = Field(default=None, ge=1)
    counter_steps: int | None = Field(default=None, ge=1)
    counter_budget: float = Field(default=0.025, gt=0, le=1)
    counter_lr: float | None = Field(default=None, gt=0)
    stamp: int = Field(default=8, ge=0)
    anchor_weight: float = Field(default=5.0, gt=0)
    layers: Literal["all", "body"] = "all"
    counter_loss: Literal["logits", "labels"] = "logits"
    target_drop: float | None = Field(default=4.0, ge=0)
    head_bias: Literal["held", "drawn", "none"] = "held"
    head_bias_rows: int = Field(default=256, ge=1)


def _method(data: Any) -> str:
    """The spec's tag: ``method`` (``newton`` when absent)."""
    method = data.get("method", "newton") if isinstance(data, dict) else getattr(data, "method", None)
    return method if isinstance(method, str) else repr(method)


UNLEARN_SPECS = (RetrainUnlearn, NewtonUnlearn, FinetuneUnlearn, AscentUnlearn, CounterexampleUnlearn)
METHODS = tuple(spec.model_fields["method"].default for spec in UNLEARN_SPECS)
UnlearnAction = Annotated[
    Union[tuple(Annotated[spec, Tag(method)] for spec, method in zip(UNLEARN_SPECS, METHODS))],
    Discriminator(_method, custom_error_type=KEYED_ERROR, custom_error_message="method: Input should be "
                  + ", ".join(f"'{m}'" for m in METHODS[:-1]) + f" or '{METHODS[-1]}'"),
]


def unlearn_spec(**fields: Any) -> UnlearnSpec:
    """The unlearning spec of ``fields`` (``method`` picks it; default ``newton``), validated as in a config."""
    from pydantic import TypeAdapter

    return TypeAdapter(UnlearnAction).validate_python({"kind": "unlearn", **fields})


Action = Annotated[Union[RemoveAction, RelabelAction, ReweightAction, RecommendedAction, NoAction, UnlearnAction],
                   Field(discriminator="kind")]
