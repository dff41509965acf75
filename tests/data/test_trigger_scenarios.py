"""BadNets triggers of any position, size, pattern and blend: exact pixel geometry against hand-built masks,
backwards-compatible defaults, and bad geometry / target refused with one line naming the key (library and CLI)."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
import yaml

from tda_clean.config import BadNets, parse_config
from tda_clean.data import DataBundle, load_bundle
from tda_clean.data.scenarios import apply_scenario, apply_trigger, stamp_trigger, trigger_mask, trigger_patch
from tda_clean.errors import InputError
from tests.commands import command_env, tda_clean
from tests.unit_helpers import digits_config


@pytest.fixture(scope="module")
def clean_digits() -> DataBundle:
    return load_bundle(digits_config())


def _images(n: int = 4, shape=(8, 8), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, *shape)).astype(np.float32)


@pytest.mark.parametrize("size, value", [(1, 1.0), (2, 1.0), (3, 0.5), (2, 0.0)])
def test_defaults_reproduce_the_bottom_right_square(size, value):
    X = _images(shape=(2, 8, 8))
    np.testing.assert_array_equal(apply_trigger(X, BadNets(rate=0.1, patch_size=size, patch_value=value)),
                                  stamp_trigger(X, size, value))


@pytest.mark.parametrize("position, size, rows, cols", [
    ("top-left", 2, slice(0, 2), slice(0, 2)),
    ("top-right", 3, slice(0, 3), slice(5, 8)),
    ("bottom-left", (2, 3), slice(6, 8), slice(0, 3)),
    ("center", 2, slice(3, 5), slice(3, 5)),
    ((1, 4), (3, 2), slice(1, 4), slice(4, 6)),
    ((5, 0), 3, slice(5, 8), slice(0, 3)),
])
def test_position_and_size_cover_exactly_the_expected_pixels(position, size, rows, cols):
    cfg = BadNets(rate=0.1, patch_size=size, position=position, patch_value=0.25)
    expected = np.zeros((8, 8), dtype=bool)
    expected[rows, cols] = True
    np.testing.assert_array_equal(trigger_mask(cfg, (8, 8)), expected)
    X = _images()
    out = apply_trigger(X, cfg)
    assert np.all(out[:, expected] == np.float32(0.25))
    np.testing.assert_array_equal(out[:, ~expected], X[:, ~expected])      # nothing else touched
    assert not np.shares_memory(out, X)


def test_checkerboard_alternates_value_and_its_complement():
    patch = trigger_patch(BadNets(rate=0.1, pattern="checkerboard", patch_value=0.8), 3, 4)
    i, j = np.indices((3, 4))
    np.testing.assert_allclose(patch, np.where((i + j) % 2 == 0, 0.8, 0.2), rtol=0, atol=1e-7)


def test_random_pattern_is_seeded_and_in_range():
    cfg = BadNets(rate=0.1, patch_size=3, pattern="random", pattern_seed=5)
    a, b = trigger_patch(cfg, 3, 3), trigger_patch(cfg, 3, 3)
    np.testing.assert_array_equal(a, b)
    assert a.min() >= 0 and a.max() < 1 and len(np.unique(a)) == 9
    assert not np.array_equal(a, trigger_patch(cfg.model_copy(update={"pattern_seed": 6}), 3, 3))
    # the same pattern on every channel of a (n, C, H, W) image
    X = _images(shape=(3, 8, 8))
    out = apply_trigger(X, cfg.model_copy(update={"position": (2, 2)}))
    for c in range(3):
        np.testing.assert_array_equal(out[:, c, 2:5, 2:5], np.broadcast_to(a, (len(X), 3, 3)))


def test_alpha_blends_inside_the_patch_only():
    cfg = BadNets(rate=0.1, patch_size=2, position=(3, 1), pattern="random", alpha=0.3)
    X = _images()
    out = apply_trigger(X, cfg)
    patch = trigger_patch(cfg, 2, 2)
    np.testing.assert_allclose(out[:, 3:5, 1:3], 0.7 * X[:, 3:5, 1:3] + 0.3 * patch, rtol=0, atol=1e-6)
    mask = trigger_mask(cfg, (8, 8))
    np.testing.assert_array_equal(out[:, ~mask], X[:, ~mask])
    assert out.dtype == X.dtype


def test_scenario_poisons_with_the_configured_trigger(clean_digits):
    cfg = BadNets(target=6, rate=0.05, patch_size=(2, 3), position=(2, 3), pattern="checkerboard")
    bad = apply_scenario(clean_digits, cfg, seed=1)
    mask = trigger_mask(cfg, (8, 8))
    rows = np.flatnonzero(bad.corrupted_mask)
    assert len(rows) == round(0.05 * len(clean_digits.train)) and np.all(bad.train.y[rows] == 6)
    expected = trigger_patch(cfg, 2, 3)
    np.testing.assert_array_equal(bad.train.X[rows][:, 2:4, 3:6], np.broadcast_to(expected, (len(rows), 2, 3)))
    np.testing.assert_array_equal(bad.train.X[rows][:, ~mask], clean_digits.train.X[rows][:, ~mask])
    np.testing.assert_array_equal(bad.train.X[~bad.corrupted_mask], clean_digits.train.X[~bad.corrupted_mask])
    np.testing.assert_array_equal(bad.triggered_test.X[:, 2:4, 3:6],
                                  np.broadcast_to(expected, (len(bad.triggered_test), 2, 3)))
    assert np.all(bad.triggered_test.y != 6) and bad.attack_target == 6


@pytest.mark.parametrize("cfg, message", [
    (BadNets(rate=0.1, patch_size=3, position=(6, 0)), "scenario.position: a 3x3 patch at [6, 0] lies outside the 8x8 images"),
    (BadNets(rate=0.1, patch_size=(2, 5), position=(0, 4)), "scenario.position: a 2x5 patch at [0, 4] lies outside"),
    (BadNets(rate=0.1, patch_size=(2, 8)), "scenario.patch_size: (2, 8) does not fit images of size (8, 8)"),
    (BadNets(rate=0.1, patch_size=9, position="center"), "scenario.patch_size: 9 does not fit"),
    (BadNets(rate=0.1, target=10), "scenario.target: class 10 not in 0..9"),
])
def test_bad_geometry_and_target_are_refused_naming_the_key(clean_digits, cfg, message):
    with pytest.raises(InputError, match="^" + message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        apply_scenario(clean_digits, cfg, seed=0)


@pytest.mark.parametrize("scenario, key, message", [
    ({"position": [-1, 2]}, "scenario.position", "Input should be greater than or equal to 0"),
    ({"position": "middle"}, "scenario.position", "Input should be 'bottom-right', 'bottom-left'"),
    ({"patch_size": [0, 2]}, "scenario.patch_size", "Input should be greater than 0"),
    ({"alpha": 1.5}, "scenario.alpha", "Input should be less than or equal to 1"),
    ({"pattern": "stripes"}, "scenario.pattern", "Input should be 'solid', 'checkerboard' or 'random'"),
])
def test_bad_trigger_config_is_refused_naming_the_key(scenario, key, message):
    with pytest.raises(InputError) as err:
        parse_config({"data": {"kind": "digits"}, "scenario": {"kind": "badnets", "rate": 0.1, **scenario}})
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"config: {key}") and message in text, text


@pytest.mark.timeout(180)
@pytest.mark.parametrize("scenario, message", [
    ({"position": [5, 6], "patch_size": 3}, "scenario.position: a 3x3 patch at [5, 6] lies outside the 8x8 images"),
    ({"patch_size": 8}, "scenario.patch_size: 8 does not fit images of size (8, 8)"),
    ({"target": 12}, "scenario.target: class 12 not in 0..9"),
])
def test_cli_run_refuses_bad_trigger_with_one_line_and_exit_2(tmp_path, scenario, message):
    config = {"name": "bad-trigger", "data": {"kind": "digits"}, "tracking": {"enabled": False},
              "scenario": {"kind": "badnets", "rate": 0.05, **scenario}, "detector": {"kind": "random"}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run(tda_clean("run", str(path), "--engine", "local", "--output", str(tmp_path / "run")),
                          cwd=tmp_path, env=command_env(), text=True, capture_output=True, timeout=170)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("tda-clean: error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
