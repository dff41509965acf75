"""Issue 14: the released model loads and predicts on RAW rows in a fresh environment WITHOUT tda_clean.

The pipeline runs for the quickstart (Adult, tabular; fewer rows and folds) and digits_backdoor (images; fewer epochs
and folds) configs against a SQLite MLflow store in ``tmp_path``. Then a fresh virtual environment
(``python -m venv``, no system site packages, no tda_clean) is made, and a script run there from a folder outside
the repository, with no ``PYTHONPATH``, asserts that ``import tda_clean`` fails, loads ``models:/<name>@release``
(the after-model's ``models:/<model id>`` when the gate did not promote it) with ``mlflow.pyfunc.load_model`` and
predicts on the raw test rows (Adult's own columns, digits' 0..16 grey levels). Its class names and probabilities
must be the pipeline's after-model's on the same (preprocessed) test rows.

How the fresh environment gets its packages (``TDA_CLEAN_RELEASE_ENV``):

- ``pth`` (default): its only extra path is one ``.pth`` line naming the site-packages folder of the interpreter
  running the tests (from ``sysconfig``); ``.pth`` files inside that folder are not processed, and tda_clean
  comes from ``PYTHONPATH`` / an install only, neither of which the script gets -- asserted in the script.
- ``pip``: ``pip install -r`` the released model's own ``requirements.txt`` (pinned mlflow, torch, numpy,
  pandas): it also proves the requirements install, but takes minutes on a shared machine (BENCHMARKS.md).

Needs no GPU; the ``pip`` mode needs pip to reach the packages (as ``make install`` does).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tda_clean.config import load_config
from tda_clean.data import DataBundle
from tda_clean.pipeline import run_pipeline
from tda_clean.run_dir import DATA, RunContext, load_model

REPO = Path(__file__).resolve().parents[1]
CASES = {  # config -> overrides that keep the run short
    "quickstart.yaml": ["data.max_rows=3000", "detector.folds=2"],
    "digits_backdoor.yaml": ["train.epochs=8", "detector.folds=2", "train.device=cpu"],
}

SCRIPT = """
import importlib.util, json, sys
assert sys.prefix != sys.base_prefix, "not a venv"
assert not any(p.startswith(sys.base_prefix) and p.endswith("site-packages") for p in sys.path), sys.path  # no system
assert importlib.util.find_spec("tda_clean") is None, "tda_clean is importable"
try:
    import tda_clean  # noqa: F401
except ImportError:
    pass
else:
    sys.exit("tda_clean is importable")
import mlflow.pyfunc
import numpy as np
import pandas as pd

for job in json.load(open(sys.argv[1])):
    model = mlflow.pyfunc.load_model(job["uri"])
    raw = pd.read_csv(job["input"]) if job["input"].endswith(".csv") else np.load(job["input"], allow_pickle=False)
    model.predict(raw).to_csv(job["output"], index=False, float_format="%.17g")
print("ok")
"""


def _expected(config, run_dir: Path) -> tuple[DataBundle, pd.DataFrame]:
    """The pipeline's after-model on its preprocessed test rows: class names and softmax probabilities."""
    bundle = DataBundle.load(run_dir / DATA)
    model = load_model(RunContext(config, run_dir), "after", bundle)
    with torch.no_grad():
        logits = model(torch.as_tensor(bundle.test.X).to(next(model.parameters()).dtype)).double()
    proba = torch.softmax(logits, 1).numpy()
    out = pd.DataFrame({"label": np.asarray(bundle.classes, dtype=object)[proba.argmax(1)]})
    for k, name in enumerate(bundle.classes):
        out[f"prob_{name}"] = proba[:, k]
    return bundle, out


