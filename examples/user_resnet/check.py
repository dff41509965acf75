"""Score a run of config.yaml against the poisons prepare.py planted.

    python check.py runs/user-resnet data
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

run, data = Path(sys.argv[1]), Path(sys.argv[2])
report = json.loads((run / "report.json").read_text())
train = {str(f.resolve()) for f in (data / "train").glob("*/*.png")}
removed = train - set(pd.read_csv(run / "cleaned" / "manifest.csv")["path"])
poisoned = set((data / "poisoned.txt").read_text().split())
found = len(removed & poisoned)
print(json.dumps({
    "flagged": len(removed), "poisoned": len(poisoned), "found": found,
    "precision": round(found / max(len(removed), 1), 3), "recall": round(found / max(len(poisoned), 1), 3),
    "accuracy_before": report["before"]["accuracy"], "accuracy_after": report["after"]["accuracy"],
    "influence_params": report["selection"].get("influence_params"),
}, indent=1))
