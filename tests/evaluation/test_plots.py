"""The before/after chart colours each metric by its direction: a widening fairness gap or an accuracy drop is red
(worse), a narrowing gap or an accuracy gain green (better)."""
from __future__ import annotations

import numpy as np
import pytest

from tda_clean.evaluation.plots import BETTER, NEUTRAL, WORSE, after_colour, plot_before_after

BEFORE = {"accuracy": 0.8186, "worst_group_accuracy": 0.7669, "equalized_odds_difference": 0.2058,
          "demographic_parity_difference": 0.0862}


@pytest.mark.parametrize("metric, before, after, colour", [
    ("demographic_parity_difference", 0.0862, 0.1630, WORSE),  # lower is better: a wider gap is a regression
    ("equalized_odds_difference", 0.2058, 0.1782, BETTER),
    ("attack_success_rate", 0.9, 0.01, BETTER),
    ("accuracy", 0.85, 0.839, WORSE),
    ("accuracy_sex=F", 0.7, 0.75, BETTER),
    ("worst_group_accuracy", 0.7, 0.7, NEUTRAL),
    ("accuracy", float("nan"), 0.8, NEUTRAL),
])
def test_after_colour_follows_the_metric_direction(metric, before, after, colour):
    assert after_colour(metric, before, after) == colour


def _has_colour(png, colour: str) -> bool:
    import matplotlib.colors
    import matplotlib.image

    rgb = np.array(matplotlib.colors.to_rgb(colour))
    pixels = matplotlib.image.imread(png)[..., :3]
    return bool((np.abs(pixels - rgb).max(axis=-1) < 0.02).sum() > 200)  # a bar, not an anti-aliased edge


def test_a_regression_is_drawn_red_and_only_then(tmp_path):
    worse = dict(BEFORE, accuracy=0.8411, demographic_parity_difference=0.1630)
    plot_before_after(BEFORE, worse, tmp_path / "worse.png", title="quickstart: cleanlab → relabel")
    assert _has_colour(tmp_path / "worse.png", WORSE) and _has_colour(tmp_path / "worse.png", BETTER)
    better = dict(BEFORE, accuracy=0.8411, demographic_parity_difference=0.05)
    plot_before_after(BEFORE, better, tmp_path / "better.png")
    assert not _has_colour(tmp_path / "better.png", WORSE) and _has_colour(tmp_path / "better.png", BETTER)
