"""An ``nn.Module`` given to :func:`tda_clean.clean` (``model.kind: instance``), held by this Python process."""
from __future__ import annotations

import copy
import hashlib

from torch import nn

from tda_clean.errors import InputError

#: ``nn.Module`` instances given as ``model=``: key (hash of structure and weights) -> the module.
MODELS: dict[str, nn.Module] = {}


def register_module(model: nn.Module) -> str:
    """Keep ``model`` under 16 hex digits of a hash of its ``repr`` and weights; return that key. A module whose
    parameters are not all under a module with ``reset_parameters`` is refused: its retrains would not start afresh."""
    covered = {id(p) for m in model.modules() if callable(_reset(m)) for p in m.parameters()}
    missing = [name for name, p in model.named_parameters() if id(p) not in covered]
    if missing:
        raise InputError(f"model: parameters {', '.join(missing)} are not re-initialised by any module's "
                         "reset_parameters(); define one so retrains start afresh")
    h = hashlib.sha256(repr(model).encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    MODELS[h.hexdigest()[:16]] = model
    return h.hexdigest()[:16]


def _reset(module: nn.Module):
    """The module's re-initialiser: ``reset_parameters`` (or torch's ``_reset_parameters``: nn.MultiheadAttention)."""
    return getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None)


def _registered(key: str) -> nn.Module:
    if key not in MODELS:
        raise InputError("model: the nn.Module of this run is held by another Python process (model.kind=instance "
                         "is made by tda_clean.clean); give it again")
    return MODELS[key]


def given_model(config) -> nn.Module | None:
    """The user's trained module (the before-model) for ``model.kind: instance``, else None."""
    return _registered(config.key) if config.kind == "instance" else None


def fresh_copy(key: str) -> nn.Module:
    """A copy of the registered module with :func:`_reset` called on every module that has it, outermost first
    (under the caller's seeded RNG: :func:`tda_clean.models.factory.build_model`)."""
    model = copy.deepcopy(_registered(key))
    for module in model.modules():
        if callable(_reset(module)):
            _reset(module)()
    return model
