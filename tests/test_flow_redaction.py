"""Prefect's own log lines carry no credentials: a flow run whose stage fails with a password in its error
message is logged by Prefect (task and flow failure, traceback, final state) to the console and to its API;
both show the redacted URI only (flows/redaction.py)."""
from __future__ import annotations

import logging

import pytest

from tda_clean.config import parse_config
from tda_clean.errors import InputError
from tda_clean.redact import RedactingFilter
from tests.tables import table_config, write_table

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


@pytest.mark.usefixtures("prefect_harness")
def test_a_failing_flow_run_logs_no_credentials(tmp_path, monkeypatch, capfd):
    import tda_clean.pipeline
    from flows.clean import clean
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    def load_bundle(config):  # a data source that names itself, password included, when it refuses
        raise InputError(f"data.path: {SOURCE} answered 403 Forbidden")

    monkeypatch.setattr(tda_clean.pipeline, "load_bundle", load_bundle)
    # Prefect's console handler writes to the stderr of whichever test first configured Prefect's logging (an
    # earlier test's capture, closed by now): configure it afresh on this test's stderr
    from prefect.logging.configuration import setup_logging

    setup_logging(incremental=False)
    config = parse_config(table_config(write_table(tmp_path / "t.csv")))  # tracking off: nothing else to reach
    state = clean(config, output=str(tmp_path / "run"), return_state=True)
    assert state.is_failed()
    for handler in {h for h in logging.getLogger("prefect.flow_runs").handlers if isinstance(h, APILogHandler)}:
        handler.flush()  # the API's log worker sends in batches: send what is queued now
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    stored = "\n".join(log.message for log in logs)
    printed = "".join(capfd.readouterr())
    for text in (stored, printed):
        # Prefect's lines are there: the task's and the flow's failure, with the traceback, the URI redacted
        assert "Task run encountered an exception InputError: data.path: https://alice:***@data.example" in text, text
        assert "Encountered exception during execution: InputError('data.path: https://alice:***@" in text, text
        assert "Traceback (most recent call last)" in text and "\ntda_clean.errors.InputError: data.path: https://alice:***@" in text, text
        assert SECRET not in text
    # the failed runs' state messages, which Prefect stores in its API, too
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
        task_runs = client.read_task_runs()
    messages = [flow_run.state.message] + [t.state.message for t in task_runs if t.flow_run_id == flow_run.id]
    assert any("alice:***@data.example" in (m or "") for m in messages), messages
    assert not any(SECRET in (m or "") for m in messages), messages
