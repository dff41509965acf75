"""Eager optimizer calls without importing ``torch._dynamo``.

``torch.optim.Optimizer`` wraps ``add_param_group``, ``zero_grad``, ``state_dict`` and ``load_state_dict`` in
``torch._disable_dynamo``, whose wrapper imports ``torch._dynamo`` (the compiler stack, the largest import of a
run that never compiles) on its first call, only to mark the method "not to be compiled" and call it. While
``torch._dynamo`` has not been imported nothing in the process can be compiling, so calling the method itself is
the same call. :func:`eager_optimizer` fills the wrapper's own cache with the plain method for the duration of a
block (only in that state) and empties it afterwards, so a later ``torch.compile`` finds the wrappers as torch
left them. Optimizers whose ``step`` imports ``torch._dynamo`` itself (Adam: ``_use_grad_for_differentiable``)
still import it; L-BFGS does not.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

_CACHE = "__dynamo_disable"  # the attribute torch._compile._disable_dynamo caches the disabled function under
_METHODS = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")


def _wrapped_methods() -> list:
    """The plain functions behind ``torch._disable_dynamo`` on ``Optimizer``'s methods (empty if torch changed)."""
    import torch
    from torch._compile import _disable_dynamo

    inner_code = _disable_dynamo(lambda: None).__code__
    found = []
    for name in _METHODS:
        method = getattr(torch.optim.Optimizer, name, None)
        fn = getattr(method, "__wrapped__", None)
        if getattr(method, "__code__", None) is inner_code and callable(fn):
            found.append(fn)
    return found


@contextmanager
def eager_optimizer() -> Iterator[None]:
    """Run a block of ``torch.optim`` calls without importing ``torch._dynamo`` when it is not imported yet."""
    if "torch._dynamo" in sys.modules:
        yield
        return
    filled = [fn for fn in _wrapped_methods() if not hasattr(fn, _CACHE)]
    for fn in filled:
        setattr(fn, _CACHE, fn)
    try:
        yield
    finally:
        for fn in filled:
            if getattr(fn, _CACHE, None) is fn:
                delattr(fn, _CACHE)
