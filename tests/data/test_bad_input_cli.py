"""Bad config, data and training input through the command line: exit 2, one line naming the key, column or file,
no traceback, input unchanged; and small group cells reported in report.json. Subprocesses run this checkout's
code in a temporary folder (``--engine local``, tracking off)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.commands import command_env, tda_clean
from tests.tables import make_table, table_config



def _cli(tmp_path: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(tda_clean(*args), cwd=tmp_path, env=command_env(), text=True, capture_output=True,
                          timeout=timeout)


def _refused(tmp_path: Path, *args: str, inputs: tuple[Path, ...] = ()) -> str:
    """Run; expect exit 2, no traceback, inputs byte-identical; return the one error line."""
    before = [p.read_bytes() for p in inputs]
    proc = _cli(tmp_path, *args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("tda-clean: error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert [p.read_bytes() for p in inputs] == before
    return errors[0].removeprefix("tda-clean: error: ")


@pytest.fixture
def table(tmp_path: Path) -> tuple[Path, Path]:
    """A CSV (groups sex x site, a rare site) and its config; returns (config, csv)."""
    frame = make_table()
    frame["site"] = np.where(np.arange(len(frame)) % 200 == 0, "rare", "common")
    csv = tmp_path / "t.csv"
    frame.to_csv(csv, index=False)
    config = table_config(csv)
    config["data"]["groups"] = ["sex", "site"]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, csv


LOCAL = ("--engine", "local", "--set", "tracking.enabled=false")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("overrides, expected", [
    (["name=[unclosed"], "--set name: not valid YAML (expected ',' or ']', but got '<stream end>'"),
    ([f"seed={2**70}"], "seed: Input should be less than 2147483648"),
    (["seed=-1"], "seed: Input should be greater than or equal to 0"),
    (["data.features=[age, label]"], "data.features: 'label' is the label or id column"),
    (["scenario={kind: class_flip, source: 1, target: 0, rate: 1.0}"], "scenario.rate: Input should be less than 1"),
    (["action.kind=recommended"], "action.kind: 'recommended' follows the detector's recommendation; "
                                  "detector.kind=cleanlab makes none (use remove or relabel)"),
], ids=["unclosed", "seed-2**70", "seed--1", "label-as-feature", "class-flip-rate-1", "recommended-no-recommender"])
def test_validate_refuses_bad_values_naming_the_key(tmp_path, table, overrides, expected):
    path, csv = table
    args = [a for item in overrides for a in ("--set", item)]
    assert expected in _refused(tmp_path, "validate", str(path), *args, inputs=(path, csv))


@pytest.mark.timeout(120)
def test_binary_config_and_alias_bomb_name_the_file(tmp_path):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)))
    assert _refused(tmp_path, "validate", str(binary), inputs=(binary,)).startswith(f"{binary}: not valid YAML (")
    bomb = tmp_path / "bomb.yaml"  # 10**9 strings once expanded
    bomb.write_text("\n".join(["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"] + [
        f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 10)]))
    assert _refused(tmp_path, "validate", str(bomb), inputs=(bomb,)).startswith(f"{bomb}: expands to more than")


@pytest.mark.timeout(300)
def test_run_refuses_infinite_feature_naming_column_and_row(tmp_path, table):
    path, csv = table
    frame = pd.read_csv(csv)
    frame.loc[7, "score"] = np.inf
    bad = tmp_path / "inf.csv"
    frame.to_csv(bad, index=False)
    message = _refused(tmp_path, "run", str(path), *LOCAL, "--set", f"data.path={bad}", "--output", "out",
                       inputs=(path, bad))
    assert message == "feature columns with infinite values: 'score' (1) first at row 7"
    assert not (tmp_path / "out").exists()  # no half-written run folder


@pytest.mark.timeout(300)
def test_run_with_exploding_learning_rate_stops_naming_train_lr(tmp_path, table):
    path, csv = table
    message = _refused(tmp_path, "run", str(path), *LOCAL, "--set", "model.kind=mlp", "--set", "train.optimizer=adam",
                       "--set", "train.lr=1e9", "--output", "out", inputs=(path, csv))
    assert message.startswith("train: the loss diverged (") and message.endswith("lower train.lr (now 1e+09)")
    assert not (tmp_path / "out").exists()  # no half-written run folder


@pytest.mark.timeout(300)
def test_run_refuses_equalized_odds_objective_on_three_classes(tmp_path, table):
    path, csv = table
    frame = pd.read_csv(csv)
    frame["label"] = np.arange(len(frame)) % 3
    three = tmp_path / "three.csv"
    frame.to_csv(three, index=False)
    message = _refused(tmp_path, "run", str(path), *LOCAL, "--set", f"data.path={three}",
                       "--set", "scenario={kind: none}",
                       "--set", "detector={kind: harmful, objective: equalized_odds_gap}",
                       "--output", "out", inputs=(path, three))
    assert message == "detector.objective: equalized_odds_gap needs binary labels; the data has 3 classes"


@pytest.mark.timeout(300)
def test_run_reports_small_group_cells_and_leaves_them_out_of_worst_group(tmp_path, table):
    path, csv = table
    # about group cells, not the gate (relabeling widens a fairness gap here, which the default gate blocks: exit 3)
    proc = _cli(tmp_path, "run", str(path), *LOCAL, "--set", "gate.no_regression=false", "--output", "out")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    small = report["dataset"]["small_groups"]
    assert small == ["sex=F&site=rare"]  # 6 rare rows in all; the F cell has a handful of test rows (< 20)
    for stage in ("before", "after"):
        metrics = report[stage]
        assert f"accuracy_{small[0]}" in metrics  # still reported under its own name
        kept = [v for k, v in metrics.items() if k.startswith("accuracy_") and "&" in k and k[9:] not in small]
        assert metrics["worst_group_accuracy"] == min(kept)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("gate, min_size, expected", [
    ("max_equalized_odds_difference=0.2", 150,
     "gate.max_equalized_odds_difference: equalized_odds_difference needs 2 test group cells with at least "
     "evaluation.min_group_size=150 rows; the test split has 1, too small (test rows): 'sex=F&site=common' (122), "
     "'sex=F&site=rare' (1); lower evaluation.min_group_size or unset gate.max_equalized_odds_difference"),
    ("min_worst_group_accuracy=0.5", 1000,
     "gate.min_worst_group_accuracy: worst_group_accuracy needs 1 test group cell with at least "
     "evaluation.min_group_size=1000 rows; the test split has 0, too small (test rows): 'sex=F&site=common' (122), "
     "'sex=F&site=rare' (1), 'sex=M&site=common' (177); lower evaluation.min_group_size or unset "
     "gate.min_worst_group_accuracy"),
], ids=["equalized-odds", "worst-group"])
def test_run_refuses_fairness_gate_on_too_small_cells_naming_them(tmp_path, table, gate, min_size, expected):
    """Small cells alone are reported (test above); a fairness gate the test split cannot measure is refused up
    front, before any training, naming the cells."""
    path, csv = table
    message = _refused(tmp_path, "run", str(path), *LOCAL, "--set", f"gate.{gate}",
                       "--set", f"evaluation.min_group_size={min_size}", "--output", "out", inputs=(path, csv))
    assert message == expected
    assert not (tmp_path / "out").exists()  # no half-written run folder


@pytest.fixture
def digits_config(tmp_path: Path) -> Path:
    path = tmp_path / "digits.yaml"
    path.write_text(yaml.safe_dump({"seed": 0, "data": {"kind": "digits"}, "tracking": {"enabled": False}}))
    return path


@pytest.mark.timeout(300)
@pytest.mark.parametrize("scenario, expected", [
    ("{kind: badnets, target: 0, rate: 0.05, patch_size: 9}",
     "scenario.patch_size: 9 does not fit images of size (8, 8)"),
    ("{kind: badnets, target: 10, rate: 0.05}", "scenario.target: class 10 not in 0..9"),
    ("{kind: class_flip, source: 1, target: 12, rate: 0.5}", "scenario.target: class 12 not in 0..9"),
], ids=["trigger-larger-than-image", "badnets-target-not-a-class", "flip-target-not-a-class"])
def test_run_refuses_scenario_that_does_not_fit_the_data(tmp_path, digits_config, scenario, expected):
    message = _refused(tmp_path, "run", str(digits_config), *LOCAL, "--set", f"scenario={scenario}",
                       "--output", "out", inputs=(digits_config,))
    assert message == expected
    assert not (tmp_path / "out").exists()  # no half-written run folder
