"""The run folder: where every stage writes its outputs, and the small context stages pass around."""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tda_clean.config import RunConfig


@dataclass(frozen=True)
class RunContext:
    """Small and picklable: what every stage needs to find its inputs and write its outputs."""

    config: RunConfig
    run_dir: Path

    def path(self, name: str) -> Path:
        return self.run_dir / name


def create_run_dir(config: RunConfig, output: str | Path | None = None) -> RunContext:
    """``output`` or a fresh ``runs/<name>-<UTC time>-<config hash>`` folder, with the resolved config in it."""
    if output is None:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        output = Path("runs") / f"{config.name}-{stamp}-{config.config_hash()[:8]}"
    run_dir = Path(output)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return RunContext(config, run_dir)


def write_json_atomic(path: Path, payload: Any) -> Path:
    """Write JSON to a temporary file in the same folder and rename it: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=False, default=float)
    os.replace(tmp, path)
    return path
