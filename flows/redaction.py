"""Prefect's own log lines without credentials: when a task or the flow fails, Prefect logs the exception, its
traceback and the final state itself (to the console and to its API), outside the library's redaction.

:func:`redact_prefect_logs` puts :class:`tda_clean.redact.RedactingFilter` on the handlers of the root logger and of
every ``prefect`` logger; the flow module calls it when imported (Prefect's logging is configured by then) and
again when a flow run starts.
"""
from __future__ import annotations

import logging

from tda_clean.redact import RedactingFilter


def redact_prefect_logs() -> None:
    """Add a :class:`RedactingFilter` to each handler of the root logger and the ``prefect*`` loggers that has none
    (idempotent; handlers added later are not covered until the next call)."""
    loggers = [logging.getLogger()] + [logger for name, logger in list(logging.root.manager.loggerDict.items())
                                       if isinstance(logger, logging.Logger) and name.split(".")[0] == "prefect"]
    for handler in {id(h): h for logger in loggers for h in logger.handlers}.values():
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter(handler.formatter))
