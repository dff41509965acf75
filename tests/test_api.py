"""The Python API ``tda_clean.clean``: each in-memory data route (DataFrame, arrays, Dataset), an ``nn.Module`` as
the before-model, user-supplied out-of-sample probabilities, the typed report and its bad inputs."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import tda_clean
from tda_clean import InputError
from tda_clean.api import RunReport
from tda_clean.config import InstanceModel
from tda_clean.models.factory import build_model
from tests.unit_helpers import small_table

OFF = {"tracking": {"enabled": False}}


def frames(n: int = 240, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """train / val / test DataFrames with string labels (``yes``/``no``), a group column and their own index."""
    df = small_table(n, seed).set_index("uid")
    df["label"] = np.where(df.pop("label") == 1, "yes", "no")
    return df.iloc[: n // 2], df.iloc[n // 2: 3 * n // 4], df.iloc[3 * n // 4:]


def confident_probs(labels: pd.Series, wrong: list[int]) -> np.ndarray:
    """(n, 2) out-of-sample probabilities (columns ``no``, ``yes``): 0.95 on the given label, 0.02 at ``wrong``."""
    given = (labels.to_numpy() == "yes").astype(int)
    p_given = np.full(len(given), 0.95)
    p_given[wrong] = 0.02
    probs = np.empty((len(given), 2))
    probs[np.arange(len(given)), given] = p_given
    probs[np.arange(len(given)), 1 - given] = 1 - p_given
    return probs


def test_dataframe_route_relabels_from_given_probabilities_and_resumes(tmp_path):
    """DataFrame with string labels, groups and own splits; cleanlab on the user's probabilities flags the rows
    whose given label they contradict; the cleaned DataFrame is the input with those labels switched."""
    train, val, test = frames()
    before = train.copy()
    wrong = [3, 17, 40]
    kwargs = dict(val=val, test=test, label="label", groups=["sex"], action="relabel", output=tmp_path / "run",
                  detector={"kind": "cleanlab", "pred_probs": confident_probs(train["label"], wrong)}, **OFF)
    report = tda_clean.clean(train, **kwargs)
    assert isinstance(report, RunReport) and report.status == "completed"
    pd.testing.assert_frame_equal(train, before)  # the input is never modified
    assert report.selection["n_flagged"] == 3 and report.actions["relabeled"] == 3
    assert "folds" not in report.selection and report.selection["pred_probs_path"].startswith("pred_probs-memory-")
    expected = train.copy()
    expected.iloc[wrong, expected.columns.get_loc("label")] = np.where(train["label"].iloc[wrong] == "yes", "no", "yes")
    pd.testing.assert_frame_equal(report.cleaned_data, expected)
    pd.testing.assert_frame_equal(pd.read_parquet(report.run_dir / "cleaned" / "train.parquet"), expected)
    assert json.dumps(report.to_dict()) == json.dumps(json.loads((report.run_dir / "report.json").read_text()))
    assert report.to_dict()["dataset"]["classes"] == ["no", "yes"]
    again = tda_clean.clean(train, **kwargs)  # same data and settings: the run folder resumes
    assert again.run_dir == report.run_dir and "detect" in again.to_dict()["resumed_stages"]
    changed = train.copy()
    changed.iloc[0, 0] += 1.0  # other data: the folder is refused, not silently reused
    with pytest.raises(InputError, match="holds another run"):
        tda_clean.clean(changed, **kwargs)


def test_dataframe_route_removes_rows_when_the_tool_splits(tmp_path):
    df = pd.concat(frames())
    report = tda_clean.clean(df, label="label", groups=["sex"], detector={"kind": "random", "max_flagged": 6},
                             action="remove", output=tmp_path / "run", **OFF)
    audit = pd.read_csv(report.run_dir / "audit.csv")
    removed = audit.loc[audit["action"] == "remove", "row_id"].to_numpy()  # row numbers of the DataFrame
    assert len(removed) == 6 and report.actions["removed"] == 6
    pd.testing.assert_frame_equal(report.cleaned_data, df.drop(index=df.index[removed]))


class Net(nn.Module):
    def __init__(self, d: int = 3, k: int = 3):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d, 8), nn.ReLU())
        self.head = nn.Linear(8, k)

    def forward(self, x):
        return self.head(self.body(x))


def arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(X (n, 3) float64, y (n,) str in cat / dog / emu)."""
    rng = np.random.default_rng(seed)
    k = rng.integers(0, 3, n)
    X = rng.normal(size=(n, 3)) + 3.0 * np.eye(3)[k]
    return X, np.array(["cat", "dog", "emu"])[k]


