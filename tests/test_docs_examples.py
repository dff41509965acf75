"""Every Python block of docs/python-api.md runs as written (in a fresh interpreter, from a temporary folder)."""
from __future__ import annotations

import re
import subprocess
import sys

from tests.commands import REPO, command_env


def test_python_api_page_runs(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "python-api.md").read_text(), flags=re.S)
    assert blocks, "docs/python-api.md has no python block"
    for i, block in enumerate(blocks):
        script = tmp_path / f"block{i}.py"
        script.write_text(block)
        proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=command_env(), capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
