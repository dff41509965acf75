"""Corruption scenarios: exact ground-truth masks, untouched clean arrays, triggered test set, determinism."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from tda_clean.config import BadNets, Blended, ClassFlip, GroupFlip, UniformFlip
from tda_clean.data import DataBundle, load_bundle
from tda_clean.data.scenarios import apply_scenario, blend_pattern, stamp_trigger
from tda_clean.errors import InputError
from tests.unit_helpers import arrays_snapshot, assert_snapshot_equal, csv_config, digits_config, small_table


@pytest.fixture(scope="module")
def clean_digits() -> DataBundle:
    return load_bundle(digits_config())


@pytest.fixture(scope="module")
def clean_table(tmp_path_factory) -> DataBundle:
    path = Path(tmp_path_factory.mktemp("scenario")) / "t.csv"
    small_table(n=1000).to_csv(path, index=False)
    return load_bundle(csv_config(path, id_column="uid"))


def _check_label_flip(clean: DataBundle, bad: DataBundle, expected_count: int) -> np.ndarray:
    """Common checks for label-flip scenarios; returns the mask."""
    mask = bad.corrupted_mask
    assert mask.dtype == bool and mask.shape == (len(clean.train),)
    # the mask is exactly the set of rows whose label differs from the clean data
    np.testing.assert_array_equal(mask, bad.train.y != clean.train.y)
    assert int(mask.sum()) == expected_count == bad.info["n_corrupted"]
    np.testing.assert_array_equal(bad.clean_train_y, clean.train.y)
    # features, ids, groups and the other splits are the clean ones
    np.testing.assert_array_equal(bad.train.X, clean.train.X)
    np.testing.assert_array_equal(bad.train.row_id, clean.train.row_id)
    for split in ("val", "test"):
        np.testing.assert_array_equal(getattr(bad, split).y, getattr(clean, split).y)
        np.testing.assert_array_equal(getattr(bad, split).X, getattr(clean, split).X)
    assert not np.shares_memory(bad.train.y, clean.train.y)
    assert bad.triggered_test is None and bad.attack_target is None
    assert set(np.unique(bad.train.y)) <= set(range(clean.train.n_classes))
    return mask


# ----------------------------------------------------------------------------------------------- label flips
def test_uniform_flip_mask_exact_and_clean_unchanged(clean_digits):
    snap = arrays_snapshot(clean_digits)
    cfg = UniformFlip(rate=0.1)
    bad = apply_scenario(clean_digits, cfg, seed=0)
    n = len(clean_digits.train)
    mask = _check_label_flip(clean_digits, bad, int(round(0.1 * n)))
    assert bad.info["scenario"] == "uniform_flip"
    # flips go to other classes, spread over several targets
    new = bad.train.y[mask]
    assert len(np.unique(new)) >= 5
    assert_snapshot_equal(clean_digits, snap)


def test_uniform_flip_deterministic_by_seed(clean_digits):
    a = apply_scenario(clean_digits, UniformFlip(rate=0.1), seed=3)
    b = apply_scenario(clean_digits, UniformFlip(rate=0.1), seed=3)
    c = apply_scenario(clean_digits, UniformFlip(rate=0.1), seed=4)
    np.testing.assert_array_equal(a.corrupted_mask, b.corrupted_mask)
    np.testing.assert_array_equal(a.train.y, b.train.y)
    assert not np.array_equal(a.corrupted_mask, c.corrupted_mask)


def test_class_flip(clean_digits):
    snap = arrays_snapshot(clean_digits)
    bad = apply_scenario(clean_digits, ClassFlip(source=3, target=8, rate=0.5), seed=0)
    n3 = int((clean_digits.train.y == 3).sum())
    mask = _check_label_flip(clean_digits, bad, int(round(0.5 * n3)))
    assert np.all(clean_digits.train.y[mask] == 3) and np.all(bad.train.y[mask] == 8)
    # the other half of class 3 keeps its label
    assert int((bad.train.y == 3).sum()) == n3 - int(mask.sum())
    assert_snapshot_equal(clean_digits, snap)


def test_class_flip_that_empties_the_class_blames_scenario_rate(clean_digits):
    with pytest.raises(ValidationError, match="rate"):
        ClassFlip(source=1, target=7, rate=1.0)  # refused where it is declared
    snap = arrays_snapshot(clean_digits)
    with pytest.raises(InputError) as info:  # rounds to every row of the class
        apply_scenario(clean_digits, ClassFlip(source=1, target=7, rate=0.999), seed=0)
    assert str(info.value) == "scenario.rate: class_flip relabels every training row of class 1; lower the rate"
    assert_snapshot_equal(clean_digits, snap)


def test_group_flip(clean_table):
    snap = arrays_snapshot(clean_table)
    cfg = GroupFlip(column="sex", value="M", source=1, target=0, rate=0.3)
    bad = apply_scenario(clean_table, cfg, seed=0)
    train = clean_table.train
    candidates = (train.groups["sex"].to_numpy() == "M") & (train.y == 1)
    mask = _check_label_flip(clean_table, bad, int(round(0.3 * candidates.sum())))
    assert np.all(candidates[mask])  # only men with a positive label were touched
    assert np.all(bad.train.y[mask] == 0)
    assert_snapshot_equal(clean_table, snap)
    again = apply_scenario(clean_table, cfg, seed=0)
    np.testing.assert_array_equal(again.corrupted_mask, mask)
    other = apply_scenario(clean_table, cfg, seed=1)
    assert not np.array_equal(other.corrupted_mask, mask)


def test_load_bundle_applies_configured_scenario(clean_digits):
    bad = load_bundle(digits_config(scenario={"kind": "class_flip", "source": 2, "target": 5, "rate": 0.4}))
    ref = apply_scenario(clean_digits, ClassFlip(source=2, target=5, rate=0.4), seed=0)
    np.testing.assert_array_equal(bad.corrupted_mask, ref.corrupted_mask)
    np.testing.assert_array_equal(bad.train.y, ref.train.y)
    np.testing.assert_array_equal(bad.clean_train_y, clean_digits.train.y)


# ----------------------------------------------------------------------------------------------- badnets
def test_badnets_mask_exact_and_patch(clean_digits):
    snap = arrays_snapshot(clean_digits)
    cfg = BadNets(target=0, rate=0.05, patch_size=2, patch_value=1.0)
    bad = apply_scenario(clean_digits, cfg, seed=0)
    clean = clean_digits.train
    mask = bad.corrupted_mask
    n = len(clean)
    assert int(mask.sum()) == int(round(0.05 * n)) == bad.info["n_corrupted"]
    # rows whose pixels changed == rows whose label changed == mask
    pixels_changed = np.any(bad.train.X != clean.X, axis=(1, 2))
    np.testing.assert_array_equal(pixels_changed, mask)
    np.testing.assert_array_equal(bad.train.y != clean.y, mask)
    assert np.all(clean.y[mask] != 0) and np.all(bad.train.y[mask] == 0)
    # the patch is the 2x2 bottom-right corner and nothing else
    assert np.all(bad.train.X[mask][:, -2:, -2:] == 1.0)
    np.testing.assert_array_equal(bad.train.X[mask][:, :-2, :], clean.X[mask][:, :-2, :])
    np.testing.assert_array_equal(bad.train.X[mask][:, :, :-2], clean.X[mask][:, :, :-2])
    np.testing.assert_array_equal(bad.clean_train_y, clean.y)
    assert bad.attack_target == 0
    assert_snapshot_equal(clean_digits, snap)
    assert not np.shares_memory(bad.train.X, clean.X)


def test_badnets_triggered_test_set(clean_digits):
    bad = apply_scenario(clean_digits, BadNets(target=3, rate=0.05, patch_size=3, patch_value=0.5), seed=0)
    test, trig = clean_digits.test, bad.triggered_test
    keep = test.y != 3
    assert len(trig) == int(keep.sum()) and not np.any(trig.y == 3)
    np.testing.assert_array_equal(trig.row_id, test.row_id[keep])
    np.testing.assert_array_equal(trig.y, test.y[keep])  # TRUE labels
    assert np.all(trig.X[:, -3:, -3:] == 0.5)
    np.testing.assert_array_equal(trig.X[:, :-3, :], test.X[keep][:, :-3, :])
    np.testing.assert_array_equal(trig.X[:, :, :-3], test.X[keep][:, :, :-3])
    # the clean test split itself carries no trigger
    np.testing.assert_array_equal(bad.test.X, test.X)


def test_badnets_deterministic_by_seed(clean_digits):
    cfg = BadNets(target=0, rate=0.05)
    a, b = apply_scenario(clean_digits, cfg, 1), apply_scenario(clean_digits, cfg, 1)
    c = apply_scenario(clean_digits, cfg, 2)
    np.testing.assert_array_equal(a.corrupted_mask, b.corrupted_mask)
    np.testing.assert_array_equal(a.train.X, b.train.X)
    assert not np.array_equal(a.corrupted_mask, c.corrupted_mask)


def test_stamp_trigger_copies_and_handles_channels():
    X = np.zeros((2, 3, 5, 5), dtype=np.float32)
    out = stamp_trigger(X, 2, 0.7)
    assert X.sum() == 0  # input untouched
    assert np.all(out[..., 3:, 3:] == np.float32(0.7)) and out.sum() == pytest.approx(2 * 3 * 4 * 0.7, rel=1e-5)


def test_badnets_bundle_save_load_round_trip(clean_digits, tmp_path):
    bad = apply_scenario(clean_digits, BadNets(target=0, rate=0.05), seed=0)
    bad.save(tmp_path / "b.npz")
    back = DataBundle.load(tmp_path / "b.npz")
    np.testing.assert_array_equal(back.corrupted_mask, bad.corrupted_mask)
    np.testing.assert_array_equal(back.clean_train_y, bad.clean_train_y)
    np.testing.assert_array_equal(back.triggered_test.X, bad.triggered_test.X)
    np.testing.assert_array_equal(back.train.X, bad.train.X)
    assert back.attack_target == 0 and back.info == bad.info


# ----------------------------------------------------------------------------------------------- bad scenarios
def test_badnets_needs_images(clean_table):
    with pytest.raises(InputError, match="badnets needs image data"):
        apply_scenario(clean_table, BadNets(target=0, rate=0.1), seed=0)


def test_badnets_patch_must_fit(clean_digits):
    with pytest.raises(InputError, match="scenario.patch_size: 8 does not fit"):
        apply_scenario(clean_digits, BadNets(target=0, rate=0.1, patch_size=8), seed=0)


def test_class_out_of_range(clean_digits):
    with pytest.raises(InputError, match=r"scenario.target: class 10 not in 0..9"):
        apply_scenario(clean_digits, ClassFlip(source=1, target=10, rate=0.5), seed=0)


def test_group_flip_unknown_column_and_value(clean_table):
    with pytest.raises(InputError) as info:
        apply_scenario(clean_table, GroupFlip(column="race", value="x", rate=0.3), seed=0)
    assert "scenario.column: 'race' is not a group column" in str(info.value) and "['sex']" in str(info.value)
    with pytest.raises(InputError) as info:
        apply_scenario(clean_table, GroupFlip(column="sex", value="X", rate=0.3), seed=0)
    assert "scenario.value: 'X' not found" in str(info.value) and "['F', 'M']" in str(info.value)


def test_rate_selecting_no_rows(clean_digits):
    with pytest.raises(InputError, match="selects no rows"):
        apply_scenario(clean_digits, ClassFlip(source=1, target=2, rate=0.001), seed=0)


# ----------------------------------------------------------------------------------------------- blended
def test_blended_mask_pattern_and_triggered_test(clean_digits):
    snap = arrays_snapshot(clean_digits)
    cfg = Blended(target=2, rate=0.05, alpha=0.2, pattern_seed=7)
    bad = apply_scenario(clean_digits, cfg, seed=0)
    clean, mask = clean_digits.train, bad.corrupted_mask
    assert int(mask.sum()) == int(round(0.05 * len(clean))) == bad.info["n_corrupted"]
    np.testing.assert_array_equal(np.any(bad.train.X != clean.X, axis=(1, 2)), mask)
    np.testing.assert_array_equal(bad.train.y != clean.y, mask)
    pattern = blend_pattern(clean.X.shape[1:], 7)
    np.testing.assert_allclose(bad.train.X[mask], 0.8 * clean.X[mask] + 0.2 * pattern, rtol=1e-6)
    keep = clean_digits.test.y != 2
    np.testing.assert_allclose(bad.triggered_test.X, 0.8 * clean_digits.test.X[keep] + 0.2 * pattern, rtol=1e-6)
    np.testing.assert_array_equal(bad.triggered_test.y, clean_digits.test.y[keep])
    assert bad.attack_target == 2 and bad.info["scenario"] == "blended"
    assert_snapshot_equal(clean_digits, snap)


def test_backdoors_need_images_and_a_rate_below_half(clean_table):
    with pytest.raises(InputError, match="scenario.kind=blended needs image data"):
        apply_scenario(clean_table, Blended(target=0, rate=0.05), seed=0)
    with pytest.raises(ValueError, match="less than 0.5"):
        Blended(target=0, rate=0.5)
    with pytest.raises(ValueError, match="less than 0.5"):
        BadNets(target=0, rate=0.6)
