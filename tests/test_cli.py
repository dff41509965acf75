"""The command line: exit codes, one-line errors naming the key/column/path, untouched inputs, and no MLflow
run left unfinished when the data turns out to be bad."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tda_clean.cli import main
from tests.commands import command_env, tda_clean
from tests.tables import make_table, table_config, write_table


def _write_config(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line_error(err: str, *fragments: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.startswith("tda-clean: error:")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_validate_prints_hash(tmp_path, capsys):
    cfg = _write_config(tmp_path, table_config(write_table(tmp_path / "t.csv")))
    code, out, _ = _run(capsys, "validate", str(cfg))
    assert code == 0
    assert len(json.loads(out)["config_hash"]) == 16


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        (lambda c: c["detector"].update(foo=1), ["detector.foo: unknown key"]),
        (lambda c: c["train"].update(epochs="many"), ["train.epochs", "integer"]),
        (lambda c: c["train"].update(optimizer="sgd"), ["train.optimizer", "'lbfgs' or 'adam'"]),
        (lambda c: c["model"].update(kind="forest"), ["model", "'logistic', 'mlp', 'cnn'"]),
    ],
    ids=["unknown-key", "wrong-type", "enum", "unknown-kind"],
)
def test_bad_config_exits_2(tmp_path, capsys, monkeypatch, change, fragments):
    monkeypatch.chdir(tmp_path)  # the default run folder is ./runs: look in a folder no earlier command used
    config = table_config(write_table(tmp_path / "t.csv"))
    change(config)
    code, _, err = _run(capsys, "run", str(_write_config(tmp_path, config)), "--engine", "local")
    assert code == 2
    _assert_one_line_error(err, *fragments)
    assert not (tmp_path / "runs").exists()


def test_bad_override_exits_2(tmp_path, capsys):
    cfg = _write_config(tmp_path, table_config(write_table(tmp_path / "t.csv")))
    code, _, err = _run(capsys, "validate", str(cfg), "--set", "scenario.rate=2")
    assert code == 2
    _assert_one_line_error(err, "scenario.rate")


def _frame_nan(df):
    df.loc[3, "score"] = np.nan
    return df


BAD_DATA = {
    "missing-file": (None, {"path": "nope.csv"}, ["data.path", "nope.csv"]),
    "missing-label": (None, {"label": "target"}, ["'target'", "available: age, income"]),
    "missing-group": (None, {"groups": ["sex", "gender"]}, ["data.groups", "'gender'", "available:"]),
    "non-integer-label": (lambda df: df.assign(label=df.label + 0.5), {}, ["'label'", "integer class ids"]),
    "single-class": (lambda df: df.assign(label=1), {}, ["'label'", "single class"]),
    "nan-feature": (_frame_nan, {}, ["'score'", "missing values"]),
    "empty": (lambda df: df.iloc[:0], {}, ["no rows"]),
    "group-not-in-test": (lambda df: df.assign(region=np.where(np.arange(len(df)) == 5, "island", df.region)), {},
                          ["'island'", "no rows in the test split"]),
}


@pytest.mark.parametrize("case", list(BAD_DATA), ids=list(BAD_DATA))
def test_bad_data_exits_2_and_marks_run_failed(tmp_path, capsys, mlflow_uri, case):
    edit, data_changes, fragments = BAD_DATA[case]
    frame = make_table()
    csv = write_table(tmp_path / "t.csv", edit(frame) if edit else frame)
    original = csv.read_bytes()
    config = table_config(csv, mlflow_uri)
    config["data"].update({k: (str(tmp_path / v) if k == "path" else v) for k, v in data_changes.items()})
    code, _, err = _run(capsys, "run", str(_write_config(tmp_path, config)), "--engine", "local",
                        "--output", str(tmp_path / "run"))
    assert code == 2
    _assert_one_line_error(err, *fragments)
    assert csv.read_bytes() == original
    assert not (tmp_path / "run" / "report.json").exists()
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri)
    experiment = client.get_experiment_by_name("test")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    if case == "missing-file":  # found before any run starts
        assert runs == []
        return
    assert [r.info.status for r in runs] == ["FAILED"]
    assert fragments[0] in runs[0].data.tags["error"]


def test_console_script_exit_code_and_single_line(tmp_path):
    """The installed entry point, as a user runs it: exit code 2 and exactly one line on stderr."""
    config = table_config(write_table(tmp_path / "t.csv"))
    config["detector"]["foo"] = 1
    proc = subprocess.run(tda_clean("run", str(_write_config(tmp_path, config))), env=command_env(),
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "detector.foo: unknown key" in proc.stderr


def test_import_does_not_load_prefect_or_mlflow():
    code = "import tda_clean, tda_clean.pipeline, sys; assert 'prefect' not in sys.modules and 'mlflow' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_local_run_prints_table_and_gate_exit_code(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = table_config(write_table(tmp_path / "t.csv"))
    config["gate"] = {"min_accuracy": 0.999}
    code, out, _ = _run(capsys, "run", str(_write_config(tmp_path, config)), "--engine", "local",
                        "--output", str(tmp_path / "run"))
    assert code == 3
    assert "gate: FAILED" in out and "accuracy" in out
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["gate"]["passed"] is False and "gate.min_accuracy" in report["gate"]["reasons"][0]


def test_library_cli_without_the_flows_says_which_command_to_use(tmp_path, capsys):
    """tda_clean.cli never imports the flows: the Prefect engine and serve come from flows/cli.py."""
    config = str(_write_config(tmp_path, table_config(write_table(tmp_path / "t.csv"))))
    for argv in (["run", config], ["serve", config, "--cron", "0 2 * * *"]):
        code, _, err = _run(capsys, *argv)
        assert code == 2
        _assert_one_line_error(err, f"{argv[0]}: needs the Prefect flows: use the `tda-clean` command")
