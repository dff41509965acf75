"""Typed, validated, hashable run configuration (pydantic v2, frozen, unknown keys rejected).

Data configs live in :mod:`tda_clean.config.data`, detector configs in :mod:`tda_clean.config.detectors`, the
influence spec in :mod:`tda_clean.config.influence`; all are re-exported here.

``load_config(path, overrides)`` reads YAML, applies ``a.b=c`` overrides and validates. Errors are raised as
:class:`~tda_clean.errors.InputError` with a one-line message naming the key path (``data.path``) and, for
enumerations, the allowed values.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

import yaml
from pydantic import (
    Field, PrivateAttr, SerializationInfo, ValidationError, field_serializer, field_validator, model_validator,
)

from tda_clean.config.actions import (  # noqa: F401  (re-exported)
    UNLEARN_SPECS, Action, AscentUnlearn, CounterexampleUnlearn, FinetuneUnlearn, NewtonUnlearn, NoAction,
    RecommendedAction, RelabelAction, RemoveAction, RetrainUnlearn, ReweightAction, UnlearnAction, UnlearnSpec,
    unlearn_spec,
)
from tda_clean.config.base import KEYED_ERROR, _Frozen
from tda_clean.config.data import (  # noqa: F401  (re-exported)
    PATH_KEYS, AdultSource, DataSource, DigitsSource, FashionMNISTSource, ImageFolderSource, MemorySource, SplitConfig,
    TableSource,
)
from tda_clean.config.detectors import (  # noqa: F401  (re-exported: ``from tda_clean.config import ...``)
    ActivationClusteringDetector, BlendRule, CleanlabDetector, D3MDetector, DeltaInfluenceDetector, Detector,
    GroupFirstOrderDetector, GroupSecondOrderDetector, HarmfulDetector, InfluenceObjectiveName,
    InfluenceRelabelDetector, InfluenceThresholdDetector, LabelNoiseDetector, RandomDetector, SelfInfluenceDetector,
    SharedPatternRule, SpectralSignatureDetector,
)
from tda_clean.config.influence import (  # noqa: F401  (re-exported)
    AutoBudget, Budget, GradientSettings, InfluenceFields, InfluenceSpec,
)
from tda_clean.config.scenarios import (  # noqa: F401  (re-exported)
    BadNets, Blended, ClassFlip, GroupFlip, NoScenario, Scenario, UniformFlip,
)
from tda_clean.errors import InputError, one_line

#: Detector configs whose selection recommends an action (``Selection.recommended_action``; ``action.kind:
#: recommended``, their default action).
RECOMMENDING = (LabelNoiseDetector,)
MAX_CONFIG_BYTES = 1 << 20  # a config file is a few KB; more (or more nodes once aliases expand) is refused
MAX_CONFIG_NODES = 100_000


# -------------------------------------------------------------------------------------- model + train
class LogisticConfig(_Frozen):
    """L2-regularised multinomial logistic regression (convex: use ``train.optimizer: lbfgs``)."""

    kind: Literal["logistic"] = "logistic"


class MLPConfig(_Frozen):
    kind: Literal["mlp"] = "mlp"
    hidden: tuple[int, ...] = (64,)


class CNNConfig(_Frozen):
    kind: Literal["cnn"] = "cnn"
    channels: tuple[int, int] = (16, 32)
    hidden: int = 64


class InstanceModel(_Frozen):
    """An ``nn.Module`` given to :func:`tda_clean.clean` (``model=``), held by this Python process under ``key``
    (a hash of its structure and weights): its weights are the before-model (not trained again); every retrain
    re-initialises a copy with the run seed (``reset_parameters`` of the modules that have it)."""

    kind: Literal["instance"] = "instance"
    key: str


def _import_path(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", value):
        raise ValueError(f"expected an import path 'package.module:function', got {value!r}")
    return value


class PythonModelConfig(_Frozen):
    """The user's own ``nn.Module`` (``tda_clean.models.user``): ``factory`` ``"package.module:function"`` called as
    ``factory(input_shape, n_classes)``; ``code_dir`` (relative to the config file's folder) is put first on
    ``sys.path``; ``checkpoint``: a ``state_dict`` file used as the before-model instead of training it;
    ``loss``: a per-sample loss ``(logits (n, C), y (n,)) -> (n,)`` replacing cross-entropy in training and in
    influence's training gradients and curvature."""

    kind: Literal["python"] = "python"
    factory: str
    code_dir: Path | None = None
    checkpoint: Path | None = None
    loss: str | None = None

    _paths = field_validator("factory", "loss")(_import_path)


ModelConfig = Annotated[Union[LogisticConfig, MLPConfig, CNNConfig, PythonModelConfig, InstanceModel],
                        Field(discriminator="kind")]


class TrainConfig(_Frozen):
    """Deterministic training. Loss = mean (weighted) cross-entropy + (l2 / 2) * ||theta||^2.

    ``lbfgs`` is full-batch (convex models); ``adam`` is mini-batch with early stopping on validation loss
    (``patience`` epochs without improvement). ``device: auto`` picks CUDA when available. ``function``
    (``"package.module:function"``) replaces the built-in trainer for every (re)train: see
    :func:`tda_clean.models.user.fit_with_function`.
    """

    optimizer: Literal["lbfgs", "adam"] = "lbfgs"
    l2: float = Field(default=1e-3, ge=0)
    epochs: int = Field(default=100, ge=1)
    lr: float = Field(default=1e-2, gt=0)
    batch_size: int = Field(default=128, ge=1)
    patience: int = Field(default=10, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "float64"] = "float32"
    function: str | None = None
    _model: PythonModelConfig | None = PrivateAttr(None)  # set by RunConfig: the user loss and code_dir

    _paths = field_validator("function")(_import_path)


# ------------------------------------------------------------------------------------ gate + tracking
#: Metrics the release gate can compare before vs after (``gate.regression_metrics``; all of them by default).
GuardedMetric = Literal["accuracy", "worst_group_accuracy", "demographic_parity_difference",
                        "equalized_odds_difference", "attack_success_rate"]


class GateConfig(_Frozen):
    """Release gate on the after-model (tda_clean/evaluation/gate.py). ``no_regression`` (default on): none of
    ``regression_metrics`` measured on both models may be worse after than before by more than ``tolerance``
    (absolute; which way is worse: tda_clean/evaluation/directions.py). The thresholds are optional, in [0, 1]."""

    no_regression: bool = True
    regression_metrics: tuple[GuardedMetric, ...] = get_args(GuardedMetric)
    tolerance: float = Field(default=0.0, ge=0, le=1)
    min_accuracy: float | None = Field(default=None, ge=0, le=1)
    min_worst_group_accuracy: float | None = Field(default=None, ge=0, le=1)
    max_attack_success_rate: float | None = Field(default=None, ge=0, le=1)
    max_equalized_odds_difference: float | None = Field(default=None, ge=0, le=1)


class EvaluationConfig(_Frozen):
    """Group cells (intersections of the group columns) with fewer than ``min_group_size`` test rows are left out
    of ``worst_group_accuracy`` and the fairness gaps (their own ``accuracy_<cell>`` is still reported);
    ``report.json`` lists them under ``dataset.small_groups``. A fairness gate the remaining cells cannot measure
    is refused when the data is loaded (:func:`tda_clean.evaluation.gate.check_gate_measurable`). With binary
    labels a cell with fewer than ``min_label_rows`` test rows of either class is left out the same way: its
    true- or false-positive rate is undefined (fairlearn reads it as 0, and the equalized-odds difference could
    read 1.000) or noise."""

    min_group_size: int = Field(default=20, ge=1)
    min_label_rows: int = Field(default=1, ge=1)


REVEAL_CREDENTIALS = "reveal_credentials"  # serialisation context key: keep the tracking URI's password


class TrackingConfig(_Frozen):
    """MLflow tracking. ``tracking_uri`` defaults to ``$MLFLOW_TRACKING_URI`` or ``sqlite:///<cwd>/mlflow.db``."""

    enabled: bool = True
    tracking_uri: str | None = None
    experiment: str = "tda-clean"
    log_models: bool = True

    @field_serializer("tracking_uri", when_used="json")
    def _without_credentials(self, uri: str | None, info: SerializationInfo) -> str | None:
        """JSON dumps carry the URI without its password (Prefect stores a flow's config parameter this way, MLflow
        params too); only a dump with ``context={REVEAL_CREDENTIALS: True}`` keeps it: the run folder's own
        ``config.yaml``, which ``tda-clean apply`` reconnects with."""
        from tda_clean.redact import redact

        return uri if uri is None or (info.context or {}).get(REVEAL_CREDENTIALS) else redact(uri)


class RunnerConfig(_Frozen):
    """Where sharded work (influence scores over chunks of ``shard_rows`` training rows) runs under Prefect:
    ``threads`` (default: in-process, one shard after another, each a Prefect task), or ``dask`` — a
    LocalCluster of ``n_workers`` processes, or the
    scheduler at ``address`` (``tcp://host:8786``). The plain library path (``--engine local``) runs shards
    in-process. Results are identical whichever runs them."""

    kind: Literal["threads", "dask"] = "threads"
    address: str | None = None
    n_workers: int = Field(default=2, ge=1)
    shard_rows: int = Field(default=4096, ge=1)


class RunConfig(_Frozen):
    """One cleaning run: data -> scenario -> train -> detect -> act -> retrain -> evaluate -> gate."""

    name: str = "tda-clean"
    seed: int = Field(default=0, ge=0, lt=2**31)  # stages add small offsets; every RNG takes it
    data: DataSource
    split: SplitConfig = SplitConfig()
    scenario: Scenario = NoScenario()
    model: ModelConfig = LogisticConfig()
    train: TrainConfig = TrainConfig()
    detector: Detector = CleanlabDetector()
    action: Action = RelabelAction()
    gate: GateConfig = GateConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    tracking: TrackingConfig = TrackingConfig()
    # required: stop after detection, write review/candidates.csv + index.html; `tda-clean apply` continues
    review: Literal["none", "required"] = "none"
    runner: RunnerConfig = RunnerConfig()

    @model_validator(mode="after")
    def _user_model_trains(self) -> "RunConfig":
        if isinstance(self.model, PythonModelConfig):  # its loss and code_dir reach every (re)train and influence
            train = self.train.model_copy()
            train._model = self.model
            object.__setattr__(self, "train", train)
        return self

    @model_validator(mode="after")
    def _action_follows_detector(self) -> "RunConfig":
        """A detector that recommends an action (``label_noise``) with no ``action`` written gets
        ``recommended``; ``recommended`` with any other detector is refused. An explicit action is kept."""
        recommends = isinstance(self.detector, RECOMMENDING)
        if recommends and "action" not in self.model_fields_set:
            object.__setattr__(self, "action", RecommendedAction())
        elif isinstance(self.action, RecommendedAction) and not recommends:
            raise ValueError(f"action.kind: 'recommended' follows the detector's recommendation; detector.kind="
                             f"{self.detector.kind} makes none (use remove or relabel)")
        return self

    def config_hash(self) -> str:
        """Stable 16-hex-digit hash of everything that changes results (tracking and runner excluded)."""
        payload = self.model_dump(mode="json", exclude={"tracking", "runner"})
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def flat(self) -> dict[str, str]:
        """Flattened ``{"a.b": "value"}`` view, e.g. for MLflow params."""
        return flatten(self.model_dump(mode="json"))


# ------------------------------------------------------------------------------------------ loading
def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, path + "."))
        else:
            out[path] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...],
                    source: str = "config") -> dict[str, Any]:
    """Return a copy of ``raw`` (read from ``source``) with each ``a.b.c=value`` applied (value parsed as YAML)."""
    result = _plain(raw, source)
    for item in overrides:
        if "=" not in item:
            raise InputError(f"--set {item!r}: expected KEY.PATH=VALUE")
        path, text = item.split("=", 1)
        keys = path.strip().split(".")
        if not all(keys):
            raise InputError(f"--set {item!r}: empty key in {path!r}")
        node = result
        for depth, key in enumerate(keys[:-1]):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise InputError(f"--set {item!r}: {'.'.join(keys[: depth + 1])} is a value, not a section")
            node = child
        try:
            node[keys[-1]] = _plain(yaml.safe_load(text), f"--set {path}")
        except yaml.YAMLError as exc:
            raise InputError(f"--set {path}: not valid YAML ({one_line(exc)})") from None
    return result


