"""``model.kind: python``: the user's own module (defined outside the package), checkpoint, loss and training
function, through the command line; and each way they can be wrong (exit 2, one line naming the key)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from tda_clean.cli import main
from tests.tables import table_config, write_table

USER_CODE = '''
import torch
from torch import nn
from torch.nn import functional as F


class Net(nn.Module):  # no module named "head": influence finds the last Linear
    def __init__(self, d, k):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d, 16), nn.LayerNorm(16), nn.ReLU())
        self.out = nn.Linear(16, k)

    def forward(self, x):
        return self.out(self.body(x))


def make_net(input_shape, n_classes):
    return Net(input_shape[0], n_classes)


def make_other(input_shape, n_classes):
    return nn.Sequential(nn.Linear(input_shape[0], n_classes))


def make_nothing(input_shape, n_classes):
    return 3


def smooth_loss(logits, y):
    return F.cross_entropy(logits, y, reduction="none", label_smoothing=0.05)


def mean_loss(logits, y):
    return F.cross_entropy(logits, y)
'''

TRAIN_CODE = '''
from pathlib import Path

import torch
import torch.nn.functional as F


def fit(model, train, val, *, seed):
    with open(Path(__file__).with_name("calls.txt"), "a") as f:
        f.write(f"{len(train.y)} {seed} {val is not None}\\n")
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(4):
        for idx in torch.randperm(len(train.y), generator=gen).split(128):
            opt.zero_grad()
            F.cross_entropy(model(train.X[idx]), train.y[idx]).backward()
            opt.step()


def broken(model, train, val, *, seed):
    raise ValueError("boom: the GPU ate my homework")
'''


def _user_run(tmp_path: Path, mlflow_uri: str | None = None, **model) -> tuple[Path, dict]:
    """A user's folder: code, a config naming it relative to the config's folder, a checkpoint when asked."""
    (tmp_path / "code").mkdir(exist_ok=True)
    (tmp_path / "code" / "my_models.py").write_text(USER_CODE)
    (tmp_path / "code" / "my_train.py").write_text(TRAIN_CODE)
    config = table_config(write_table(tmp_path / "t.csv"), mlflow_uri)
    config["model"] = {"kind": "python", "factory": "my_models:make_net", "code_dir": "code", **model}
    config["train"] = {"function": "my_train:fit", "device": "cpu"}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, config


def _checkpoint(tmp_path: Path, module: torch.nn.Module, name: str = "net.pt", whole: bool = False) -> str:
    torch.save(module if whole else module.state_dict(), tmp_path / name)
    return name


def _net(tmp_path: Path, factory: str = "make_net", seed: int = 0) -> torch.nn.Module:
    """The user's net, built as the pipeline builds it (the width of the preprocessed features)."""
    from tda_clean.config import load_config
    from tda_clean.data import load_bundle
    from tda_clean.models.user import import_object

    d = load_bundle(load_config(tmp_path / "config.yaml")).train.feature_shape[0]
    torch.manual_seed(seed)
    return import_object(f"my_models:{factory}", "model.factory", tmp_path / "code")((d,), 2)


