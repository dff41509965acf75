"""examples/dataframe_api runs end to end at small size: a DataFrame with string labels and groups, in memory,
through tda_clean.clean; confident learning removes flagged rows; the cleaned DataFrame holds more correct labels."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.commands import REPO, command_env


def test_dataframe_api_example_runs_at_small_size(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "examples" / "dataframe_api" / "run.py"), "--rows", "1500",
                          "--folds", "3", "--output", str(tmp_path / "run")], cwd=tmp_path, env=command_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout)
    assert summary["rows_train"] == 900 and summary["removed"] == 90 and summary["cleaned_rows"] == 810
    assert summary["precision"] > 0.3  # flips are 9% of the rows: a random pick of 90 has precision ~0.09
    assert summary["labels_correct_after"] > summary["labels_correct_before"]
    assert (tmp_path / "run" / "cleaned" / "train.parquet").is_file()
