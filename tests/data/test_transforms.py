"""Raw-pixel image transforms and tabular noise / masking: shapes, ranges, determinism, clear errors."""
from __future__ import annotations

import numpy as np
import pytest

from tda_clean.data.transforms import (
    IMAGE_TRANSFORMS, TABULAR_TRANSFORMS, apply_transform, check_transforms, default_transforms, random_copies,
)
from tda_clean.errors import InputError

rng0 = np.random.default_rng(0)
GRAY = rng0.uniform(0, 1, (5, 8, 8)).astype(np.float32)
RGB = rng0.uniform(0, 1, (5, 3, 8, 8)).astype(np.float32)
TAB = rng0.normal(size=(20, 6)).astype(np.float32)


@pytest.mark.parametrize("name", [n for n in IMAGE_TRANSFORMS])
def test_image_transforms_keep_shape_dtype_range_and_input(name):
    for X in (GRAY, RGB):
        if name == "channel_swap" and X.ndim == 3:
            continue
        before = X.copy()
        out = apply_transform(name, X, np.random.default_rng(1))
        assert out.shape == X.shape and out.dtype == X.dtype
        assert out.min() >= 0.0 and out.max() <= 1.0
        np.testing.assert_array_equal(X, before)
        again = apply_transform(name, X, np.random.default_rng(1))
        np.testing.assert_array_equal(out, again)


def test_invert_and_flips_are_the_nominal_operations_on_raw_pixels():
    np.testing.assert_allclose(apply_transform("invert", GRAY, np.random.default_rng(0)), 1.0 - GRAY, atol=1e-7)
    np.testing.assert_array_equal(apply_transform("hflip", GRAY, np.random.default_rng(0)), GRAY[..., ::-1])
    np.testing.assert_array_equal(apply_transform("vflip", RGB, np.random.default_rng(0)), RGB[..., ::-1, :])
    # a bottom-right trigger patch is gone from the corner after a flip
    img = np.zeros((1, 8, 8), np.float32)
    img[0, -2:, -2:] = 1.0
    assert apply_transform("hflip", img, np.random.default_rng(0))[0, -2:, -2:].sum() == 0


@pytest.mark.parametrize("name", TABULAR_TRANSFORMS)
def test_tabular_transforms(name):
    out = apply_transform(name, TAB, np.random.default_rng(0), scale=TAB.std(0), fill=TAB.mean(0))
    assert out.shape == TAB.shape and out.dtype == TAB.dtype and np.isfinite(out).all()
    assert not np.array_equal(out, TAB)
    if name == "feature_mask":
        changed = out != TAB
        np.testing.assert_allclose(out[changed], np.broadcast_to(TAB.mean(0), TAB.shape)[changed], rtol=1e-6)


def test_random_copies_use_every_transform_and_are_seeded():
    copies, used = random_copies(GRAY[0], 16, ("hflip", "blur", "invert", "noise"), np.random.default_rng(3))
    assert copies.shape == (16, 8, 8) and sorted(set(used)) == ["blur", "hflip", "invert", "noise"]
    again, _ = random_copies(GRAY[0], 16, ("hflip", "blur", "invert", "noise"), np.random.default_rng(3))
    np.testing.assert_array_equal(copies, again)


def test_defaults_follow_the_data_type():
    assert "invert" in default_transforms(GRAY) and "channel_swap" not in default_transforms(GRAY)
    assert "channel_swap" in default_transforms(RGB)
    assert default_transforms(TAB) == TABULAR_TRANSFORMS


def test_transform_that_does_not_apply_is_a_clear_error():
    with pytest.raises(InputError, match="'invert' does not apply to tabular data"):
        check_transforms(("invert",), TAB)
    with pytest.raises(InputError, match="'feature_noise' does not apply to image data"):
        apply_transform("feature_noise", GRAY, np.random.default_rng(0))
    with pytest.raises(InputError, match="'swirl' is not a known transform"):
        check_transforms(("swirl",), GRAY)
    with pytest.raises(InputError, match="expected .* got shape"):
        check_transforms(("hflip",), np.zeros(5))
