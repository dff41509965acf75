"""benchmarks/gpu.sh and benchmarks/workload.py: argument handling (exit 2, one line) and the script's CPU-small
mode end to end (256 Fashion-MNIST images through the image-path route, a narrow ResNet, the whole pipeline; ~20 s;
skipped where the Fashion-MNIST idx files are not installed)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.commands import REPO, command_env

SCRIPT = REPO / "benchmarks" / "gpu.sh"
FASHION = Path("/usr/share/datasets/fashion-mnist")
STAGES = {"load", "train_before", "detect", "act", "train_after", "evaluate_before", "evaluate_after"}


def _gpu_sh(*args: str, env: dict[str, str] | None = None, timeout: int = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env=command_env({"PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **(env or {})}))


@pytest.mark.parametrize("args, message", [
    ((), "benchmarks/gpu.sh run --out DIR"),
    (("bench",), "benchmarks/gpu.sh prepare"),
    (("run",), "error: --out: give the folder"),
    (("run", "--out", "x", "--bogus"), "error: unknown argument --bogus"),
    (("run", "--out", "x", "--epochs", "two"), "error: --n-train, --epochs, --budget: whole numbers"),
])
def test_bad_arguments_exit_2_with_one_message(tmp_path, args, message):
    done = _gpu_sh(*[str(tmp_path / a) if a == "x" else a for a in args])
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "x").exists()  # refused before anything is written


def test_missing_fashion_files_is_one_line_error(tmp_path):
    from benchmarks.workload import main

    code = main(["--n-train", "10", "--fashion", str(tmp_path / "none"), "--cache", str(tmp_path / "c"),
                 "--run-dir", str(tmp_path / "run"), "--json", str(tmp_path / "out.json")])
    assert code == 2
    assert not (tmp_path / "run").exists() and not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("args", [["--n-train", "0"], ["--n-val", "10000"], ["--n-val", "9000", "--n-test", "1001"],
                                  ["--epochs", "0"]])
def test_workload_refuses_sizes_out_of_range(args, capsys):
    from benchmarks.workload import main

    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    assert args[-2] in capsys.readouterr().err


@pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST idx files not installed")
def test_small_mode_runs_the_workload_end_to_end(tmp_path):
    done = _gpu_sh("run", "--small", "--out", str(tmp_path / "out"), timeout=300)
    assert done.returncode == 0, done.stderr + (tmp_path / "out" / "workload.log").read_text()
    figures = json.loads((tmp_path / "out" / "gpu.json").read_text())
    assert figures["device"]["cuda"] == torch.cuda.is_available()
    workload = figures["workload"]
    assert workload["n_train"] == 256 and workload["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert STAGES <= set(workload["stages"])
    for stage in STAGES:
        assert workload["stages"][stage]["seconds"] >= 0 and workload["stages"][stage]["peak_rss_mib"] > 0
    selection = workload["selection"]
    assert selection["detector"] == "harmful" and selection["solver"] == "ekfac" and selection["n"] == 256
    assert 0 < selection["n_flagged"] <= 26  # the budget: 10% of 256 rows (the planted noise rate)
    assert figures["peers"] is None  # --small skips the peer comparison
    table = (tmp_path / "out" / "run-table" / "images.csv").read_text().splitlines()
    assert len(table) == 1 + 256 + 128 + 256
