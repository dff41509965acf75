"""The run folder: --fresh deletes only what a run wrote, the default folder stays under runs/, every write is
atomic and a failed one (read-only, full disk, a file in the way) is one InputError naming the path with nothing
half-written, and the data fingerprint follows the bytes, not the file sizes."""
from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
import yaml

from tda_clean import run_dir as rd
from tda_clean.cli import main
from tda_clean.config import FashionMNISTSource, parse_config
from tda_clean.data.sources import FASHION_FILES
from tda_clean.errors import InputError
from tda_clean.pipeline import run_pipeline
from tests.tables import table_config, write_table

FAST = {"train": {"optimizer": "lbfgs", "epochs": 5}, "detector": {"kind": "cleanlab", "folds": 2},
        "action": {"kind": "remove"}, "tracking": {"enabled": False}}


@pytest.fixture
def config(tmp_path):
    raw = table_config(write_table(tmp_path / "t.csv"))
    return parse_config({**raw, **FAST})


def _fake_run(path: Path) -> Path:
    """A folder as a killed run leaves it: identity, stage markers, a model, an interrupted atomic write."""
    (path / "stages").mkdir(parents=True)
    (path / rd.IDENTITY).write_text("{}")
    (path / "stages" / "load.json").write_text("{}")
    (path / "model_before.pt").write_bytes(b"x")
    (path / ".data.npz.tmp-1234abcd.npz").write_bytes(b"half")
    return path


def test_foreign_entry_accepts_only_what_a_run_writes(tmp_path):
    run = _fake_run(tmp_path / "run")
    assert rd.foreign_entry(run) is None
    (run / "review").mkdir()
    (run / "review" / "notes.txt").write_text("mine")
    assert rd.foreign_entry(run) == run / "review" / "notes.txt"
    assert rd.foreign_entry(tmp_path) == tmp_path  # no identity file: not a run folder at all
    (tmp_path / "link").symlink_to(run, target_is_directory=True)
    assert rd.foreign_entry(tmp_path / "link") == tmp_path / "link"


@pytest.mark.parametrize("name", ["model_backup.pt", "stages/old/x.json", "review/.x.tmp-1/keep.txt", "a.tmp-1"])
def test_patterns_match_segment_by_segment(tmp_path, name):
    """A wildcard never crosses a folder, and only the files a run writes count: a user's model_backup.pt or a
    file nested below a pattern's folder is foreign."""
    run = _fake_run(tmp_path / "run")
    (run / ".data.npz.tmp-1a2b3c4d.npz").write_text("an interrupted atomic write")
    assert rd.foreign_entry(run) is None
    (run / name).parent.mkdir(parents=True, exist_ok=True)
    (run / name).write_text("mine")
    assert rd.foreign_entry(run) is not None


@pytest.mark.parametrize(("case", "why"), [("user-file-in-run-folder", r"\S*precious.txt was not written by a run"),
                                           ("not-a-run-folder", "it is not one")])
