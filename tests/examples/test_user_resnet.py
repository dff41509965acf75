"""examples/user_resnet end to end at small size, as its README runs it: the user's data preparation, training
script and checkpoint, then `tda-clean run` with the user's model, training function and splits."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.commands import REPO, command_env, tda_clean

SMALL = ["--set", "tracking.enabled=false", "--set", "detector.n_queries=8", "--set", "detector.n_copies=16",
         "--set", "detector.tol=6"]


def test_user_resnet_example_end_to_end(tmp_path):
    folder = tmp_path / "user_resnet"
    shutil.copytree(REPO / "examples" / "user_resnet", folder, ignore=shutil.ignore_patterns("data", "runs", "*.pt"))
    env = command_env({"USER_RESNET_EPOCHS": "6"})
    for argv in ([sys.executable, "prepare.py", "--out", "data", "--max-rows", "400", "--source", "digits"],
                 [sys.executable, "train.py", "--data", "data", "--out", "net.pt"],
                 tda_clean("run", "config.yaml", "--engine", "local", "--output", "runs/small", *SMALL)):
        proc = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode in (0, 3), proc.stderr[-2000:]  # 3: the default (no-regression) gate failed
    report = json.loads((folder / "runs" / "small" / "report.json").read_text())
    assert {"accuracy", "balanced_accuracy"} <= set(report["before"]) & set(report["after"])
    assert report["selection"]["detector"] == "delta_influence" and report["selection"]["n_flagged"] > 0
    assert "layer1.bn1" in report["selection"]["influence_params"]["frozen"]
    assert "layer1.conv1" in report["selection"]["influence_params"]["used"]
    proc = subprocess.run([sys.executable, "check.py", "runs/small", "data"], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=60)
    scores = json.loads(proc.stdout)
    assert scores["flagged"] == report["selection"]["n_flagged"] and scores["recall"] >= 0.5, scores
