"""What the MLflow UI shows for a run: the parent's name and its Markdown description."""
from __future__ import annotations

from datetime import datetime

from tda_clean.config import parse_config
from tda_clean.tracking.describe import description, outcome_name, run_title

CONFIG = parse_config({"name": "adult-clean", "data": {"kind": "digits"}, "detector": {"kind": "cleanlab"},
                       "action": {"kind": "unlearn", "method": "retrain"}})
REPORT = {
    "gate": {"passed": False, "reasons": ["accuracy regressed: 0.9500 -> 0.9389 (-0.0111; higher is better, "
                                          "gate.tolerance 0.0)"]},
    "selection": {"detector": "cleanlab", "n_flagged": 12, "precision": 0.5, "recall": 0.25, "n_true": 24},
    "actions": {"removed": 0, "unlearned": 12},
    "before": {"accuracy": 0.95, "equalized_odds_difference": 0.1, "accuracy_g=a": 0.9},
    "after": {"accuracy": 0.9389, "equalized_odds_difference": 0.05, "accuracy_g=a": 0.9},
    "run_dir": "runs/x",
}


def test_run_name_says_what_was_done_when_and_how_it_ended():
    title = run_title(CONFIG, datetime(2026, 11, 30, 7, 5))
    assert title == "adult-clean · cleanlab → unlearn (retrain) · 2026-11-30 07:05"
    assert outcome_name(title, "failed") == f"{title} · gate FAILED"
    assert outcome_name(title, "pending") == f"{title} · awaiting review"


def test_description_puts_the_gate_decision_first_and_links_the_model():
    text = description(CONFIG, REPORT, version="3", alias=None)
    lines = text.splitlines()
    assert lines[0] == "### adult-clean: cleanlab → unlearn (retrain)"
    assert lines[2] == "**Gate FAILED**" and lines[3].startswith("- accuracy regressed")
    assert "flagged 12 training rows (precision 0.500, recall 0.250 on 24 corrupted rows); actions: unlearned 12." in text
    assert "[`adult-clean` version 3](#/models/adult-clean/versions/3) (`models:/adult-clean/3`)" in text
    assert "`release` alias was **not** moved" in text
    assert "| accuracy | ↑ higher | 0.9500 | 0.9389 | -0.0111 | worse |" in text
    assert "| equalized_odds_difference | ↓ lower | 0.1000 | 0.0500 | -0.0500 | better |" in text
    assert "| accuracy_g=a | ↑ higher | 0.9000 | 0.9000 | +0.0000 | same |" in text
    passed = description(CONFIG, {**REPORT, "gate": {"passed": True, "reasons": []}}, version="4", alias="release")
    assert "**Gate passed**" in passed and "alias `release` now points to it (`models:/adult-clean@release`)" in passed