def test_arrays_route_with_a_trained_module_as_the_before_model(tmp_path):
    net = Net()
    torch.manual_seed(5)
    net.apply(lambda m: m.reset_parameters() if isinstance(m, nn.Linear) else None)
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    report = tda_clean.clean(arrays(150, 0), val=arrays(60, 1), test=arrays(90, 2), model=net,
                             detector={"kind": "random", "max_flagged": 5}, action="remove",
                             output=tmp_path / "run", config={"train": {"epochs": 30}}, **OFF)
    assert report.cleaned_data is None and report.to_dict()["dataset"]["classes"] == ["cat", "dog", "emu"]
    assert report.to_dict()["dataset"]["n_train"] == 150 and report.actions["removed"] == 5
    saved = torch.load(report.run_dir / "model_before.pt", weights_only=True)
    for name, value in weights.items():  # the user's weights are the before-model, not trained again
        torch.testing.assert_close(saved[name], value)
        torch.testing.assert_close(net.state_dict()[name], value)  # and the user's module is left alone
    after = torch.load(report.run_dir / "model_after.pt", weights_only=True)
    assert not torch.equal(after["head.weight"], weights["head.weight"])
    assert report.after["accuracy"] > 0.9  # retrained from a re-initialised copy on separable data


def test_instance_model_retrains_reinitialise_a_copy_with_the_seed():
    from tda_clean.api import _section

    net = Net()
    cfg = InstanceModel(**_section("model", net, []))
    a, b, c = (build_model(cfg, (3,), 3, seed) for seed in (0, 0, 1))
    assert a is not net and torch.equal(a.head.weight, b.head.weight)
    assert not torch.equal(a.head.weight, c.head.weight) and not torch.equal(a.head.weight, net.head.weight)


class PairDataset(torch.utils.data.Dataset):
    """A map-style Dataset yielding (x tensor (3,), label str)."""

    def __init__(self, n: int, seed: int):
        self.X, self.y = arrays(n, seed)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return torch.as_tensor(self.X[i], dtype=torch.float32), str(self.y[i])


def test_dataset_route_gives_the_same_run_as_the_arrays(tmp_path):
    options = dict(detector={"kind": "random", "max_flagged": 4}, action="remove", **OFF)
    from_dataset = tda_clean.clean(PairDataset(200, 3), output=tmp_path / "a", **options)
    X, y = arrays(200, 3)
    from_arrays = tda_clean.clean((X.astype(np.float32), y), output=tmp_path / "b", **options)
    assert from_dataset.to_dict()["dataset"] == from_arrays.to_dict()["dataset"]
    assert from_dataset.after == from_arrays.after and from_dataset.to_dict()["dataset"]["n_rows"] == 200


@pytest.mark.parametrize("call, message", [
    (lambda df: tda_clean.clean(df, label="label", detector={"kind": "cleanlab", "foldz": 3}),
     r"^tda_clean.clean: detector.foldz: unknown key$"),
    (lambda df: tda_clean.clean(df, label="nope", **OFF), r"^data.label: column 'nope' not in train-frame-\w+ \(available: "),
    (lambda df: tda_clean.clean(df), r"^label: name the label column of the DataFrame"),
    (lambda df: tda_clean.clean([1, 2, 3]), r"^train: expected a pandas DataFrame, \(X, y\) arrays or a map-style"),
    (lambda df: tda_clean.clean(df, val=df, label="label"), r"^val: give both val and test"),
    (lambda df: tda_clean.clean((np.zeros((4, 2)), np.zeros(3))), r"^train: X must be \(n, \.\.\.\) and y \(n,\); "),
    (lambda df: tda_clean.clean(torch.utils.data.StackDataset([np.zeros(2), np.zeros(3)], [0, 1])),
     r"^train: the Dataset's x must be arrays or tensors of one shape"),
    (lambda df: tda_clean.clean(df, label="label", model=3), r"^model: expected a config dict or kind, or an nn.Module"),
    (lambda df: tda_clean.clean(*frames()[:1], val=frames()[1], test=frames()[2], label="label", **OFF,
                                detector={"kind": "cleanlab", "pred_probs": np.full((5, 2), 0.5)}),
     r"^detector.pred_probs_path: \S+ has shape \(5, 2\); expected \(n_train, n_classes\) = \(120, 2\)$"),
])
def test_bad_input_is_one_line(call, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=message) as info:
        call(frames()[0])
    assert "\n" not in str(info.value)


