"""The parameter subset influence is computed over, as one flat vector of length ``p``.

A :class:`ParamSpace` fixes an ordered list of named parameters (``"all"``, ``"head"`` = the last Linear, or
named modules) and converts between the flat ``(p,)`` vector and the ``{name: tensor}`` dict that
``torch.func.functional_call`` takes. Parameters outside the subset stay frozen at their current values.
Flat order: parameters in ``model.named_parameters()`` order, each flattened row-major.
"""
from __future__ import annotations

import copy
import hashlib
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

    def __init__(self, model: nn.Module, subset: ParamSubset = "all"):
        self.model = model
        self.subset = subset
        named = dict(model.named_parameters())
        if subset == "all":
            prefixes: tuple[str, ...] = ("",)
        elif subset == "head":
            if not isinstance(getattr(model, "head", None), nn.Module):
                raise InputError(f"params='head': {type(model).__name__} has no module named 'head'")
            prefixes = ("head.",)
        else:
            modules = dict(model.named_modules())
            for name in subset:
                if name not in modules or not name:
                    available = ", ".join(n for n, m in modules.items() if n and any(True for _ in m.parameters(recurse=False)))
                    raise InputError(f"params: module {name!r} not found in {type(model).__name__} (modules with parameters: {available})")
            prefixes = tuple(f"{name}." for name in subset)
        self.names = tuple(n for n, p in named.items() if p.requires_grad and any(n.startswith(pre) for pre in prefixes))
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

    def owners(self) -> dict[str, nn.Module]:
        """Module name -> module, for every module that directly owns a selected parameter (in order)."""
        modules = dict(self.model.named_modules())
        out: dict[str, nn.Module] = {}
        for name in self.names:
            owner = name.rsplit(".", 1)[0] if "." in name else ""
            out.setdefault(owner, modules[owner])
        return out

    def __repr__(self) -> str:
        return f"ParamSpace({self.subset!r}, p={self.p})"


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
