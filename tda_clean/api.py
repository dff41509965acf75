"""The Python API at the level of the CLI: ``tda_clean.clean(train, ...) -> RunReport``.

``clean`` builds a :class:`~tda_clean.config.RunConfig` (validated like a YAML file: a bad key is the same
one-line :class:`~tda_clean.errors.InputError`) and runs the stages of the CLI's library path
(:func:`tda_clean.pipeline.run_pipeline`). In-memory data (``data.kind: memory``) and an ``nn.Module`` instance
(``model.kind: instance``) are held by this process under hashes of their content, so a run folder resumes:
the same data, model and settings give the same folder.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
from torch import nn

from tda_clean.config import REVEAL_CREDENTIALS, RunConfig, parse_config, read_config_file
from tda_clean.data.export import cleaned_frame
from tda_clean.data.sources import MEMORY, register_in_memory
from tda_clean.errors import InputError
from tda_clean.models.given import MODELS, register_module
from tda_clean.run_dir import AUDIT
from tda_clean.spreadsheet import read_safe_csv


@dataclass(frozen=True)
class RunReport:
    """What :func:`clean` returns: the run's report, typed; ``to_dict()`` equals ``report.json``'s content.

    status: ``completed`` (or ``awaiting_review`` under ``review: required``: before/after/actions empty);
    before / after: held-out metrics of the models trained on the input and on the cleaned data (``accuracy``,
    ``worst_group_accuracy``...); selection: the detector's summary (``n_flagged``, precision/recall when the
    corruption is known); actions: rows removed / relabelled / reweighted; gate: ``{"passed", "reasons"}`` or None;
    cleaned_data: for a DataFrame, its training rows minus the removed ones, relabels applied (original index and
    columns and dtypes; also ``<run_dir>/cleaned/train.parquet``, ``train.csv`` without pyarrow), else None.
    """

    status: str
    before: dict[str, Any]
    after: dict[str, Any]
    selection: dict[str, Any]
    actions: dict[str, Any]
    gate: dict[str, Any] | None
    run_dir: Path
    cleaned_data: pd.DataFrame | None = field(default=None, repr=False)
    report: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.report))


def clean(train, *, val=None, test=None, label: str | None = None, groups=(), model=None, detector=None,
          action=None, config: Mapping[str, Any] | RunConfig | str | Path | None = None,
          output: str | Path | None = None, fresh: bool = False, **overrides: Any) -> RunReport:
    """Detect the training rows that hurt, act on them, retrain and evaluate — ``tda-clean run`` from Python.

    ``train`` / ``val`` / ``test`` (``val`` and ``test`` both or neither: the user's own splits, else the tool
    splits ``train``): a pandas DataFrame (``label`` names its label column, ``groups`` its group columns;
    preprocessed like a CSV table), ``(X, y)`` arrays (X (n, ...) features used as given, y (n,) labels of any
    hashable type) or a map-style ``torch.utils.data.Dataset`` yielding ``(x, y)``. ``model``: an ``nn.Module``
    with arrays or a Dataset (its current weights are the before-model; retrains re-initialise a copy with the run
    seed, so every parameter must be under a ``reset_parameters``), a model config
    dict or kind. ``detector`` / ``action``: a config dict or kind; ``{"kind": "cleanlab", "pred_probs": P}``
    uses the user's out-of-sample probabilities P (n_train, n_classes). ``config``: a config dict, RunConfig or
    YAML path as the base (training settings go there: ``config={"train": {"epochs": 5}}``, as ``train`` is the
    data); ``overrides`` (``seed=1``, ``split={"test_fraction": 0.3}``) are merged into it section by section.
    ``output`` / ``fresh`` as on the CLI (default folder ``runs/<name>-<hash>-<data>``). Bad input raises
    :class:`~tda_clean.errors.InputError` with one line naming the key.
    """
    if isinstance(train, pd.DataFrame) and isinstance(model, nn.Module):
        raise InputError("model: a trained nn.Module would meet a DataFrame's standardised, one-hot features it never "
                         "saw; pass (X, y) arrays (features used as given) or a model config")
    held: list[tuple[dict, str]] = []  # what this call puts in the process's registries, released on the way out
    try:
        raw = _merge(_base(config), overrides)
        raw["data"] = _data_section(train, val, test, label, groups, raw.get("data") or {}, held)
        for key, value in (("model", model), ("detector", detector), ("action", action)):
            if value is not None:
                raw[key] = _section(key, value, held)
        from tda_clean.pipeline import run_pipeline

        report = run_pipeline(cfg := parse_config(raw, source="tda_clean.clean"), output, fresh=fresh)
        cleaned = (cleaned_frame(cfg.data, read_safe_csv(Path(report["run_dir"]) / AUDIT))
                   if report["status"] == "completed" and isinstance(train, pd.DataFrame) else None)
    finally:
        for registry, key in held:
            registry.pop(key, None)
    return RunReport(report["status"], report["before"], report["after"], report["selection"], report["actions"],
                     report["gate"], Path(report["run_dir"]), cleaned, report)


def _base(config) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, RunConfig):  # only the sections the user set: defaults that follow another section
        # (label_noise's recommended action) are derived again after the overrides, not frozen as if written
        return config.model_dump(mode="json", include=set(config.model_fields_set),
                                 context={REVEAL_CREDENTIALS: True})
    if isinstance(config, (str, Path)):
        config = read_config_file(config)
    if not isinstance(config, Mapping):
        raise InputError(f"config: expected a mapping, RunConfig or YAML path, got {type(config).__name__}")
    return json.loads(json.dumps(config, default=str))


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) else value
    return out


def _data_section(train, val, test, label, groups, extra: Mapping[str, Any], held: list) -> dict[str, Any]:
    if (val is None) != (test is None):
        raise InputError("val: give both val and test (your own splits) or neither")
    names = {key: register_in_memory(_as_data(split, obj), split)
             for key, split, obj in (("path", "train", train), ("val_path", "val", val), ("test_path", "test", test))
             if obj is not None}
    held += [(MEMORY, name) for name in names.values()]
    frames = {isinstance(MEMORY[name], pd.DataFrame) for name in names.values()}
    if len(frames) > 1:
        raise InputError("val: train, val and test must be of one kind (all DataFrames, or all arrays / Datasets)")
    section = {**{k: v for k, v in extra.items() if k not in ("kind", "val_path", "test_path")}, "kind": "memory",
               **names}
    if frames == {True}:
        if label is None and "label" not in extra:
            raise InputError("label: name the label column of the DataFrame (label=...)")
        return {**section, **({"label": label} if label is not None else {}),
                **({"groups": list(groups)} if groups else {})}
    if label is not None or groups:
        raise InputError(f"{'label' if label is not None else 'groups'}: names DataFrame columns; arrays and "
                         "Datasets have none")
    return section


def _as_data(split: str, obj) -> pd.DataFrame | tuple[np.ndarray, np.ndarray]:
    """A DataFrame as it is; ``(X, y)`` or a map-style Dataset of ``(x, y)`` as ``(X float32 (n, ...), y (n,))``."""
    if isinstance(obj, pd.DataFrame):
        return obj
    if isinstance(obj, torch.utils.data.Dataset) and hasattr(obj, "__len__"):
        items = [obj[i] for i in range(len(obj))]
        if not items or not all(isinstance(it, (tuple, list)) and len(it) == 2 for it in items):
            raise InputError(f"{split}: the Dataset must yield (x, y) pairs and have rows")
        try:
            X = np.stack([_array(x) for x, _ in items])
        except (TypeError, ValueError) as exc:
            raise InputError(f"{split}: the Dataset's x must be arrays or tensors of one shape ({exc})") from None
        obj = (X, [t.item() if isinstance(t, (torch.Tensor, np.generic)) else t for _, t in items])
    if not (isinstance(obj, tuple) and len(obj) == 2):
        raise InputError(f"{split}: expected a pandas DataFrame, (X, y) arrays or a map-style torch Dataset yielding "
                         f"(x, y); got {type(obj).__name__}")
    X, y = _array(obj[0]), np.asarray(obj[1] if not isinstance(obj[1], torch.Tensor) else obj[1].numpy())
    if X.ndim < 2 or y.ndim != 1 or len(X) != len(y):
        raise InputError(f"{split}: X must be (n, ...) and y (n,); got X {X.shape}, y {y.shape}")
    return X, y


def _array(x) -> np.ndarray:
    return np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float32)


def _section(key: str, value, held: list) -> dict[str, Any]:
    """A config section from a kind, a dict, an ``nn.Module`` (model) or a dict with ``pred_probs`` (detector)."""
    if isinstance(value, str):
        return {"kind": value}
    if key == "model" and isinstance(value, nn.Module):
        held.append((MODELS, register_module(value)))
        return {"kind": "instance", "key": held[-1][1]}
    if not isinstance(value, Mapping):
        raise InputError(f"{key}: expected a config dict or kind{', or an nn.Module' if key == 'model' else ''}; got "
                         f"{type(value).__name__}")
    section = dict(value)
    if "pred_probs" in section:  # held in memory under a name made of its content, so the config (and hash) names it
        probs = np.ascontiguousarray(section.pop("pred_probs"), dtype=np.float64)
        digest = hashlib.sha256(f"{probs.shape}".encode() + probs.tobytes()).hexdigest()[:16]
        section["pred_probs_path"] = f"pred_probs-memory-{digest}"
        MEMORY[section["pred_probs_path"]] = probs
        held.append((MEMORY, section["pred_probs_path"]))
    return section
