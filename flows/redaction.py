"""Prefect's own log lines without credentials: when a task or the flow fails, Prefect logs the exception, its
traceback and the final state itself (to the console and to its API), outside the library's redaction.

:func:`redact_prefect_logs` puts :class:`tda_clean.redact.RedactingFilter` on the handlers of the root logger and of
every ``prefect`` logger; the flow module calls it when imported (Prefect's logging is configured by then) and
again when a flow run starts. :func:`redacting` wraps a stage (and the flow's body) so that the exception Prefect
turns into the failed run's state message, which it stores in its API, carries redacted arguments too.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable

from tda_clean.redact import RedactingFilter, redact


def redact_prefect_logs() -> None:
    """Add a :class:`RedactingFilter` to each handler of the root logger and the ``prefect*`` loggers that has none
    (idempotent; handlers added later are not covered until the next call)."""
    loggers = [logging.getLogger()] + [logger for name, logger in list(logging.root.manager.loggerDict.items())
                                       if isinstance(logger, logging.Logger) and name.split(".")[0] == "prefect"]
    for handler in {id(h): h for logger in loggers for h in logger.handlers}.values():
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter(handler.formatter))


def redact_exception(exc: BaseException) -> BaseException:
    """``exc`` with the string arguments of it and of its causes / contexts redacted in place (its type kept, so
    exit codes and retry rules still see it); returns ``exc``. An exception whose text does not come from its
    ``args`` (e.g. ``OSError``'s file name) keeps that text."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.args = tuple(redact(a) if isinstance(a, str) else a for a in current.args)
        current = current.__cause__ or current.__context__
    return exc


def redacting(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` whose exceptions leave with :func:`redact_exception` applied (same signature and name)."""
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:
            raise redact_exception(exc)

    return run
