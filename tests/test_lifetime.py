"""``tda-clean run`` as a process: SIGINT (a terminal's Ctrl-C, sent to the whole process group) and SIGTERM end
a run under both engines with one line and exit 130 / 143, the MLflow run marked FAILED, no report written and no
server left running; a SIGKILLed run takes its temporary Prefect server with it; an unreachable PREFECT_API_URL
is one line and exit 2 before anything runs."""
from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
import yaml

from tests.commands import command_env, tda_clean
from tests.conftest import live_descendants
from tests.integration.servers import base_env, free_port
from tests.tables import table_config, write_table

linux_proc = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads processes from /proc (Linux)")

#: Training that runs for hours: the run is certainly inside ``train-before`` when the signal comes.
ENDLESS_TRAIN = {"optimizer": "adam", "epochs": 1_000_000, "patience": 1_000_000, "batch_size": 1, "lr": 1e-4}


def _default_sigint() -> None:
    """In the child: SIGINT at its default, as in a terminal (an inherited ignored SIGINT would stay ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_run(tmp_path: Path, mlflow_uri: str | None, *args: str, env: dict[str, str] | None = None):
    config = table_config(write_table(tmp_path / "t.csv"), mlflow_uri, train=ENDLESS_TRAIN)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    with open(tmp_path / "stdout.txt", "wb") as out, open(tmp_path / "stderr.txt", "wb") as err:
        return subprocess.Popen(tda_clean("run", str(tmp_path / "config.yaml"), "--output", str(tmp_path / "run"),
                                          *args), cwd=tmp_path, stdout=out, stderr=err,
                                env=command_env(env or base_env()), start_new_session=True,
                                preexec_fn=_default_sigint)


def _wait_for(condition, proc: subprocess.Popen, tmp_path: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"run ended ({proc.returncode}) or stalled:\n{(tmp_path / 'stderr.txt').read_text()[-3000:]}")
        time.sleep(0.2)


def _servers(pid: int) -> list[int]:
    return [child for child, cmd in live_descendants(pid).items() if "uvicorn" in cmd]


def _gone(pid: int, timeout: float = 20.0) -> bool:
    """True once ``pid`` has exited (a zombie waiting for its new parent to reap it counts as exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) == "Z":
                return True
        except (OSError, IndexError):
            return True
        time.sleep(0.2)
    return False


