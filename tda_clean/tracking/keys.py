"""Metric/param key mapping for MLflow, and value truncation shared by all trackers.

MLflow 3.17.2 accepts only ``[A-Za-z0-9_-. /]`` (``\\w`` is Unicode-aware) plus ``:`` (not on
Windows) in metric, param and tag keys, at most 250 characters; ``=`` and ``&`` are rejected
("Names may only contain alphanumerics, underscores, ..."). The report's metric names use them
(``accuracy_sex=Female``, ``accuracy_sex=Female&race=White``), so :func:`mlflow_key` maps

==================  =======================  =====================================
report name         MLflow key               rule
==================  =======================  =====================================
``a_sex=Female``    ``a_sex.Female``         ``=`` -> ``.``  (reads "sex dot Female")
``x=1&y=2``         ``x.1__y.2``             ``&`` -> ``__`` (double underscore)
``income=>50K``     ``income._50K``          any other rejected character -> ``_``
==================  =======================  =====================================

Names that are already valid (``accuracy``, ``model.lr``, ``mlflow.parentRunId``) are unchanged,
``:`` and ``/`` are also replaced (portable to Windows; ``/`` would let names resolve as paths),
a leading ``.`` gets a ``_`` prefix, and keys longer than 250 characters are cut and suffixed with
8 hex digits of their SHA-1. The mapping is injective in practice: two distinct names collide only
if one already contains the replacement spelling of the other (``a=b`` vs ``a.b``).
:func:`mlflow_keys` raises ``ValueError`` on such a collision inside one batch rather than letting
one value overwrite another silently. Only the MLflow tracker applies the mapping; ``report.json``
and the in-memory tracker keep the original names.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import TypeVar

#: MLflow's limits (``mlflow.utils.validation`` in 3.17.2).
MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000

_REJECTED = re.compile(r"[^\w.\- ]")
_V = TypeVar("_V")


def mlflow_key(name: str) -> str:
    """Map a report metric/param name to a key MLflow accepts (see the module docstring)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"metric/param name must be a non-empty string, got {name!r}")
    key = _REJECTED.sub("_", name.replace("=", ".").replace("&", "__"))
    if key.startswith("."):
        key = "_" + key
    if len(key) > MAX_KEY_LENGTH:
        digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:8]
        key = f"{key[: MAX_KEY_LENGTH - 9]}-{digest}"
    return key


def mlflow_keys(items: Mapping[str, _V]) -> dict[str, _V]:
    """Apply :func:`mlflow_key` to every key; ``ValueError`` if two names map to the same key."""
    out: dict[str, _V] = {}
    origin: dict[str, str] = {}
    for name, value in items.items():
        key = mlflow_key(name)
        if key in origin and origin[key] != name:
            raise ValueError(f"names {origin[key]!r} and {name!r} both map to MLflow key {key!r}")
        origin[key] = name
        out[key] = value
    return out


def truncate(value: object, limit: int) -> str:
    """``str(value)``, cut to ``limit`` characters with a ``...`` marker when longer."""
    text = str(value)
    if len(text) <= limit:
        return text
    marker = "...[truncated]"
    return text[: limit - len(marker)] + marker
