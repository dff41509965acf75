"""Test objectives ``f(theta)`` for cross-loss influence (docs/methods.md#cross-loss-influence).

Influence of removing training row i on f (sign convention used everywhere in tda-clean: POSITIVE = removing
the row INCREASES f):

    I_f(i) = (1/n) grad f(theta*)^T (H + damping I)^-1 g_i

Only the query gradient comes from f; H and g_i come from the training loss. An objective yields ``m`` query
vectors (``query_gradients`` -> (m, p)) and ``m`` values (``values(model)`` -> (m,)):

* per-row objectives (:class:`PerSampleLoss`, :class:`Margin`) give one vector per query row, or their mean with
  ``reduce="mean"`` (:class:`MeanLoss` is the mean loss on a query set);
* scalar objectives (:class:`WorstGroupLoss`, :class:`GroupLossDifference`, :class:`DemographicParityGap`,
  :class:`EqualizedOddsGap`, :class:`CallableObjective`) give one.

Non-smooth parts (max over groups, absolute values) are differentiated at theta* through the active branch.
Query arrays: ``X`` (m, *feature_shape), labels ``y`` (m,) int, ``groups`` (m,) hashable group keys.
An objective whose value does not depend on the selected parameters raises :class:`InputError`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, ClassVar, Literal, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from tda_clean.errors import InputError
from tda_clean.influence.gradients import (as_tensors, check_finite_rows, cross_entropy_row, iter_per_sample_grads,
                                           per_sample_grads)
from tda_clean.influence.params import ParamSpace


class Objective(ABC):
    """A differentiable function of the model on query data (see module docstring)."""

    name: ClassVar[str] = "objective"

    @abstractmethod
    def query_gradients(self, space: ParamSpace, memory_mb: float = 256.0) -> torch.Tensor:
        """``(m, p)`` gradients of the objective's ``m`` outputs w.r.t. the subset, at the current parameters."""

    @abstractmethod
    def values(self, model: nn.Module) -> np.ndarray:
        """``(m,)`` float64 values at the model's current parameters."""