def test_dataframe_result_is_built_in_memory_and_written_as_csv_without_pyarrow(tmp_path, monkeypatch):
    """int column names and dtypes survive in cleaned_data; without pyarrow cleaned/train.csv is written instead."""
    df = pd.concat(frames()).rename(columns={"age": 0, "income": 1})
    monkeypatch.setattr("tda_clean.data.export.has_pyarrow", lambda: False)
    report = tda_clean.clean(df, label="label", detector={"kind": "random", "max_flagged": 5}, action="remove",
                             output=tmp_path / "run", **OFF)
    audit = pd.read_csv(report.run_dir / "audit.csv")
    removed = audit.loc[audit["action"] == "remove", "row_id"].to_numpy()
    pd.testing.assert_frame_equal(report.cleaned_data, df.drop(index=df.index[removed]))
    assert list(report.cleaned_data.columns[:2]) == [0, 1]
    manifest = json.loads((report.run_dir / "manifest.json").read_text())
    assert manifest["cleaned_data"] == str(report.run_dir / "cleaned" / "train.csv")
    assert len(pd.read_csv(manifest["cleaned_data"])) == len(df) - 5
    assert not (report.run_dir / "cleaned" / "train.parquet").exists()


@pytest.mark.parametrize("text", [b"data: {kind: [digits\n", b"name: caf\xe9\n"])
def test_config_file_is_read_like_the_cli(text, tmp_path):
    """clean(config=path) goes through the CLI's reader: bad YAML or encoding is one line naming the file."""
    (tmp_path / "c.yaml").write_bytes(text)
    with pytest.raises(InputError, match=rf"^{tmp_path}/c.yaml: not valid YAML \(") as info:
        tda_clean.clean(arrays(30, 0), config=tmp_path / "c.yaml")
    assert "\n" not in str(info.value)


def test_config_file_paths_resolve_against_its_folder(tmp_path, monkeypatch):
    from tda_clean.api import _base

    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "c.yaml").write_text("detector: {kind: cleanlab, pred_probs_path: p.npy}\n")
    monkeypatch.chdir(tmp_path)
    assert _base("cfg/c.yaml")["detector"]["pred_probs_path"] == str(tmp_path / "cfg" / "p.npy")


def test_registries_are_released_after_a_run_and_after_an_error(tmp_path):
    from tda_clean.data.sources import MEMORY
    from tda_clean.models.given import MODELS

    before = (set(MEMORY), set(MODELS))
    probs = np.full((60, 3), 1 / 3)
    options = dict(val=arrays(30, 1), test=arrays(30, 2), model=Net(), action="remove", output=tmp_path / "run",
                   config={"train": {"epochs": 2}}, **OFF)
    report = tda_clean.clean(arrays(60, 0), detector={"kind": "cleanlab", "pred_probs": probs}, **options)
    assert report.status == "completed" and (set(MEMORY), set(MODELS)) == before
    with pytest.raises(InputError, match="has shape"):
        tda_clean.clean(arrays(60, 0), detector={"kind": "cleanlab", "pred_probs": probs[:5]}, fresh=True, **options)
    assert (set(MEMORY), set(MODELS)) == before


class Scaled(Net):
    """Net with a learned output scale no ``reset_parameters`` covers."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return self.scale * super().forward(x)


def test_module_with_parameters_no_reset_covers_is_refused(tmp_path):
    with pytest.raises(InputError, match=r"^model: parameters scale are not re-initialised by any module's "
                                         r"reset_parameters\(\)") as info:
        tda_clean.clean(arrays(30, 0), model=Scaled(), output=tmp_path / "run", **OFF)
    assert "\n" not in str(info.value)


def test_dataframe_with_a_trained_module_is_refused(tmp_path):
    with pytest.raises(InputError, match=r"^model: a trained nn.Module would meet a DataFrame's standardised"):
        tda_clean.clean(frames()[0], label="label", model=Net(), output=tmp_path / "run", **OFF)


def test_in_memory_config_outside_its_process_is_refused():
    from tda_clean.config import parse_config
    from tda_clean.data import load_bundle

    cfg = parse_config({"data": {"kind": "memory", "path": "train-frame-0123456789abcdef", "label": "y"}})
    with pytest.raises(InputError, match="^data.path: train-frame-0123456789abcdef is in-memory data of another"):
        load_bundle(cfg)
