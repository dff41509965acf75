"""Exceptions with a meaning for the command line: each maps to one exit code."""
from __future__ import annotations


class TdaCleanError(Exception):
    """Base class; ``exit_code`` is what ``tda-clean`` returns when this escapes a command."""

    exit_code = 1


class InputError(TdaCleanError, ValueError):
    """Bad user input (config, data, model): the message names the key, column or path. Exit code 2."""

    exit_code = 2



def one_line(exc: BaseException) -> str:
    """A parse exception in one line: YAML's problem and position, else the first line of its message."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    if mark is not None and problem:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
