"""The user's own model, loss and training function, named in the config by import paths
``"package.module:function"`` (found on ``PYTHONPATH``, or in ``model.code_dir`` put first on ``sys.path``).

    model.factory(input_shape: tuple[int, ...], n_classes: int) -> torch.nn.Module     (logits (n, n_classes))
    model.loss(logits (n, C), y (n,) long) -> (n,) per-sample losses                 (default cross-entropy)
    train.function(model, train: TrainSet, val: TrainSet | None, *, seed: int) -> nn.Module | None

The training function trains ``model`` (already on the run's device and dtype) in place, or returns a trained
module whose ``state_dict`` is copied into it; it is called for every (re)train (before-model without a
checkpoint, after-model, cleanlab's folds, ...) under a torch RNG seeded with ``seed``. An exception it raises
becomes an :class:`InputError` (exit code 2) naming ``train.function`` with its message.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
from torch import nn

from tda_clean.errors import InputError, one_line


class TrainSet(NamedTuple):
    """Tensors on the model's device: ``X`` (n, ...) in the model's dtype (integer inputs stay integer), ``y`` (n,)
    long, ``weights`` (n,) row weights or None."""

    X: torch.Tensor
    y: torch.Tensor
    weights: torch.Tensor | None = None


def import_object(path: str, key: str, code_dir: Path | None = None) -> Callable[..., Any]:
    """The callable ``module:name`` of ``path``; InputError naming ``key`` and the module when it cannot be had."""
    module_name, _, name = path.partition(":")
    if code_dir is not None:
        folder = Path(code_dir).resolve()
        if not folder.is_dir():
            raise InputError(f"model.code_dir: {code_dir} is not a folder")
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
        loaded = sys.modules.get(module_name.split(".")[0])
        where = getattr(loaded, "__file__", None) or next(iter(getattr(loaded, "__path__", None) or []), "")
        if loaded is not None and not str(where).startswith(str(folder)):
            for other in [m for m in sys.modules if m == loaded.__name__ or m.startswith(loaded.__name__ + ".")]:
                del sys.modules[other]  # a same-named module from another folder: read this folder's
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - the user's import: any failure is reported in one line
        where = f" (code_dir {code_dir})" if code_dir is not None else " (not on PYTHONPATH; set model.code_dir?)"
        raise InputError(f"{key}: cannot import module {module_name!r}{where}: {type(exc).__name__}: "
                         f"{one_line(exc)}") from None
    obj = getattr(module, name, None)
    if not callable(obj):
        raise InputError(f"{key}: module {module_name!r} has no function {name!r}")
    return obj


def code_files(train) -> list[Path | None]:
    """The source files of ``model.factory``, ``model.loss`` and ``train.function`` (``train``: a run's train config),
    imported as for training; one that cannot be is left out (the run reports it when it is used)."""
    user, out = train._model, []
    named = [("model.factory", user.factory), ("model.loss", user.loss)] if user is not None else []
    for key, path in [*named, ("train.function", train.function)]:
        with contextlib.suppress(InputError, TypeError):  # TypeError: a callable instance has no file of its own
            out.append(path and Path(inspect.getfile(import_object(path, key, user and user.code_dir))))
    return out


def build(config, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """``config.factory(input_shape, n_classes)`` (``config``: ``PythonModelConfig``), checked to be a module."""
    factory = import_object(config.factory, "model.factory", config.code_dir)
    try:
        model = factory(tuple(input_shape), int(n_classes))
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"model.factory: {config.factory} raised {type(exc).__name__}: {one_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise InputError(f"model.factory: {config.factory} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def load_checkpoint(model: nn.Module, path: Path) -> nn.Module:
    """Load the ``state_dict`` file ``path`` into ``model`` (``torch.load(weights_only=True)``: pickled objects
    are refused); InputError listing missing / unexpected / mis-shaped keys."""
    if not Path(path).is_file():
        raise InputError(f"model.checkpoint: {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError for a pickled model, others for a damaged file
        raise InputError(f"model.checkpoint: {path} is refused: not a plain state_dict (a pickled model? save "
                         f"model.state_dict() with torch.save) ({one_line(exc)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"model.checkpoint: {path} holds a {type(state).__name__} that is not a state_dict of "
                         "tensors (save model.state_dict() with torch.save)")
    own = model.state_dict()
    problems = [f"{what} keys {keys}" for what, keys in (
        ("missing", sorted(set(own) - set(state))), ("unexpected", sorted(set(state) - set(own))),
        ("mis-shaped", [k for k in own if k in state and own[k].shape != state[k].shape])) if keys]
    if problems:
        raise InputError(f"model.checkpoint: {path} does not fit {type(model).__name__}: {'; '.join(problems)}")
    model.load_state_dict(state)
    return model


@dataclass(frozen=True)
class UserLoss:
    """The per-sample loss ``path`` (picklable: imported where called); checks its ``(n,)`` output shape."""

    path: str
    code_dir: Path | None = None

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = import_object(self.path, "model.loss", self.code_dir)(logits, y)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (logits.shape[0],):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InputError(f"model.loss: {self.path} returned {got}; expected per-sample losses of shape "
                             f"(n,) = ({logits.shape[0]},)")
        return out


def fit_with_function(model: nn.Module, train: TrainSet, val: TrainSet | None, config, seed: int) -> nn.Module:
    """Train ``model`` with ``config.function`` (``config``: ``TrainConfig``); see the module docstring."""
    user = getattr(config, "_model", None)
    function = import_object(config.function, "train.function", user.code_dir if user is not None else None)
    param = next(model.parameters())
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out = function(model, train, val, seed=seed)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's code: its message, in one line
        raise InputError(f"train.function: {config.function} raised {type(exc).__name__}: {one_line(exc)}") from None
    if out is not None and out is not model:
        if not isinstance(out, nn.Module):
            raise InputError(f"train.function: {config.function} returned a {type(out).__name__}; expected the "
                             "trained nn.Module or None")
        model.load_state_dict(out.state_dict())
    return model.to(device=param.device, dtype=param.dtype).eval()
