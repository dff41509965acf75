"""Credentials out of everything printed or stored: the one function every URI passes through.

``redact("http://user:pw@host:5000/x?token=abc")`` -> ``"http://user:***@host:5000/x?token=***"``. It works on
free text as well (error messages, config values, Markdown): in every ``scheme://`` URI inside it, the password of
the userinfo (or the whole userinfo when it has no ``user:`` part, e.g. a token) and the values of query
parameters named like a secret (``password``, ``token``, ``secret``, ``key``, ``sig``, ...) become ``***``.
Text without credentials comes back unchanged.

:class:`RedactingFilter` applies it to log records (message, traceback, stack) as a handler formats them.
"""
from __future__ import annotations

import logging
import re

MASK = "***"
# scheme://userinfo@ — the userinfo is everything up to the last "@" before the path (a raw "@" in a password too)
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/\s?#'\"<>]*)@")
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&;](?:[\w.\-]*(?:password|passwd|pwd|secret|token|apikey|api_key|access_key|key|sig|signature|"
    r"credential|auth)[\w.\-]*)=)(?P<value>[^&;#\s'\"]*)", re.IGNORECASE)


def _userinfo(match: re.Match[str]) -> str:
    user, sep, _ = match["userinfo"].partition(":")
    return f"{match['scheme']}{user}:{MASK}@" if sep and user else f"{match['scheme']}{MASK}@"


def redact(text: object) -> str:
    """``str(text)`` with the credentials of every URI in it replaced by ``***`` (see the module docstring)."""
    out = _USERINFO.sub(_userinfo, str(text))
    return _SECRET_QUERY.sub(lambda m: m["key"] + MASK, out) if "://" in out else out


class RedactingFilter(logging.Filter):
    """A filter for a log *handler*: the record's message, formatted traceback and stack pass through
    :func:`redact`; it drops nothing. On a handler, not a logger: a logger's filters skip records that propagate
    to it from its children. The traceback is formatted here (and cached on the record, as
    :meth:`logging.Formatter.format` does) with ``formatter``, else a plain :class:`logging.Formatter`."""

    def __init__(self, formatter: logging.Formatter | None = None) -> None:
        super().__init__()
        self.formatter = formatter or logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if redact(message) != message:
            record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
