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


@pytest.mark.usefixtures("prefect_harness")
def test_a_failing_flow_run_prints_and_stores_no_credentials(tmp_path):
    """End to end, in a subprocess (Prefect's console handler is process-global): a ``tda-clean run`` whose load
    stage fails with a password in its message, reporting to this session's Prefect API. Prefect's own lines
    (the task's and the flow's failure, with traceback) on the console and in the API, the failed runs' state
    messages and the command's own error line show the redacted URI only."""
    import subprocess
    import sys

    import yaml
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_API_URL

    from tests.commands import command_env
    from tests.tables import table_config, write_table

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(table_config(write_table(tmp_path / "t.csv"))))  # tracking off
    script = (
        "import sys, tda_clean.pipeline as p\n"
        "from tda_clean.errors import InputError\n"
        "def load_bundle(config):  # a data source that names itself, password included, when it refuses\n"
        f"    raise InputError('data.path: {SOURCE} answered 403 Forbidden')\n"
        "p.load_bundle = load_bundle\n"
        "from flows.cli import main\n"
        f"sys.exit(main(['run', {str(config)!r}, '--output', {str(tmp_path / 'run')!r}]))\n")
    env = command_env({**command_env(), "PREFECT_API_URL": PREFECT_API_URL.value()})
    (tmp_path / "run_failing.py").write_text(script)  # a file: tracebacks quote its source line, password included
    proc = subprocess.run([sys.executable, str(tmp_path / "run_failing.py")], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    printed = proc.stdout + proc.stderr
    assert proc.returncode == 2, printed[-3000:]
    assert "Encountered exception during execution: InputError('data.path: https://alice:***@" in printed, printed
    assert "Traceback (most recent call last)" in printed and "raise InputError('data.path: https://alice:***@" in printed
    assert printed.rstrip().endswith("tda-clean: error: data.path: https://alice:***@data.example/table.csv "
                                     "answered 403 Forbidden"), printed[-500:]
    with get_client(sync_client=True) as client:
        runs = [r for r in client.read_flow_runs() if r.parameters.get("output") == str(tmp_path / "run")]
        assert len(runs) == 1, [r.parameters for r in client.read_flow_runs()]
        flow_run = runs[0]
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])))
        task_runs = [t for t in client.read_task_runs() if t.flow_run_id == flow_run.id]
    stored = "\n".join(log.message for log in logs)
    assert "Task run encountered an exception InputError: data.path: https://alice:***@data.example" in stored, stored
    assert "\ntda_clean.errors.InputError: data.path: https://alice:***@" in stored, stored
    messages = [flow_run.state.message] + [t.state.message for t in task_runs]
    assert any("alice:***@data.example" in (m or "") for m in messages), messages
    for text in (printed, stored, *map(str, messages)):
        assert SECRET not in text
