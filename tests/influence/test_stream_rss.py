"""A memory-mapped training set larger than a RAM budget is scored under that budget (RSS measured in a child)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.commands import command_env

CHILD = Path(__file__).with_name("stream_rss_child.py")
ROWS, COLS = 19_200, 4_096          # float32: 300 MiB on disk
BUDGET_MB = 100                     # peak RSS over the child's RSS after imports, setup and a warm-up


def _write_npy(path: Path, rows: int, cols: int, seed: int) -> None:
    """A (rows, cols) float32 .npy written in row blocks (this process never holds it whole)."""
    rng = np.random.default_rng(seed)
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (rows, cols)})
        for a in range(0, rows, 1024):
            fh.write(rng.standard_normal((min(1024, rows - a), cols), dtype=np.float32).tobytes())


def _child(tmp_path: Path, *flags: str) -> dict:
    env = command_env()
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(CHILD), str(tmp_path / "X.npy"), str(tmp_path / "y.npy"), *flags],
                          capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmRSS from /proc")
def test_memmapped_training_set_larger_than_the_budget_runs_under_it(tmp_path):
    size_mb = ROWS * COLS * 4 / 2**20
    if shutil.disk_usage(tmp_path).free < 3 * size_mb * 2**20:
        pytest.skip(f"needs {3 * size_mb:.0f} MiB free on the temporary disk")
    assert size_mb > 2 * BUDGET_MB  # holding the data set (or half of it) breaks the budget
    _write_npy(tmp_path / "X.npy", ROWS, COLS, seed=0)
    np.save(tmp_path / "y.npy", np.random.default_rng(1).integers(0, 10, ROWS))
    out = _child(tmp_path)
    assert out["n"] == ROWS and out["finite"] and out["flagged"] == 100 and 0 < out["harmful"] <= 100
    assert out["peak_mb"] - out["base_mb"] < BUDGET_MB, out
    control = _child(tmp_path, "--in-memory")  # the same run on the array loaded whole: the measurement sees it
    assert control["peak_mb"] - control["base_mb"] > 0.9 * size_mb, control
