"""Exceptions with a meaning for the command line: each maps to one exit code."""
from __future__ import annotations


class TdaCleanError(Exception):
    """Base class; ``exit_code`` is what ``tda-clean`` returns when this escapes a command."""

    exit_code = 1


class InputError(TdaCleanError, ValueError):
    """Bad user input (config, data, model): the message names the key, column or path. Exit code 2."""

    exit_code = 2