def test_fresh_never_deletes_a_folder_with_foreign_files(tmp_path, config, capsys, case, why):
    out = _fake_run(tmp_path / "out") if case == "user-file-in-run-folder" else tmp_path / "out"
    out.mkdir(exist_ok=True)
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(InputError, match=rf"--output \S*out: --fresh deletes only tda-clean run folders, and {why};"):
        rd.open_run_dir(config, out, fresh=True)
    assert (out / "precious.txt").read_text() == "keep me"
    # the command: exit 2, one line naming the path, nothing deleted
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    assert main(["run", str(cfg_file), "--engine", "local", "--output", str(out), "--fresh"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"--output {out}: --fresh" in err and (out / "precious.txt").exists()


def test_fresh_flow_parameters_are_as_safe(tmp_path, config):
    """A deployment run's ``output``/``fresh`` parameters go through the same check (before any task runs)."""
    from flows.clean import clean

    out = tmp_path / "worker-folder"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(InputError, match="--fresh deletes only tda-clean run folders, and it is not one"):
        clean.fn(config, output=str(out), fresh=True)
    assert (out / "precious.txt").read_text() == "keep me"


def test_fresh_wipes_a_run_folder(tmp_path, config):
    first = run_pipeline(config, tmp_path / "run")
    assert run_pipeline(config, tmp_path / "run", fresh=True)["resumed_stages"] == [] and first["resumed_stages"] == []
    assert not list((tmp_path / "run").rglob("*.tmp-*"))
    assert rd.foreign_entry(tmp_path / "run") is None  # everything a full run writes is in OWNED


@pytest.mark.parametrize("name", ["../../x", "a/b"])
def test_name_cannot_put_the_run_folder_outside_runs(tmp_path, config, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=rf"^name {name!r}: names the run folder under runs/"):
        rd.open_run_dir(config.model_copy(update={"name": name}))
    assert list(tmp_path.iterdir()) == [tmp_path / "t.csv"]


def test_output_that_is_a_file_is_refused(tmp_path, config):
    (tmp_path / "out").write_text("a file")
    with pytest.raises(InputError, match=r"--output .*out: is a file, not a folder"):
        rd.open_run_dir(config, tmp_path / "out")
    assert (tmp_path / "out").read_text() == "a file"


def test_write_atomic_keeps_the_old_file_when_a_write_fails_half_way(tmp_path):
    target = tmp_path / "train_cleaned.npz"
    rd.write_atomic(target, lambda tmp: np.savez(tmp, a=np.arange(3)))

    def half(tmp: Path) -> None:
        tmp.write_bytes(b"PK\x03\x04 half a zip")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(InputError, match=r"train_cleaned.npz: cannot write \(No space left on device\)"):
        rd.write_atomic(target, half)
    with np.load(target) as f:
        assert f["a"].tolist() == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["train_cleaned.npz"]  # no temporary file left


@pytest.mark.parametrize(("code", "text"), [(errno.ENOSPC, "No space left on device"),
                                            (errno.EROFS, "Read-only file system")])
def test_full_or_read_only_disk_exits_2_naming_the_path(tmp_path, config, monkeypatch, capsys, code, text):
    """Every stage writes through ``write_atomic``: a failing disk at the act stage is exit 2, no cleaned data."""
    real = rd.write_atomic

    def failing(path, write):
        return real(path, _raise(code, text) if Path(path).name == rd.CLEANED else write)

    monkeypatch.setattr(rd, "write_atomic", failing)
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    assert main(["run", str(cfg_file), "--engine", "local", "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"tda-clean: error: {tmp_path / 'run' / rd.CLEANED}: cannot write ({text})"
    assert not (tmp_path / "run" / rd.CLEANED).exists() and not list((tmp_path / "run").rglob("*.tmp-*"))
    assert not (tmp_path / "run" / "stages" / "act.json").exists()


def _raise(code: int, text: str):
    def write(tmp: Path) -> None:
        raise OSError(code, text)

    return write


def test_fingerprint_follows_the_bytes_not_the_sizes(tmp_path):
    """Fashion-MNIST idx files with one label changed (same size) are other data: no stale resume."""
    for name in FASHION_FILES:
        (tmp_path / name).write_bytes(bytes(64))
    source = FashionMNISTSource(path=tmp_path)
    before = rd.data_fingerprint(source)
    (tmp_path / FASHION_FILES[1]).write_bytes(bytes([1]) + bytes(63))  # one label changed, same size
    assert rd.data_fingerprint(source) != before


def test_bad_input_discards_only_a_run_folder_the_run_created(tmp_path):
    """``discard_new_run_dir`` deletes a folder the failed run created and nothing else: not a folder that existed
    before (a run to resume, or awaiting review), not one holding a file a run does not write."""
    from tda_clean.config import parse_config
    from tda_clean.run_dir import RunContext, discard_new_run_dir, open_run_dir

    config = parse_config({"data": {"kind": "digits"}, "tracking": {"enabled": False}})
    ctx = open_run_dir(config, tmp_path / "new")
    assert ctx.created and (tmp_path / "new" / "run.json").is_file()
    discard_new_run_dir(ctx)
    assert not (tmp_path / "new").exists() and list(tmp_path.iterdir()) == []

    ctx = open_run_dir(config, tmp_path / "again")
    reopened = open_run_dir(config, tmp_path / "again")  # the same run, resumed: not created by this call
    assert not reopened.created
    discard_new_run_dir(reopened)
    assert (tmp_path / "again" / "run.json").is_file()

    (tmp_path / "again" / "notes.txt").write_text("mine")
    discard_new_run_dir(RunContext(config, tmp_path / "again", created=True))
    assert (tmp_path / "again" / "notes.txt").read_text() == "mine"
