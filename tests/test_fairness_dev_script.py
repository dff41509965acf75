"""benchmarks/fairness_dev.py: the variant grammar of the development sweep (no data needed)."""
from __future__ import annotations

import importlib
import sys

import pytest

from tests.commands import REPO


@pytest.fixture(scope="module")
def dev():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        yield importlib.import_module("fairness_dev")
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def test_variant_defaults_match_the_suite(dev):
    v = dev.parse_variant("f0.025")
    assert v["fraction"] == 0.025 and v["rounds"] == 3 and v["iters"] == 30 and v["temperature"] == 0.3
    assert v["objective"] == "equalized_odds_gap" and not v["relabel"] and v["one"] is None


def test_variant_options(dev):
    v = dev.parse_variant("f0.03:r5:i100:t1:obj=worst_group_loss:relabel:one=race_g")
    assert (v["fraction"], v["rounds"], v["iters"], v["temperature"]) == (0.03, 5, 100, 1.0)
    assert v["objective"] == "worst_group_loss" and v["relabel"] and v["one"] == "race_g"
    assert v["name"] == "f0.03:r5:i100:t1:obj=worst_group_loss:relabel:one=race_g"


def test_unknown_option_is_named(dev):
    with pytest.raises(ValueError, match="'x9'"):
        dev.parse_variant("f0.02:x9")