def _plain(data: Any, where: str) -> Any:
    """Deep copy of plain YAML data, refusing aliases that expand past ``MAX_CONFIG_NODES`` values (a "billion
    laughs" document is small but expands exponentially; an alias inside itself expands without end)."""
    sizes: dict[int, int] = {}

    def size(node: Any) -> int:
        if not isinstance(node, (dict, list)):
            return 1
        if id(node) not in sizes:
            sizes[id(node)] = MAX_CONFIG_NODES + 1  # while counting it: reached again = a cycle
            sizes[id(node)] = 1 + sum(map(size, node.values() if isinstance(node, dict) else node))
        return sizes[id(node)]

    if size(data) > MAX_CONFIG_NODES:
        raise InputError(f"{where}: expands to more than {MAX_CONFIG_NODES} values (aliases); not a config")
    return json.loads(json.dumps(data))


def parse_config(raw: Any, source: str = "config") -> RunConfig:
    """Validate plain data into a :class:`RunConfig`; raises :class:`InputError` with key paths."""
    if not isinstance(raw, dict):
        raise InputError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise InputError(f"{source}: " + "; ".join(_describe(err, raw) for err in exc.errors())) from None


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML config file, apply overrides, validate."""
    return parse_config(apply_overrides(read_config_file(path), overrides, str(path)), source=str(path))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML config file's top-level mapping, size-checked, with relative paths resolved against its folder."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file not found: {path}")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise InputError(f"{path}: {path.stat().st_size} bytes; a config file is at most {MAX_CONFIG_BYTES}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
        raise InputError(f"{path}: not valid YAML ({one_line(exc)})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a mapping at the top level")
    sections = {"data": PATH_KEYS, "detector": ("pred_probs_path",), "model": ("code_dir", "checkpoint")}
    for section, keys in sections.items():  # relative paths name files next to the config, not in the cwd
        if isinstance(raw.get(section), dict):
            raw = {**raw, section: {k: str(path.absolute().parent / v) if k in keys and isinstance(v, str) else v
                                    for k, v in raw[section].items()}}
    return raw


def _describe(err: dict[str, Any], raw: dict[str, Any]) -> str:
    """``key.path: message`` with discriminator tags (``csv`` in ``data.csv.path``, ``unlearn`` and ``newton`` in
    ``action.unlearn.newton.steps``) removed from the path."""
    keys: list[str] = []
    node: Any = raw
    loc = err["loc"]
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            keys.append(str(part))
            node = node[part]
        elif isinstance(node, dict) and (node.get("kind") == part or i + 1 < len(loc)):
            continue  # a union member's tag (its kind, or a method the user wrote or left at its default)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            keys.append(str(part))
            node = node[part]
        else:
            keys.append(str(part))
            node = None
    where = ".".join(keys) or "(top level)"
    message = err["msg"].removeprefix("Value error, ")
    if (err["type"] in ("value_error", KEYED_ERROR) and ": " in message
            and all(part.isidentifier() for part in message.split(": ", 1)[0].split("."))):
        key, message = message.split(": ", 1)  # a model validator naming its field: ``features: ...``
        where = f"{where}.{key}" if keys else key
    if err["type"] == "extra_forbidden":
        message = "unknown key"
    return f"{where}: {message}"
