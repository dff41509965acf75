"""The command's surface: help on every command and argument, ``--version``, bundled configs usable by name."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from tda_clean import __version__
from tda_clean.cli import _parser, main
from tda_clean.config.bundled import bundled_configs, resolve_config
from tda_clean.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_command_and_argument_has_help():
    parser = _parser()
    assert "examples:" in parser.epilog and "exit codes:" in parser.epilog and parser.description
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helped = {choice.dest for choice in sub._choices_actions if choice.help}
    commands = _subparsers(parser)
    assert set(commands) == {"run", "validate", "configs", "serve", "review", "apply"} == helped
    for name, command in commands.items():
        assert command.description, name
        missing = [a.dest for a in command._actions if not a.help]
        assert missing == [], f"{name}: arguments without help: {missing}"
        assert f"tda-clean {name}" in parser.epilog, f"no example of {name}"


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"tda-clean {__version__}"


def test_bundled_configs_are_the_repository_configs():
    assert {name: path.resolve() for name, path in bundled_configs().items()} == {
        p.stem: p.resolve() for p in sorted((REPO / "configs").glob("*.yaml"))}


def test_a_config_name_resolves_to_the_bundled_file_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    expected = (REPO / "configs" / "quickstart.yaml").resolve()
    assert resolve_config("quickstart").resolve() == expected
    assert resolve_config("quickstart.yaml").resolve() == expected
    (tmp_path / "quickstart.yaml").write_text("name: mine\n")  # a file of that name wins
    assert resolve_config("quickstart.yaml") == Path("quickstart.yaml")
    with pytest.raises(InputError, match=r"config file not found: nope .*bundled: .*quickstart"):
        resolve_config("nope")
    with pytest.raises(InputError, match="config file not found: sub/quickstart.yaml"):
        resolve_config("sub/quickstart.yaml")  # a path is never looked up by name


def test_validate_and_configs_commands_by_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "quickstart", "--set", "train.epochs=3"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "quickstart"
    assert main(["configs"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listing[: len(bundled_configs())]] == list(bundled_configs())
    assert main(["configs", "quickstart"]) == 0
    assert capsys.readouterr().out == (REPO / "configs" / "quickstart.yaml").read_text()
    assert main(["configs", "nope"]) == 2
    assert capsys.readouterr().err.startswith("tda-clean: error: configs: no bundled config 'nope'; bundled: ")
    assert main(["run", "nope", "--engine", "local"]) == 2
    assert "config file not found: nope" in capsys.readouterr().err


def test_relative_paths_of_a_bundled_config_name_files_next_to_it(tmp_path, monkeypatch, capsys):
    """A bundled config read by name resolves its relative paths against its own folder, not the cwd."""
    import yaml

    from tests.tables import table_config, write_table

    shipped = tmp_path / "site-packages" / "configs"
    shipped.mkdir(parents=True)
    write_table(shipped / "table.csv")
    config = table_config(shipped / "table.csv")
    config["data"]["path"] = "table.csv"
    (shipped / "example.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setattr("tda_clean.config.bundled.bundled_dir", lambda: shipped)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    from tda_clean.config import load_config

    assert Path(load_config(resolve_config("example")).data.path) == shipped / "table.csv"
    assert main(["run", "example", "--engine", "local", "--output", str(tmp_path / "run")]) == 0
    assert "gate: passed" in capsys.readouterr().out