# -------------------------------------------------------------------------------------- per-row objectives
class PerSampleObjective(Objective):
    """Base for objectives defined row by row: ``row_value(logits (C,), target ()) -> scalar``."""

    def __init__(self, X, targets, reduce: Literal["none", "mean"] = "none"):
        if reduce not in ("none", "mean"):
            raise InputError(f"{self.name}.reduce: {reduce!r} is not one of none, mean")
        if len(X) == 0:
            raise InputError(f"{self.name}: the query set is empty")
        if len(targets) != len(X):
            raise InputError(f"{self.name}: {len(X)} query rows but {len(targets)} targets")
        self.X, self.targets, self.reduce = X, np.asarray(targets), reduce

    @staticmethod
    @abstractmethod
    def row_value(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ...

    def query_gradients(self, space: ParamSpace, memory_mb: float = 256.0) -> torch.Tensor:
        """(m, p) per-row gradients of the outputs; with ``reduce="mean"`` (1, p) their mean, summed block by block
        (one block of ``memory_mb`` held at a time, never the (n_query, p) matrix)."""
        if self.reduce != "mean":
            G = per_sample_grads(space, self.X, self.targets, loss=self.row_value, memory_mb=memory_mb,
                                 check_finite=False)
            check_finite_rows(G, what=f"{self.name} query gradients")
            return G
        total = None
        for rows, G in iter_per_sample_grads(space, self.X, self.targets, loss=self.row_value, memory_mb=memory_mb,
                                             check_finite=False):
            check_finite_rows(G, what=f"{self.name} query gradients", offset=rows.start)
            part = G.sum(0, keepdim=True)
            total = part if total is None else total + part
        return total / len(self.X)

    def values(self, model: nn.Module) -> np.ndarray:
        X, t = as_tensors(model, self.X, self.targets)
        with torch.no_grad():
            v = torch.vmap(self.row_value)(model(X), t).double().cpu().numpy()
        return v.mean(keepdims=True) if self.reduce == "mean" else v


class PerSampleLoss(PerSampleObjective):
    """Cross-entropy of each query row: m = n_query outputs (or their mean with ``reduce="mean"``)."""

    name = "per_sample_loss"

    def __init__(self, X, y, reduce: Literal["none", "mean"] = "none"):
        super().__init__(X, y, reduce)

    row_value = staticmethod(cross_entropy_row)


class MeanLoss(PerSampleLoss):
    """Mean cross-entropy on a query set (one output)."""

    name = "mean_loss"

    def __init__(self, X, y):
        super().__init__(X, y, reduce="mean")


class Margin(PerSampleObjective):
    """Smooth margin of a target class: ``logit_c - logsumexp_{k != c} logit_k`` per query row (TRAK's output).

    ``target``: one class id for all rows or an (m,) array of class ids.
    """

    name = "margin"

    def __init__(self, X, target: int | Sequence[int], reduce: Literal["none", "mean"] = "none"):
        targets = np.full(len(X), int(target)) if np.isscalar(target) else np.asarray(target)
        super().__init__(X, targets, reduce)

    @staticmethod
    def row_value(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        mask = torch.arange(logits.shape[-1], device=logits.device) == target
        other = torch.logsumexp(logits.masked_fill(mask, float("-inf")), dim=-1)
        return (logits * mask).sum(-1) - other


# ----------------------------------------------------------------------------------------- scalar objectives
class ScalarObjective(Objective):
    """Base for objectives with one output: implement ``value(model) -> scalar tensor`` (differentiable)."""

    @abstractmethod
    def value(self, model: nn.Module) -> torch.Tensor:
        ...

    def query_gradients(self, space: ParamSpace, memory_mb: float = 256.0) -> torch.Tensor:
        params = space.tensors()
        with torch.enable_grad():
            out = self.value(space.model)
            if not isinstance(out, torch.Tensor) or out.numel() != 1:
                raise InputError(f"objective {self.name!r} must return a scalar tensor, got "
                                 f"{type(out).__name__}{'' if not isinstance(out, torch.Tensor) else tuple(out.shape)}")
            out = out.reshape(())
            grads = None
            if out.requires_grad:
                grads = torch.autograd.grad(out, params, allow_unused=True)
        if grads is None or all(g is None for g in grads):
            raise InputError(f"objective {self.name!r} does not depend on the model parameters ({space.subset!r}); "
                             "it must be computed from the model's outputs")
        flat = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])[None]
        check_finite_rows(flat, what=f"{self.name} query gradients")
        if not bool(flat.abs().max() > 0):
            raise InputError(f"objective {self.name!r} has an identically zero gradient w.r.t. the parameters "
                             f"({space.subset!r}): it does not depend on them at the trained model")
        return flat.detach()

    def values(self, model: nn.Module) -> np.ndarray:
        with torch.no_grad():
            return np.array([float(self.value(model))])


def _group_index(groups, n: int, owner: str) -> tuple[np.ndarray, list]:
    g = np.asarray(groups, dtype=object).reshape(-1)
    if len(g) != n:
        raise InputError(f"{owner}: {n} query rows but {len(g)} group values")
    keys = sorted(set(g.tolist()), key=str)
    if len(keys) < 2:
        raise InputError(f"{owner}: needs at least two groups, found {keys}")
    return g, keys


class _GroupObjective(ScalarObjective):
    def __init__(self, X, y, groups):
        if len(X) == 0:
            raise InputError(f"{self.name}: the query set is empty")
        self.X, self.y = X, None if y is None else np.asarray(y)
        self.groups, self.keys = _group_index(groups, len(X), self.name)
        self.masks = {k: self.groups == k for k in self.keys}

    def _mask(self, key, device) -> torch.Tensor:
        if key not in self.masks:
            raise InputError(f"{self.name}: group {key!r} not in the query groups {self.keys}")
        return torch.as_tensor(self.masks[key], device=device)

    def _group_losses(self, model: nn.Module) -> dict:
        X, y = as_tensors(model, self.X, self.y)
        losses = F.cross_entropy(model(X), y, reduction="none")
        return {k: losses[self._mask(k, X.device)].mean() for k in self.keys}

    def _positive_prob(self, model: nn.Module, positive: int) -> torch.Tensor:
        X, _ = as_tensors(model, self.X)
        return torch.softmax(model(X), dim=1)[:, positive]


