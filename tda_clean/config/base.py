"""The base of every config model: frozen (hashable) and strict (unknown keys rejected)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# The error type of a custom validation error whose message starts with the key it concerns (``method: ...``):
# reported as ``<path>.<key>: ...``, like a model validator's ``ValueError("key: ...")``.
KEYED_ERROR = "keyed_value_error"
