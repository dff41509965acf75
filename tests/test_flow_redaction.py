"""Prefect's own log lines and state messages carry no credentials (flows/redaction.py): the filter on its log
handlers redacts message and traceback; a stage's exception leaves redacted, type kept."""
from __future__ import annotations

import logging

import pytest

from tda_clean.errors import InputError
from tda_clean.redact import RedactingFilter

SECRET = "s3cret-Pa55"
SOURCE = f"https://alice:{SECRET}@data.example/table.csv"


def test_redacting_filter_redacts_message_arguments_and_traceback():
    try:
        raise RuntimeError(f"GET {SOURCE}: 403")
    except RuntimeError:
        record = logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1, "failed: %r", (SOURCE,),
                                   exc_info=__import__("sys").exc_info())
    assert RedactingFilter().filter(record)
    text = logging.Formatter().format(record)
    assert SECRET not in text and "alice:***@data.example" in text and "RuntimeError: GET https://alice:***@" in text


def test_stage_exceptions_leave_redacted_with_their_type():
    """What Prefect turns into a failed run's state message: the exception a stage raises, through
    ``flows.redaction.redacting``: its arguments (and its cause's) redacted, its type kept (exit codes)."""
    from flows.redaction import redacting

    def stage():
        try:
            raise OSError(f"connect {SOURCE}")
        except OSError as exc:
            raise InputError(f"data.path: {SOURCE} answered 403 Forbidden") from exc

    with pytest.raises(InputError) as info:
        redacting(stage)()
    assert SECRET not in str(info.value) and "alice:***@data.example" in str(info.value)
    assert SECRET not in str(info.value.__cause__)
