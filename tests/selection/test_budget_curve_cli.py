"""The automatic budget through the command line: bad grids refused in one line naming the key (exit 2, no run
folder), and a run's report.json and budget_curve.png carrying the curve. Subprocesses run this checkout's code in
a temporary folder (``--engine local``, tracking off)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.commands import command_env, tda_clean
from tests.tables import make_table, table_config

LOCAL = ("--engine", "local", "--set", "tracking.enabled=false")


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(tda_clean(*args), cwd=tmp_path, env=command_env(), text=True, capture_output=True,
                          timeout=300)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A 1,200-row table (720 training rows) with group-targeted flips; harmful detector, remove action."""
    csv = tmp_path / "t.csv"
    make_table().to_csv(csv, index=False)
    cfg = table_config(csv, detector={"kind": "harmful", "damping": 0.0}, action={"kind": "remove"})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _refused(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("tda-clean: error: ")]
    assert len(errors) == 1, proc.stderr[-2000:]
    return errors[0].removeprefix("tda-clean: error: ")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("detector, expected", [
    ("{kind: harmful, auto_budget: {fractions: [0.0, 0.5]}}",
     "detector.auto_budget.fractions: candidate fractions must lie in (0, 1); got 0.0"),
    ("{kind: harmful, auto_budget: {rows: [0]}}", "detector.auto_budget.rows: candidate row counts must be >= 1"),
    ("{kind: harmful, auto_budget: {tolerance: 2}}", "detector.auto_budget.tolerance: Input should be less than 1"),
    ("{kind: cleanlab, max_flagged: 4, auto_budget: {}}", "detector: auto_budget chooses the budget; remove max_flagged"),
], ids=["fraction-0", "rows-0", "tolerance-2", "both"])
def test_config_load_refuses_a_grid_without_valid_points(tmp_path, config, detector, expected):
    message = _refused(_cli(tmp_path, "validate", str(config), "--set", f"detector={detector}"))
    assert message.startswith(f"{config}: {expected}"), message


@pytest.mark.timeout(300)
def test_data_load_refuses_candidates_at_or_above_the_training_rows(tmp_path, config):
    proc = _cli(tmp_path, "run", str(config), *LOCAL, "--set", "detector.auto_budget={rows: [720, 5000]}",
                "--output", "out")
    assert _refused(proc) == ("detector.auto_budget.rows: no candidate budget lies in [1, 719] for 720 training rows "
                              "(720, 5000); give candidates below the training-set size")
    assert not (tmp_path / "out").exists()  # no half-written run folder


@pytest.mark.timeout(300)
def test_run_reports_and_plots_the_curve(tmp_path, config):
    proc = _cli(tmp_path, "run", str(config), *LOCAL, "--set", "detector.max_flagged=auto",
                "--set", "gate.no_regression=false", "--output", "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    curve = report["selection"]["auto_budget"]
    assert curve["k"][0] == 0 and len(curve["k"]) == len(curve["validated"]) == len(curve["held_out"]) > 2
    assert report["selection"]["n_flagged"] == curve["chosen"] == report["actions"]["removed"]
    assert curve["chosen"] in curve["k"] and curve["reason"]
    assert (tmp_path / "out" / "budget_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"automatic budget: {curve['reason']}" in proc.stdout