@linux_proc
@pytest.mark.parametrize("engine", ["prefect", "local"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_run_cleanly(tmp_path: Path, mlflow_uri: str, engine: str, sig: signal.Signals):
    proc = _start_run(tmp_path, mlflow_uri, "--engine", engine)
    _wait_for((tmp_path / "run" / "stages" / "load.json").is_file, proc, tmp_path)
    time.sleep(1.0)  # inside train-before
    servers = _servers(proc.pid)
    assert len(servers) == (engine == "prefect"), live_descendants(proc.pid)
    os.killpg(proc.pid, sig)  # the whole group, as a terminal's Ctrl-C does
    sent = time.monotonic()
    code = proc.wait(timeout=120)
    stderr = (tmp_path / "stderr.txt").read_text()
    assert code == 128 + sig, stderr[-3000:]
    assert time.monotonic() - sent < 60, "shutdown took longer than a minute"
    ours = [line for line in stderr.splitlines() if line.startswith("tda-clean:")]
    assert ours == [f"tda-clean: interrupted ({sig.name}); completed stages kept, rerun to resume"], stderr
    assert "Traceback" not in stderr, stderr[-3000:]
    assert not (tmp_path / "run" / "report.json").exists()
    assert not (tmp_path / "run" / "stages" / "train_before.json").exists()
    assert all(_gone(pid) for pid in servers), "the temporary Prefect server outlived its run"

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


@linux_proc
def test_sigkilled_run_takes_its_prefect_server_along(tmp_path: Path):
    proc = _start_run(tmp_path, None)
    _wait_for(lambda: (tmp_path / "run" / "stages" / "load.json").is_file() and _servers(proc.pid), proc, tmp_path)
    servers = _servers(proc.pid)
    assert len(servers) == 1
    proc.kill()
    proc.wait(timeout=30)
    assert _gone(servers[0]), f"temporary Prefect server {servers[0]} still running after its run was SIGKILLed"


def test_unreachable_prefect_api_url_is_one_line_exit_2(tmp_path: Path):
    url = f"http://127.0.0.1:{free_port()}/api"
    proc = _start_run(tmp_path, None, env=base_env(PREFECT_API_URL=url))
    code = proc.wait(timeout=120)
    stderr = (tmp_path / "stderr.txt").read_text()
    assert code == 2, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith(f"tda-clean: error: Prefect server {url} is not reachable") and "PREFECT_API_URL" in stderr
    assert not (tmp_path / "run").exists()


def test_no_api_url_and_no_temporary_server_is_one_line_exit_2(tmp_path: Path, capsys):
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED, temporary_settings

    from flows.cli import main

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(table_config(write_table(tmp_path / "t.csv"))))
    with temporary_settings(updates={PREFECT_SERVER_EPHEMERAL_ENABLED: False}, restore_defaults={PREFECT_API_URL}):
        code = main(["run", str(tmp_path / "config.yaml"), "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("tda-clean: error: PREFECT_API_URL is not set"), err
    assert not (tmp_path / "run").exists()


_LOCK_RECORDS = """
import logging, sqlite3, sys
from sqlalchemy.exc import OperationalError
from flows.lifetime import create_app

create_app()  # the temporary server's app, as uvicorn makes it: Prefect's logging configured, then ours

def error(message):
    try:
        raise OperationalError("INSERT INTO task_run ...", {}, sqlite3.OperationalError(message))
    except OperationalError:
        return sys.exc_info()

recorder = logging.getLogger("prefect.server.services.task_run_recorder")
recorder.error("Error flushing 3 events (3 to retry, 0 dropped)", exc_info=error("database is locked"))
recorder.error("Error flushing 1 events (1 to retry, 0 dropped)", exc_info=error("no such table: task_run"))
recorder.error("Dropping event 1 after 4 failed attempts")
"""


def test_temporary_server_logs_no_retried_sqlite_locks_but_other_errors(tmp_path: Path):
    """The records Prefect's task-run recorder writes when a flush meets a locked SQLite file (it retries) are
    dropped from the temporary server's console; other database errors and dropped events still show."""
    proc = subprocess.run([sys.executable, "-c", _LOCK_RECORDS], cwd=tmp_path, env=command_env(base_env()),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "database is locked" not in proc.stderr and "3 to retry" not in proc.stderr
    assert "no such table: task_run" in proc.stderr and "Traceback" in proc.stderr
    assert "Dropping event 1 after 4 failed attempts" in proc.stderr
    shown = subprocess.run([sys.executable, "-c", _LOCK_RECORDS], cwd=tmp_path, capture_output=True, text=True,
                           env=command_env(base_env(PREFECT_SERVER_LOG_RETRYABLE_ERRORS="true")), timeout=120)
    assert "database is locked" in shown.stderr  # the user's switch to see them all


def test_a_normal_run_prints_no_traceback(tmp_path: Path, mlflow_uri: str):
    """``tda-clean run`` with no Prefect server (a temporary one) in a fresh PREFECT_HOME: exit 0, the table on
    stdout, and no traceback or SQLite lock message from the server on stderr."""
    config = table_config(write_table(tmp_path / "t.csv"), mlflow_uri)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.run(tda_clean("run", str(tmp_path / "config.yaml"), "--output", str(tmp_path / "run")),
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env=command_env(base_env(PREFECT_HOME=str(tmp_path / "prefect"))))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "gate: passed" in proc.stdout
    for bad in ("Traceback", "database is locked", "ERROR"):
        assert bad not in proc.stderr, proc.stderr[-3000:]
    assert "Starting temporary server" in proc.stderr and (tmp_path / "prefect" / "prefect.db").is_file()


@pytest.mark.parametrize("how", ["exits", "fails to start", "never answers"])
def test_a_temporary_server_that_does_not_start_is_one_line_exit_1(tmp_path: Path, capsys, monkeypatch, how: str):
    """A temporary server that exits, or does not answer in time, is stopped at once and becomes one line."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows import lifetime
    from flows.cli import main

    launched = []

    def launch(port):
        code = {"exits": "import sys; sys.exit(1)", "fails to start": "import sys; sys.exit(3)"}.get(
            how, "import time; time.sleep(600)")
        launched.append(subprocess.Popen([sys.executable, "-c", code]))
        return launched[-1]

    monkeypatch.setattr(lifetime, "_launch", launch)
    monkeypatch.setattr(lifetime, "startup_timeout", lambda: 1.0)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(table_config(write_table(tmp_path / "t.csv"))))
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        code = main(["run", str(tmp_path / "config.yaml"), "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err
    why = {"exits": "it exited with code 1", "fails to start": "it exited with code 3"}.get(
        how, "no answer from http://127.0.0.1:")
    # uvicorn's startup failure (3, e.g. a port taken since it was picked) is retried on other ports, 3 times
    assert code == 1 and len(launched) == (4 if how == "fails to start" else 1)
    assert all(proc.wait(timeout=10) is not None for proc in launched)
    assert err.count("\n") == 1 and err.startswith(f"tda-clean: error: the temporary Prefect server did not start "
                                                   f"({why}"), err
    assert not (tmp_path / "run").exists()


def test_the_api_block_stops_its_temporary_server_even_when_the_flow_fails(monkeypatch):
    """``prefect_api`` owns the temporary server's life: leaving the block (here by an exception) stops the
    server's process and restores Prefect's API setting, so no in-process caller leaves a server behind."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows import lifetime

    launched = []

    def launch(port):  # a stand-in server process that would run for ten minutes
        launched.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]))
        return launched[-1]

    monkeypatch.setattr(lifetime, "_launch", launch)
    monkeypatch.setattr(lifetime.TemporaryServer, "wait", lambda self, timeout: None)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        server = lifetime.launch_temporary_server()
        with pytest.raises(RuntimeError, match="flow failed"):
            with lifetime.prefect_api(server):
                assert PREFECT_API_URL.value() == server.api_url
                raise RuntimeError("flow failed")
        assert not PREFECT_API_URL.value()
    assert len(launched) == 1 and launched[0].poll() is not None  # stopped, not left for atexit
    assert server.process is None


def test_the_wait_for_a_temporary_server_covers_a_first_start(monkeypatch):
    """At least STARTUP_TIMEOUT_S (a new PREFECT_HOME's migrations outlast Prefect's default 20 s), or Prefect's
    setting when it is longer."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as STARTUP
    from prefect.settings import temporary_settings

    from flows import lifetime

    with temporary_settings(updates={STARTUP: 20}):
        assert lifetime.startup_timeout() == lifetime.STARTUP_TIMEOUT_S > 20
    with temporary_settings(updates={STARTUP: lifetime.STARTUP_TIMEOUT_S + 100}):
        assert lifetime.startup_timeout() == lifetime.STARTUP_TIMEOUT_S + 100


def test_exit_now_runs_the_exit_handlers_flushes_and_keeps_the_exit_code(tmp_path: Path):
    """The command's fast exit (flows.cli.exit_now): atexit handlers still run (last registered first), buffered
    output is not lost, the exit code is the command's."""
    import sys

    code = ("import atexit, sys, threading; from flows.cli import exit_now; "
            "atexit.register(lambda: (tmp / 'first').write_text('1') and None); "
            "atexit.register(lambda: print('handler', flush=False)); "
            "threading._register_atexit(lambda: print('drained', end=' ', flush=False)); "
            "sys.stdout.write('buffered '); exit_now(3)")
    code = f"from pathlib import Path; tmp = Path({str(tmp_path)!r}); " + code
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=command_env(), timeout=120)
    assert proc.returncode == 3, proc.stderr
    # the threading exit callbacks (where Prefect drains its log and event workers) before the atexit handlers
    # (where it stops its temporary server), as at an ordinary interpreter exit
    assert proc.stdout == "buffered drained handler\n"
    assert (tmp_path / "first").read_text() == "1"


