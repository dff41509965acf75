"""The parameter subset influence is computed over, as one flat vector of length ``p``.

A :class:`ParamSpace` fixes an ordered list of named parameters (``"all"``; ``"head"`` = the module ``head`` when the
model has one, else its last ``nn.Linear`` in ``model.modules()`` order; or module names / glob patterns over
``named_modules()`` such as ``"layer4.*"``, each selecting every parameter under the matched modules) and converts
between the flat ``(p,)`` vector and the ``{name: tensor}`` dict that ``torch.func.functional_call`` takes.
Parameters outside the subset stay frozen at their current values. With ``layers_only`` (K-FAC / EK-FAC) the
parameters of other layers than ``nn.Linear`` and ungrouped ``nn.Conv2d`` (BatchNorm, LayerNorm, Embedding, ...)
are frozen too; :meth:`ParamSpace.describe` lists the modules used and frozen.
Flat order: parameters in ``model.named_parameters()`` order, each flattened row-major.
"""
from __future__ import annotations

import copy
import hashlib
from fnmatch import fnmatchcase
from typing import Iterator

import torch
from torch import nn
from torch.func import functional_call

from tda_clean.errors import InputError
from tda_clean.config.influence import GradientSettings, ParamSubset


class ParamSpace:
    """Ordered named parameters of ``model`` selected by ``subset``.

    Attributes: ``names`` (tuple of parameter names), ``shapes``, ``sizes``, ``p`` (total count),
    ``modules`` (module name -> module for the modules that own the selected parameters).
    """

    def __init__(self, model: nn.Module, subset: ParamSubset = "all", layers_only: bool = False):
        self.model = model
        self.subset = subset
        self.layers_only = layers_only
        named = dict(model.named_parameters())
        modules = dict(model.named_modules())
        if subset == "all":
            prefixes: tuple[str, ...] = ("",)
        elif subset == "head":
            name = "head" if isinstance(getattr(model, "head", None), nn.Module) else last_linear(model)[0]
            prefixes = (f"{name}." if name else "",)
        else:
            chosen = []
            for pattern in (subset,) if isinstance(subset, str) else subset:
                hits = [n for n in modules if n and fnmatchcase(n, pattern)]
                if not hits:
                    raise InputError(f"params: module {pattern!r} not found in {type(model).__name__} (modules with "
                                     f"parameters: {', '.join(_parameterised(model)) or 'none'})")
                chosen += hits
            prefixes = tuple(f"{name}." for name in chosen)
        self.names = tuple(n for n, p in named.items() if p.requires_grad and any(n.startswith(pre) for pre in prefixes))
        if layers_only:
            kept = tuple(n for n in self.names if _kfac_layer(modules[_owner(n)]))
            for pattern in (subset,) if isinstance(subset, str) and subset not in ("all", "head") else ():
                if pattern in modules and not kept:
                    raise InputError(f"params: module {pattern!r} ({type(modules[pattern]).__name__}) has no K-FAC "
                                     "curvature (nn.Linear and ungrouped nn.Conv2d only); use solver exact, cg or "
                                     "lissa for it, or other modules")
            self.names = kept
        if not self.names:
            raise InputError(f"params={subset!r}: selects no trainable parameters of {type(model).__name__}")
        self.shapes = tuple(tuple(named[n].shape) for n in self.names)
        self.sizes = tuple(named[n].numel() for n in self.names)
        self.p = int(sum(self.sizes))

    # ------------------------------------------------------------------ conversions
    def tensors(self) -> list[torch.Tensor]:
        """The live parameter tensors of the subset (leaves of the model)."""
        named = dict(self.model.named_parameters())
        return [named[n] for n in self.names]

    def flat(self) -> torch.Tensor:
        """Current values as a detached ``(p,)`` vector."""
        return torch.cat([t.detach().reshape(-1) for t in self.tensors()])

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(p,)`` vector -> ``{name: tensor}`` views (works under vmap/grad transforms)."""
        parts = torch.split(theta, list(self.sizes))
        return {n: part.reshape(shape) for n, part, shape in zip(self.names, parts, self.shapes)}

    def flatten_dict(self, tensors: dict[str, torch.Tensor], batch_dims: int = 0) -> torch.Tensor:
        """``{name: (*batch, *shape)}`` -> ``(*batch, p)``."""
        return torch.cat([tensors[n].reshape(*tensors[n].shape[:batch_dims], -1) for n in self.names], dim=-1)

    def forward(self, theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """Logits ``(n, C)`` of the model with the subset set to ``theta`` (p,); other parameters unchanged."""
        return functional_call(self.model, self.unflatten(theta), (X,), strict=False)

    def offsets(self) -> dict[str, slice]:
        """Parameter name -> its slice of the flat (p,) vector, in order."""
        out, start = {}, 0
        for name, size in zip(self.names, self.sizes):
            out[name] = slice(start, start + size)
            start += size
        return out

    def owners(self) -> dict[str, nn.Module]:
        """Module name -> module, for every module that directly owns a selected parameter (in order)."""
        modules = dict(self.model.named_modules())
        out: dict[str, nn.Module] = {}
        for name in self.names:
            out.setdefault(_owner(name), modules[_owner(name)])
        return out

    def describe(self) -> dict[str, list[str]]:
        """``{"used": [...], "frozen": [...]}``: names of the modules owning trainable parameters, in the subset
        or left out of it (``"(root)"`` for the model itself)."""
        used = set(self.owners())
        out: dict[str, list[str]] = {"used": [], "frozen": []}
        for name in _parameterised(self.model):
            out["used" if name in used else "frozen"].append(name or "(root)")
        return out

    def __repr__(self) -> str:
        return f"ParamSpace({self.subset!r}, p={self.p})"


def _owner(param_name: str) -> str:
    return param_name.rsplit(".", 1)[0] if "." in param_name else ""


def _parameterised(model: nn.Module) -> list[str]:
    """Names of the modules that directly own a trainable parameter, in ``named_modules()`` order."""
    return [n for n, m in model.named_modules() if any(p.requires_grad for p in m.parameters(recurse=False))]


def _kfac_layer(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1
                                              and not isinstance(module.padding, str))


def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """``(name, module)`` of the last ``nn.Linear`` in ``model.named_modules()`` order (the default ``head``)."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise InputError(f"params='head': {type(model).__name__} has no nn.Linear layer; name its modules in params "
                         f"(modules with parameters: {', '.join(_parameterised(model)) or 'none'})")
    return found[-1]


def prepare_model(model: nn.Module, settings: GradientSettings) -> nn.Module:
    """The model to differentiate: itself, or a cast/moved deep copy when settings ask for another dtype/device.

    The caller's model is never modified. The returned model is in eval mode.
    """
    from tda_clean.models.trainer import resolve_device

    param = next(model.parameters())
    dtype = param.dtype if settings.dtype == "model" else {"float32": torch.float32, "float64": torch.float64}[settings.dtype]
    device = param.device if settings.device == "model" else resolve_device(settings.device)
    if dtype != param.dtype or device != param.device or model.training:
        model = copy.deepcopy(model).to(device=device, dtype=dtype)
        model.eval()
    return model


def model_fingerprint(model: nn.Module) -> str:
    """Hash of the model class, parameter names, shapes and values (16 hex digits)."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, value in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(value.shape)).encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def batches(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of ``range(n)`` of at most ``size`` rows."""
    for start in range(0, n, max(1, int(size))):
        yield slice(start, min(n, start + size))
