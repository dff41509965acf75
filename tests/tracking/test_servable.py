"""The servable pyfunc (tda_clean/tracking/servable.py + serving_model.py): the JSON preprocessing rebuilds
scikit-learn's output, the network is exported (or falls back to the pickle with a warning and a tag), and the
logged model predicts class names from raw rows. The fresh-environment check is tests/test_release_fresh_env.py."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tda_clean.data.tabular import fit_preprocessing
from tda_clean.tracking.mlflow_tracker import MlflowTracker
from tda_clean.tracking.servable import FALLBACK_TAG, SERVABLE_TAG, ServingInput, export_network, servability


def _frame(n: int, rng: np.random.Generator) -> pd.DataFrame:
    words = np.array(["good", "bad", "movie", "plot", "great", "awful", "the"])
    return pd.DataFrame({
        "f32": rng.normal(3, 2, n).astype(np.float32),
        "i64": rng.integers(0, 100, n),
        "flag": rng.random(n) < 0.3,
        "colour": rng.choice(["red", "green", "blue"], n),
        "size": rng.choice(["S", "M", "L", "XL"], n),
        "review": [" ".join(rng.choice(words, rng.integers(1, 6))) for _ in range(n)],
    })


@pytest.mark.parametrize("columns", [["f32"], ["f32", "i64", "flag", "colour", "size"], ["colour"]])
@pytest.mark.parametrize("text", [False, True])
def test_json_preprocessing_matches_sklearn(columns: list[str], text: bool) -> None:
    from tda_clean.tracking import serving_model

    rng = np.random.default_rng(0)
    frame = _frame(200, rng)
    splits = (np.arange(0, 120), np.arange(120, 160), np.arange(160, 200))
    out, names, spec = fit_preprocessing(frame, tuple(columns), splits, ("review", 5) if text else None)
    spec = json.loads(json.dumps(spec))  # what is stored
    test = frame.iloc[splits[2]].copy()
    if "colour" in columns:
        test.iloc[0, test.columns.get_loc("colour")] = "purple"  # unseen in training: all zeros, as sklearn
    expected = out[2].copy()
    if "colour" in columns:
        assert spec["categorical"] and "colour" in spec["categorical"]["columns"]
    rebuilt = serving_model.table_features(test, spec)
    assert rebuilt.dtype == np.float32 and rebuilt.shape == expected.shape == (40, len(names))
    assert spec["feature_names"] == list(names)
    if "colour" in columns:  # the changed row: compare with sklearn's own output for it
        from tda_clean.data.tabular import make_preprocessor

        cols = columns + (["review"] if text else [])
        pre = make_preprocessor(frame[cols], tuple(columns), ("review", 5) if text else None).fit(frame.iloc[splits[0]][cols])
        expected = np.asarray(pre.transform(test[cols]), dtype=np.float32)
    np.testing.assert_array_equal(rebuilt, expected)
    assert set(spec["example"][0]) == set(spec["columns"])


def test_export_keeps_logits_and_handles_batch_specialised_models() -> None:
    class UsesLen(torch.nn.Module):  # len(x) is a Python int: no dynamic batch axis -> exported for one row
        def __init__(self) -> None:
            super().__init__()
            self.head = torch.nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x.reshape(len(x), -1))

    torch.manual_seed(0)
    x = torch.randn(5, 2, 3)
    for model, batch in ((torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 3)), None), (UsesLen(), 1)):
        program, got = export_network(model, x)
        assert got == batch
        rows = x if batch is None else x[:1]
        torch.testing.assert_close(program.module()(rows), model(rows))


class _DataDependent(torch.nn.Module):
    """Python control flow on a tensor's value: torch.export cannot capture it."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.head(x)
        return -self.head(x)


def _serving(n_features: int = 4) -> ServingInput:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(6, n_features)).astype(np.float32)
    pre = {"kind": "array", "shape": [n_features], "scale": 2.0, "dtype": "float32",
           "example": (X[:1].astype(np.float64) * 2).tolist()}
    return ServingInput(("cat", "dog"), pre, X)


def test_logged_model_predicts_class_names_from_raw_values(mlflow_uri: str, tmp_path: Path) -> None:
    import mlflow.pyfunc
    from mlflow import MlflowClient

    tracker = MlflowTracker(mlflow_uri, "servable")
    run_id = tracker.start_run("after")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    model_id = tracker.log_model(run_id, model, name="model_after", serving=_serving())
    client = MlflowClient(tracking_uri=mlflow_uri)
    logged = client.get_logged_model(model_id)
    assert logged.tags[SERVABLE_TAG] == "true" and client.get_run(run_id).data.tags[SERVABLE_TAG] == "true"
    local = mlflow.artifacts.download_artifacts(artifact_uri=logged.artifact_location, dst_path=str(tmp_path / "m"))
    requirements = (Path(local) / "requirements.txt").read_text().split()
    assert f"torch=={torch.__version__.split('+')[0]}" in requirements and any(r.startswith("mlflow==") for r in requirements)
    code = (Path(local) / "serving_model.py").read_text()
    assert not list(Path(local).rglob("*.pkl")) and "import tda_clean" not in code and "from tda_clean" not in code

    raw = np.random.default_rng(2).normal(size=(7, 4)) * 2  # raw values: the model sees raw / scale
    out = mlflow.pyfunc.load_model(local).predict(raw)
    assert list(out.columns) == ["label", "prob_cat", "prob_dog"]
    with torch.no_grad():
        proba = torch.softmax(model(torch.as_tensor(raw / 2.0, dtype=torch.float32)).double(), 1).numpy()
    np.testing.assert_allclose(out[["prob_cat", "prob_dog"]].to_numpy(), proba, rtol=1e-5, atol=1e-6)
    assert out["label"].tolist() == [("cat", "dog")[k] for k in proba.argmax(1)]


