"""The report-name -> MLflow-key mapping: readable, valid for MLflow, collisions refused."""
from __future__ import annotations

import pytest

from tda_clean.tracking.keys import MAX_KEY_LENGTH, mlflow_key, mlflow_keys, truncate

NAMES = [
    "accuracy", "demographic_parity_difference", "model.lr", "mlflow.parentRunId",
    "accuracy_sex=Female", "accuracy_sex=Female&race=White", "delta_accuracy_race=Asian-Pac-Islander",
    "accuracy_income=>50K", "accuracy_income=<=50K", "accuracy_country=n/a", "x=a:b", ".hidden", "..",
    "accuracy_ville=Saint-Étienne", "a" * 400,
]


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("accuracy", "accuracy"),
        ("model.lr", "model.lr"),
        ("accuracy_sex=Female", "accuracy_sex.Female"),
        ("accuracy_sex=Female&race=White", "accuracy_sex.Female__race.White"),
        ("before_accuracy_sex=Female", "before_accuracy_sex.Female"),
        ("accuracy_income=>50K", "accuracy_income._50K"),
        ("..", "_.."),
    ],
)
def test_examples(name: str, key: str) -> None:
    assert mlflow_key(name) == key


def test_every_key_is_accepted_by_mlflow() -> None:
    from mlflow.utils.validation import _validate_metric_name, _validate_param_name

    for name in NAMES:
        key = mlflow_key(name)
        assert len(key) <= MAX_KEY_LENGTH
        _validate_metric_name(key)
        _validate_param_name(key)


def test_raw_names_are_rejected_by_mlflow() -> None:
    """Why the mapping exists: MLflow 3.17.2 refuses '=' and '&' in keys."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_metric_name

    for name in ("accuracy_sex=Female", "a&b"):
        with pytest.raises(MlflowException):
            _validate_metric_name(name)


def test_distinct_names_give_distinct_keys() -> None:
    assert len({mlflow_key(n) for n in NAMES}) == len(NAMES)
    assert mlflow_key("b" * 300) != mlflow_key("b" * 301)


def test_collision_in_a_batch_is_refused() -> None:
    with pytest.raises(ValueError, match="both map"):
        mlflow_keys({"acc_sex=F": 1.0, "acc_sex.F": 2.0})
    with pytest.raises(ValueError):
        mlflow_key("")


def test_truncate() -> None:
    assert truncate("abc", 10) == "abc"
    cut = truncate("x" * 50, 20)
    assert len(cut) == 20 and cut.endswith("[truncated]")