@linux_proc
def test_default_run_with_a_temporary_server_completes_and_stops_it(tmp_path: Path):
    """No PREFECT_API_URL: the server is launched before the flow's imports, adopted by Prefect, used by the
    flow, and stopped by Prefect's exit handler (which ``exit_now`` still runs) when the run ends."""
    config = table_config(write_table(tmp_path / "t.csv"))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    with open(tmp_path / "stdout.txt", "wb") as out, open(tmp_path / "stderr.txt", "wb") as err:
        proc = subprocess.Popen(tda_clean("run", str(tmp_path / "config.yaml"), "--output", str(tmp_path / "run")),
                                cwd=tmp_path, stdout=out, stderr=err, env=command_env(base_env()))
    try:
        _wait_for(lambda: _servers(proc.pid), proc, tmp_path)
        servers = _servers(proc.pid)
        assert proc.wait(timeout=600) == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    logs = (tmp_path / "stdout.txt").read_text() + (tmp_path / "stderr.txt").read_text()
    assert (tmp_path / "run" / "report.json").is_file()
    assert "Stopping temporary server" in logs, logs[-3000:]
    assert len(servers) == 1 and _gone(servers[0])
    # the flow run's last log line reached the server before it stopped (Prefect's log worker drained first)
    name = re.search(r"Beginning flow run '([^']+)'", logs).group(1)
    with closing(sqlite3.connect(Path(os.environ["PREFECT_HOME"]) / "prefect.db")) as db:
        flow_logs = db.execute("SELECT log.message FROM log JOIN flow_run ON log.flow_run_id = flow_run.id "
                               "WHERE flow_run.name = ? AND log.task_run_id IS NULL", (name,)).fetchall()
    assert any(m.startswith("Finished in state Completed") for (m,) in flow_logs), flow_logs


def test_the_temporary_server_warms_its_routes_after_startup():
    """After its lifespan has started, the temporary server's app sends itself the read-only warm-up requests
    (FastAPI builds its routes' request models on first use); other requests pass through unchanged."""
    import asyncio

    from flows.lifetime import WARM_UP, warmed_after_startup

    seen = []

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})
            await asyncio.sleep(0.5)  # serving
            return
        seen.append((scope["method"], scope["path"]))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def main():
        sent = []

        async def receive():
            return {"type": "lifespan.startup"}

        async def send(message):
            sent.append(message["type"])

        await warmed_after_startup(app)({"type": "lifespan"}, receive, send)
        return sent

    assert asyncio.run(main()) == ["lifespan.startup.complete"]
    assert seen == [(method, path) for method, path, _ in WARM_UP]