def test_unexportable_model_falls_back_to_pickle_with_a_warning(mlflow_uri: str) -> None:
    from mlflow import MlflowClient

    tracker = MlflowTracker(mlflow_uri, "servable")
    run_id = tracker.start_run("after")
    with pytest.warns(UserWarning, match="pickle"):
        model_id = tracker.log_model(run_id, _DataDependent(), name="model_after", serving=_serving())
    tags = MlflowClient(tracking_uri=mlflow_uri).get_logged_model(model_id).tags
    assert tags[SERVABLE_TAG] == "false" and "torch.export failed" in tags[FALLBACK_TAG]
    assert tracker.model_tags(model_id) == tags
    assert servability(tags) == {"servable": False, "servable_fallback": tags[FALLBACK_TAG]}
    assert servability({SERVABLE_TAG: "true"}) == {"servable": True} and servability({}) == {"servable": None}


USER_CODE = '''
import torch
from torch import nn


class Plain(nn.Module):
    def __init__(self, d, k):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d, 8), nn.ReLU())
        self.out = nn.Linear(8, k)

    def forward(self, x):
        return self.out(self.body(x))


class ValueBranch(Plain):  # Python control flow on a tensor's value: torch.export cannot capture it
    def forward(self, x):
        return super().forward(x) if x.sum() > -1e9 else -super().forward(x)


def plain(input_shape, n_classes):
    return Plain(input_shape[0], n_classes)


def value_branch(input_shape, n_classes):
    return ValueBranch(input_shape[0], n_classes)
'''


@pytest.mark.parametrize("factory", ["plain", "value_branch"])
def test_user_python_model_is_exported_or_falls_back_with_its_code(factory: str, tmp_path: Path, mlflow_uri: str) -> None:
    """``model.kind: python`` through the pipeline: an exportable module is a servable pyfunc predicting the table's
    class names from its raw columns; one that is not is the pickle with the user's code file, tagged and warned."""
    import mlflow.artifacts
    import mlflow.pyfunc
    from mlflow import MlflowClient

    from tda_clean.config import parse_config
    from tda_clean.data import DataBundle
    from tda_clean.pipeline import run_pipeline
    from tda_clean.run_dir import RunContext, load_model
    from tests.tables import table_config, write_table

    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "servable_user_models.py").write_text(USER_CODE)
    csv = write_table(tmp_path / "t.csv")
    config = parse_config({**table_config(csv, mlflow_uri), "name": f"user-{factory}",
                           "model": {"kind": "python", "factory": f"servable_user_models:{factory}",
                                     "code_dir": str(tmp_path / "code")},
                           "train": {"optimizer": "adam", "epochs": 3, "device": "cpu"}})
    if factory == "plain":
        report = run_pipeline(config, tmp_path / "run")
    else:
        with pytest.warns(UserWarning, match="pickle"):
            report = run_pipeline(config, tmp_path / "run")
    client = MlflowClient(tracking_uri=mlflow_uri)
    (logged,) = [m for m in client.search_logged_models([report["mlflow"]["experiment_id"]]) if m.name == "model_after"]
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=logged.artifact_location, dst_path=str(tmp_path / "m")))
    # report.json (the run folder's and the parent run's artifact) says it too, in its release section
    parent_report = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=report["mlflow"]["parent_run_id"], artifact_path="report.json", dst_path=str(tmp_path / "r"))).read_text())
    release = report["release"]
    assert json.loads((tmp_path / "run" / "report.json").read_text())["release"] == parent_report["release"] == release
    assert release["model_id"] == logged.model_id and release["registered_version"] == "1"
    if factory == "value_branch":
        assert logged.tags["servable"] == "false" and "torch.export failed" in logged.tags["servable_fallback"]
        assert release["servable"] is False and release["servable_fallback"] == logged.tags["servable_fallback"]
        assert (local / "code" / "servable_user_models.py").is_file()
        return
    assert logged.tags["servable"] == "true" and not (local / "code").exists()
    assert release["servable"] is True and "servable_fallback" not in release
    bundle = DataBundle.load(tmp_path / "run" / "data.npz")
    model = load_model(RunContext(config, tmp_path / "run"), "after", bundle)
    raw = pd.read_csv(csv).set_axis(range(len(pd.read_csv(csv)))).loc[bundle.test.row_id]  # row ids = row numbers
    out = mlflow.pyfunc.load_model(str(local)).predict(raw)
    with torch.no_grad():
        want = model(torch.as_tensor(bundle.test.X)).argmax(1).numpy()
    assert out["label"].tolist() == [bundle.classes[k] for k in want]