class WorstGroupLoss(_GroupObjective):
    """Mean cross-entropy of the group with the highest loss at theta* (``max_g L_g``)."""

    name = "worst_group_loss"

    def value(self, model: nn.Module) -> torch.Tensor:
        return torch.stack(list(self._group_losses(model).values())).max()


class GroupLossDifference(_GroupObjective):
    """``L_a - L_b``: mean loss of group ``a`` minus that of group ``b``."""

    name = "group_loss_difference"

    def __init__(self, X, y, groups, a, b):
        super().__init__(X, y, groups)
        self.a, self.b = a, b
        self._mask(a, "cpu"), self._mask(b, "cpu")

    def value(self, model: nn.Module) -> torch.Tensor:
        losses = self._group_losses(model)
        return losses[self.a] - losses[self.b]


class DemographicParityGap(_GroupObjective):
    """Smooth demographic-parity gap: spread (max - min) over groups of the mean predicted probability of class
    ``positive`` (``|mean p(a) - mean p(b)|`` for two groups)."""

    name = "demographic_parity_gap"

    def __init__(self, X, groups, positive: int = 1):
        super().__init__(X, None, groups)
        self.positive = positive

    def value(self, model: nn.Module) -> torch.Tensor:
        prob = self._positive_prob(model, self.positive)
        rates = torch.stack([prob[self._mask(k, prob.device)].mean() for k in self.keys])
        return rates.max() - rates.min()


class EqualizedOddsGap(_GroupObjective):
    """Smooth equalized-odds gap: max over true labels y of the spread over groups of the mean predicted
    probability of ``positive`` among rows with label y (smooth TPR / FPR differences)."""

    name = "equalized_odds_gap"

    def __init__(self, X, y, groups, positive: int = 1):
        super().__init__(X, y, groups)
        self.positive = positive

    def value(self, model: nn.Module) -> torch.Tensor:
        prob = self._positive_prob(model, self.positive)
        gaps = []
        for label in np.unique(self.y):
            rates = [prob[torch.as_tensor(self.masks[k] & (self.y == label), device=prob.device)].mean()
                     for k in self.keys if (self.masks[k] & (self.y == label)).any()]
            if len(rates) >= 2:
                r = torch.stack(rates)
                gaps.append(r.max() - r.min())
        if not gaps:
            raise InputError(f"{self.name}: no label value has rows in two or more groups")
        return torch.stack(gaps).max()


class CallableObjective(ScalarObjective):
    """A user function, autograd-differentiable, returning a scalar tensor (Silva et al.'s cross-loss influence).

    Without ``X``: ``fn(model)``. With query inputs ``X`` (m, *feature_shape): ``fn(outputs)`` on the model's
    outputs on ``X`` — the logits (m, n_classes), or, with ``module`` (a name from ``model.named_modules()``),
    that module's output captured by a forward hook, e.g. a penultimate embedding (m, d). The Hessian and the
    training gradients still come from the training loss; only the query gradient comes from ``fn``.
    """

    def __init__(self, fn: Callable, name: str = "callable", X=None, module: str | None = None):
        if not callable(fn):
            raise InputError(f"objective: expected a callable fn(model or outputs) -> scalar tensor, got "
                             f"{type(fn).__name__}")
        if module is not None and X is None:
            raise InputError(f"objective {name!r}: module={module!r} needs the query inputs X")
        self.fn, self.name, self.X, self.module = fn, name, X, module

    def value(self, model: nn.Module) -> torch.Tensor:
        if self.X is None:
            return self.fn(model)
        X, _ = as_tensors(model, self.X)
        if self.module is None:
            return self.fn(model(X))
        modules = dict(model.named_modules())
        if self.module not in modules:
            raise InputError(f"objective {self.name!r}: the model has no module named {self.module!r} (modules: "
                             f"{', '.join(n for n in modules if n) or 'none'})")
        captured: list[torch.Tensor] = []
        handle = modules[self.module].register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            model(X)
        finally:
            handle.remove()
        return self.fn(captured[0])
