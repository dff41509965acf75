"""Start a real Prefect server and a real MLflow server on 127.0.0.1 at free ports; stop them by process group.

Used by the integration fixtures (``tests/integration/conftest.py``) and by ``benchmarks/overhead.py``.
Each server runs in its own session (``start_new_session=True``) so that stopping it signals the whole
process group (uvicorn/gunicorn workers included) and nothing is left listening.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port nothing listens on right now (bound, read, released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _exe(name: str) -> str:
    """The console script next to this interpreter (the environment the tests run in)."""
    path = BIN / name
    return str(path) if path.exists() else name


def base_env(**extra: str) -> dict[str, str]:
    """The current environment without settings that would point a child at another server or run."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "PREFECT_API_KEY", "MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID",
                        "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")}
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env.update(extra)
    return env


@dataclass
class Server:
    """A server process started by :func:`start_prefect` / :func:`start_mlflow`."""

    name: str
    url: str            # what clients use: http://127.0.0.1:P/api (Prefect) or http://127.0.0.1:P (MLflow)
    health: str         # GET answers 200 when ready
    proc: subprocess.Popen
    log: Path
    started_at: float = field(default_factory=time.monotonic)
    ready_s: float | None = None

    def wait_healthy(self, timeout: float = 180.0) -> float:
        """Block until the health URL answers 200; seconds since start. Raises with the log tail on failure."""
        deadline = self.started_at + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before it was healthy:\n"
                                   f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.health, timeout=2) as resp:
                    if resp.status == 200:
                        self.ready_s = time.monotonic() - self.started_at
                        return self.ready_s
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.name} not healthy at {self.health} after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left after ``timeout`` s."""
        if self.proc.poll() is None:
            stop_group(self.proc, timeout)
        else:  # the leader is gone; children of the group may still be alive
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def stop_group(proc: subprocess.Popen, timeout: float = 20.0, sig: int = signal.SIGTERM) -> int | None:
    """Signal ``proc``'s process group (it must have been started with ``start_new_session=True``)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return proc.poll()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    try:  # children (uvicorn/gunicorn workers) that outlived the leader
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        return proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        return None


def _popen(cmd: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    handle = open(log, "wb")  # noqa: SIM115 - owned by the child; closed by the OS at exit
    try:
        return subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)
    finally:
        handle.close()


def start_prefect(root: Path, port: int | None = None, *, scheduler_loop_s: float | None = None) -> Server:
    """``prefect server start`` with its own PREFECT_HOME (SQLite database) under ``root``; not yet waited on.

    ``scheduler_loop_s`` shortens the scheduler service's loop (60 s by default) so a deployment created
    after start-up gets its runs within seconds; the service itself is Prefect's own.
    """
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    extra = {"PREFECT_HOME": str(root / "home"), "PREFECT_SERVER_UI_ENABLED": "false",
             "PREFECT_SERVER_LOGGING_LEVEL": "WARNING"}
    if scheduler_loop_s is not None:
        extra["PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS"] = str(scheduler_loop_s)
    cmd = [_exe("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"]
    proc = _popen(cmd, root / "prefect-server.log", base_env(**extra), root)
    url = f"http://127.0.0.1:{port}/api"
    return Server("prefect server", url, f"{url}/health", proc, root / "prefect-server.log")


def start_mlflow(root: Path, port: int | None = None) -> Server:
    """``mlflow server`` on a SQLite store + local artifact root under ``root``; not yet waited on."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "artifacts").mkdir(exist_ok=True)
    port = port or free_port()
    cmd = [_exe("mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--default-artifact-root", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    proc = _popen(cmd, root / "mlflow-server.log", base_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"), root)
    url = f"http://127.0.0.1:{port}"
    return Server("mlflow server", url, f"{url}/health", proc, root / "mlflow-server.log")