def _raw_test_rows(config, bundle: DataBundle, folder: Path) -> Path:
    """The user's raw values of the test rows: Adult's columns as read, digits' 0..16 grey levels."""
    if config.data.kind == "digits":
        from sklearn.datasets import load_digits

        path = folder / "raw.npy"
        np.save(path, load_digits().images[bundle.test.row_id])
        return path
    from tda_clean.data.sources import load_source

    raw = load_source(config.data)
    columns = bundle.preprocessing["columns"]
    path = folder / "raw.csv"
    raw.frame.set_axis(raw.row_id)[columns].loc[bundle.test.row_id].to_csv(path, index=False, float_format="%.17g")
    return path


def _fresh_venv(venv: Path, requirements: set[str], env: dict[str, str]) -> Path:
    """A new venv (no system site packages) with the model's packages (module docstring: ``pth`` or ``pip``)."""
    mode = os.environ.get("TDA_CLEAN_RELEASE_ENV", "pth")
    assert mode in ("pth", "pip"), f"TDA_CLEAN_RELEASE_ENV={mode!r}: pth or pip"
    subprocess.run([sys.executable, "-m", "venv", *(["--without-pip"] if mode == "pth" else []), str(venv)],
                   check=True, timeout=600, env=env)
    python = venv / "bin" / "python"
    if mode == "pth":
        own = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True, env=env).stdout.strip()
        folders = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
        Path(own, "release-test.pth").write_text("\n".join(folders) + "\n")
        return python
    start = time.monotonic()
    (venv / "requirements.txt").write_text("\n".join(sorted(requirements)) + "\n")
    pip = subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(venv / "requirements.txt")],
                         capture_output=True, text=True, timeout=1800, env=env)
    print(f"pip install -r requirements.txt ({' '.join(sorted(requirements))}): {time.monotonic() - start:.0f} s")
    assert pip.returncode == 0, pip.stderr[-3000:]
    return python


@pytest.mark.slow
def test_released_models_predict_raw_rows_without_tda_clean(tmp_path: Path, mlflow_uri: str) -> None:
    import mlflow.artifacts
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri)
    jobs, expected, requirements = [], {}, set()
    for name, overrides in CASES.items():
        config = load_config(REPO / "configs" / name, [f"tracking.tracking_uri={mlflow_uri}", *overrides])
        report = run_pipeline(config, tmp_path / config.name)
        bundle, expected[config.name] = _expected(config, Path(report["run_dir"]))
        assert bundle.preprocessing is not None
        if report["gate"]["passed"]:
            version = client.get_model_version_by_alias(config.name, "release")
        else:
            (version,) = client.search_model_versions(f"name='{config.name}'")
        (logged,) = [m for m in client.search_logged_models([report["mlflow"]["experiment_id"]])
                     if m.artifact_location == version.source]
        uri = f"models:/{config.name}@release" if report["gate"]["passed"] else f"models:/{logged.model_id}"
        assert logged.name == "model_after" and logged.tags["servable"] == "true"
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=logged.artifact_location,
                                                         dst_path=str(tmp_path / f"model-{config.name}")))
        requirements |= set((local / "requirements.txt").read_text().split())
        jobs.append({"uri": uri, "input": str(_raw_test_rows(config, bundle, tmp_path)),
                     "output": str(tmp_path / f"pred-{config.name}.csv"), "name": config.name})

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    python = _fresh_venv(tmp_path / "venv", requirements, env)

    outside = tmp_path / "outside"  # not the repository: nothing of tda_clean on the path
    outside.mkdir()
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    (tmp_path / "predict.py").write_text(SCRIPT)
    proc = subprocess.run([str(python), str(tmp_path / "predict.py"), str(tmp_path / "jobs.json")],
                          cwd=outside, capture_output=True, text=True, timeout=600,
                          env={**env, "MLFLOW_TRACKING_URI": mlflow_uri})
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]

    for job in jobs:
        got = pd.read_csv(job["output"], dtype={"label": str})
        want = expected[job["name"]]
        assert list(got.columns) == list(want.columns)
        assert got["label"].tolist() == want["label"].tolist()
        np.testing.assert_allclose(got.iloc[:, 1:].to_numpy(), want.iloc[:, 1:].to_numpy(), rtol=1e-5, atol=1e-6)
