"""The base of every config model: frozen (hashable) and strict (unknown keys rejected)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
