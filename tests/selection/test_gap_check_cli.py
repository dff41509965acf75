"""The gap check through the command line: a group selector on a table whose group column is a coin flip
(no gap) flags nothing, and report.json and the printed summary say why. Subprocess in a temporary folder
(``--engine local``, tracking off)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.commands import command_env, tda_clean
from tests.tables import make_table, table_config


@pytest.mark.timeout(300)
def test_run_without_a_gap_flags_nothing_and_says_why(tmp_path: Path):
    frame = make_table()
    frame["coin"] = np.random.default_rng(11).choice(["heads", "tails"], size=len(frame))  # unrelated to anything
    csv = tmp_path / "t.csv"
    frame.to_csv(csv, index=False)
    cfg = table_config(csv, detector={"kind": "group_first_order", "objective": "equalized_odds_gap",
                                      "components": "on", "damping": 0.0, "fraction": 0.05,
                                      "min_gap_confidence": 0.99},
                       action={"kind": "remove"})
    cfg["data"]["groups"] = ["coin"]
    cfg.pop("scenario")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(tda_clean("run", "c.yaml", "--engine", "local", "--set", "tracking.enabled=false",
                                    "--set", "gate.no_regression=false", "--output", "out"),
                          cwd=tmp_path, env=command_env(), text=True, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sel = json.loads((tmp_path / "out" / "report.json").read_text())["selection"]
    assert sel["n_flagged"] == 0 and sel["budget"] == 0
    assert sel["reason"].startswith("nothing worth cleaning") and not sel["gap_check"]["significant"]
    assert f"gap check: {sel['gap_check']['reason']}" in proc.stdout