def test_user_model_from_checkpoint_retrained_by_user_function(tmp_path, capsys):
    """The before-model IS the checkpoint (not trained); every retrain (cleanlab's 3 folds, the after-model) runs
    the user's function; the loss is the user's; the run completes with before/after."""
    path, _ = _user_run(tmp_path, checkpoint="net.pt", loss="my_models:smooth_loss")
    net = _net(tmp_path)
    _checkpoint(tmp_path, net)
    code = main(["run", str(path), "--engine", "local", "--output", str(tmp_path / "run")])
    assert code in (0, 3), capsys.readouterr().err
    calls = (tmp_path / "code" / "calls.txt").read_text().splitlines()
    assert len(calls) == 4 and all(c.endswith("True") for c in calls)  # 3 cleanlab folds + the after-model
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["before"]["accuracy"] > 0 and report["after"]["accuracy"] > 0.6
    saved = torch.load(tmp_path / "run" / "model_before.pt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in net.state_dict().items())
    stage = json.loads((tmp_path / "run" / "stages" / "train_before.json").read_text())
    assert stage["result"]["checkpoint"].endswith("net.pt") and stage["result"]["epochs"] == 0


BAD = {
    "factory-not-importable": ({"factory": "no_such_module:make"}, ["model.factory", "'no_such_module'"]),
    "factory-not-a-module": ({"factory": "my_models:make_nothing"}, ["model.factory", "returned a int",
                                                                      "not a torch.nn.Module"]),
    "checkpoint-keys": ({"checkpoint": "other.pt"}, ["model.checkpoint", "missing keys ['body.0.bias'",
                                                      "unexpected keys ['0.bias', '0.weight']"]),
    "pickled-checkpoint": ({"checkpoint": "whole.pt"}, ["model.checkpoint", "refused", "pickled"]),
    "loss-wrong-shape": ({"loss": "my_models:mean_loss"}, ["model.loss", "expected per-sample losses of shape"]),
    "training-function-raises": ({"train": "my_train:broken"}, ["train.function", "my_train:broken raised ValueError",
                                                                  "boom: the GPU ate my homework"]),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_user_model_exits_2_with_one_line(tmp_path, capsys, mlflow_uri, case):
    changes, fragments = BAD[case]
    changes = dict(changes)
    function = changes.pop("train", None)
    path, config = _user_run(tmp_path, mlflow_uri, **changes)
    _checkpoint(tmp_path, _net(tmp_path, "make_other"), "other.pt")
    _checkpoint(tmp_path, _net(tmp_path), "whole.pt", whole=True)
    if function:
        config["train"]["function"] = function
    if case == "loss-wrong-shape":
        config["train"] = {"device": "cpu", "optimizer": "adam", "epochs": 1}
    path.write_text(yaml.safe_dump(config))
    code = main(["run", str(path), "--engine", "local", "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("tda-clean: error:")]
    assert code == 2 and len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not (tmp_path / "run" / "report.json").exists()
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"] and fragments[0] in runs[0].data.tags["error"]


def test_code_dir_and_checkpoint_resolve_against_the_config_folder(tmp_path, monkeypatch):
    from tda_clean.config import load_config

    path, _ = _user_run(tmp_path, checkpoint="net.pt")
    monkeypatch.chdir("/")
    cfg = load_config(path)
    assert cfg.model.code_dir == tmp_path / "code" and cfg.model.checkpoint == tmp_path / "net.pt"
    assert cfg.train._model == cfg.model  # the user loss / code_dir reach every training
    import torch.nn.functional as F

    from tda_clean.models.trainer import training_objective

    logits, y = torch.randn(5, 2, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 1, 0, 1])
    assert torch.allclose(training_objective(cfg.train).loss(logits, y), F.cross_entropy(logits, y, reduction="none"))
    cfg = load_config(path, ["model.loss=my_models:smooth_loss"])
    expected = F.cross_entropy(logits, y, reduction="none", label_smoothing=0.05)
    assert torch.allclose(training_objective(cfg.train).loss(logits, y), expected)


@pytest.mark.parametrize("edit", ["factory", "function", "pred_probs"])
def test_editing_user_code_or_pred_probs_refuses_the_old_run_folder(tmp_path, edit):
    """The same config text over changed files (the user's factory / training function, the pred_probs .npy) is
    another run: the folder is refused, not resumed; unchanged files resume it."""
    import numpy as np

    from tda_clean.config import load_config
    from tda_clean.errors import InputError
    from tda_clean.run_dir import open_run_dir

    path, config = _user_run(tmp_path)
    np.save(tmp_path / "p.npy", np.full((4, 2), 0.5))
    config["detector"] = {"kind": "cleanlab", "pred_probs_path": "p.npy"}
    path.write_text(yaml.safe_dump(config))
    open_run_dir(load_config(path), tmp_path / "run")
    open_run_dir(load_config(path), tmp_path / "run")  # nothing changed: resumed
    if edit == "pred_probs":
        np.save(tmp_path / "p.npy", np.full((4, 2), 0.25))
    else:
        code = tmp_path / "code" / ("my_models.py" if edit == "factory" else "my_train.py")
        code.write_text(code.read_text() + "\n# edited\n")
    key = {"factory": "code", "function": "code", "pred_probs": "pred_probs"}[edit]
    with pytest.raises(InputError, match=rf"holds another run \({key}_fingerprint "):
        open_run_dir(load_config(path), tmp_path / "run")
