"""benchmarks/peers_scale.py: the smoke mode end to end (256 synthetic rows, a narrow ResNet, our EK-FAC in a
fresh process through the driver, the report's quality figures; no peer environment needed)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from tests.commands import REPO, command_env


def test_smoke_runs_one_method_and_reports(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "peers_scale.py"), "smoke", "--data", str(tmp_path),
                           "--methods", "ours-ekfac"], capture_output=True, text=True, timeout=120,
                          env=command_env({"OMP_NUM_THREADS": "1"}), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    res = json.loads((tmp_path / "peers-scale-smoke.json").read_text())
    (call,) = res["calls"]
    assert call["status"] == "ok" and call["method"] == "ours-ekfac" and call["n"] == 256
    assert call["peak_rss_mib"] > 0 and len(call["loadavg_before"]) == 3
    scores = np.load(tmp_path / "scores" / "n256" / "ours-ekfac.npy")
    assert scores.shape == (256,) and np.isfinite(scores).all() and scores.std() > 0
    flipped = np.load(tmp_path / "flipped.npy")
    assert res["quality"]["k_flipped"] == int(flipped[np.sort(np.random.default_rng(0).permutation(512)[:256])].sum())
    assert 0.0 <= res["quality"]["precision"]["ours-ekfac"] <= 1.0
