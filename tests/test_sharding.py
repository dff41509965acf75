"""Influence shards: the same scores whether computed in one piece, shard by shard, as Prefect tasks on threads,
or on a real 2-worker Dask LocalCluster; an unreachable Dask scheduler is refused before any compute."""
from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import yaml

from flows.cli import main
from tda_clean.config import parse_config
from tda_clean.pipeline import run_pipeline
from tests.tables import table_config, write_table

DETECTORS = {
    "self_influence": {"kind": "self_influence", "damping": 0.0, "max_flagged": 60, "dtype": "float64"},
    "harmful": {"kind": "harmful", "objective": "worst_group_loss", "damping": 0.0, "fraction": 0.05,
                "dtype": "float64"},
}


def _config(csv: Path, detector: str, **runner) -> dict:
    return {**table_config(csv, None, detector=DETECTORS[detector], action={"kind": "remove"}),
            "runner": {"shard_rows": 100000, **runner}}


def _scores(run_dir: Path) -> np.ndarray:
    return np.load(run_dir / "selection.npz")["scores"]


@pytest.fixture(scope="module")
def csv(tmp_path_factory) -> Path:
    return write_table(tmp_path_factory.mktemp("shards") / "t.csv")


@pytest.fixture(scope="module")
def unsharded(csv, tmp_path_factory) -> dict[str, np.ndarray]:
    root = tmp_path_factory.mktemp("unsharded")
    out = {}
    for name in DETECTORS:
        run_pipeline(parse_config(_config(csv, name)), root / name)
        out[name] = _scores(root / name)
        out[name + "_mask"] = np.load(root / name / "selection.npz")["mask"]
    return out


@pytest.mark.parametrize("detector", list(DETECTORS))
@pytest.mark.parametrize("shard_rows", [1, 97, 500])
def test_shard_size_does_not_change_scores(csv, unsharded, tmp_path, detector, shard_rows):
    """Shards change only BLAS blocking: float64 scores agree to rounding, the flagged rows are the same."""
    run_pipeline(parse_config(_config(csv, detector, shard_rows=shard_rows)), tmp_path / "run")
    np.testing.assert_allclose(_scores(tmp_path / "run"), unsharded[detector], rtol=1e-12, atol=1e-15)
    mask = np.load(tmp_path / "run" / "selection.npz")["mask"]
    assert mask.sum() > 0
    np.testing.assert_array_equal(mask, unsharded[detector + "_mask"])


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("kind, detector", [("threads", "self_influence"), ("dask", "self_influence"),
                                             ("dask", "harmful")])
def test_prefect_task_runners_give_identical_scores(csv, tmp_path, kind, detector):
    """The same shards as Prefect tasks (threads, or a real 2-worker Dask LocalCluster) give bit-identical
    scores to running them in-process (harmful: per-row sums reduced inside each shard)."""
    from flows.clean import clean

    serial = parse_config(_config(csv, detector, shard_rows=200))
    run_pipeline(serial, tmp_path / "serial")
    config = parse_config(_config(csv, detector, kind=kind, n_workers=2, shard_rows=200))
    report = clean(config, output=str(tmp_path / "run"))
    assert report["selection"]["n_flagged"] == report["selection"]["budget"] > 0
    np.testing.assert_array_equal(_scores(tmp_path / "run"), _scores(tmp_path / "serial"))
    assert len(_scores(tmp_path / "run")) > 200  # more than one shard


def test_unreachable_dask_scheduler_fails_before_compute(csv, tmp_path, capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = _config(csv, "self_influence", kind="dask", address=f"tcp://127.0.0.1:{port}")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    code = main(["run", str(path), "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"runner.address: no Dask scheduler answers at tcp://127.0.0.1:{port}" in err
    assert not (tmp_path / "run").exists()  # nothing computed, nothing written


def test_remote_dask_cluster_without_a_prefect_server_is_refused(csv, tmp_path, capsys, monkeypatch):
    """Workers on another host cannot reach the run's temporary server (127.0.0.1): one line, exit 2, before any
    server is started or scheduler contacted (192.0.2.1 is a documentation address nothing answers at)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    config = _config(csv, "self_influence", kind="dask", address="tcp://192.0.2.1:8786")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    with temporary_settings(restore_defaults={PREFECT_API_URL}):  # as with no server configured
        code = main(["run", str(path), "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert "runner.address: the Dask cluster at tcp://192.0.2.1:8786 needs PREFECT_API_URL" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
