"""Metrics against hand-computed values and against scikit-learn / fairlearn."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference
from sklearn.metrics import accuracy_score, balanced_accuracy_score, precision_recall_fscore_support
from torch import nn

from tda_clean.data.dataset import DataBundle, IndexedDataset, small_cells
from tda_clean.evaluation import evaluate_model
from tda_clean.evaluation.metrics import (
    attack_success_rate,
    classification_metrics,
    detection_metrics,
    group_accuracies,
    intersection_keys,
)

# Four intersectional cells of four rows each, every cell with labels [1, 1, 0, 0]:
#   cell      predictions   correct  TPR  FPR  selection rate
#   F & a     1 1 0 0       4/4      1    0    0.50
#   F & b     0 0 0 0       2/4      0    0    0.00
#   M & a     1 1 1 0       3/4      1    0.5  0.75
#   M & b     1 0 0 1       2/4      0.5  0.5  0.50
Y_TRUE = np.array([1, 1, 0, 0] * 4)
Y_PRED = np.array([1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 1, 0, 0, 1])
GROUPS = pd.DataFrame({"sex": ["F"] * 8 + ["M"] * 8, "race": (["a"] * 4 + ["b"] * 4) * 2})


def test_hand_case_two_group_columns():
    m = classification_metrics(Y_TRUE, Y_PRED, GROUPS)
    assert m["accuracy"] == pytest.approx(11 / 16)
    assert m["balanced_accuracy"] == pytest.approx(11 / 16)  # balanced classes
    assert m["accuracy_sex=F"] == pytest.approx(6 / 8)
    assert m["accuracy_sex=M"] == pytest.approx(5 / 8)
    assert m["accuracy_race=a"] == pytest.approx(7 / 8)
    assert m["accuracy_race=b"] == pytest.approx(4 / 8)
    assert m["accuracy_sex=F&race=a"] == pytest.approx(1.0)
    assert m["accuracy_sex=F&race=b"] == pytest.approx(0.5)
    assert m["accuracy_sex=M&race=a"] == pytest.approx(0.75)
    assert m["accuracy_sex=M&race=b"] == pytest.approx(0.5)
    # worst group over the intersectional cells
    assert m["worst_group_accuracy"] == pytest.approx(0.5)
    # selection rates 0.5, 0, 0.75, 0.5 -> 0.75; TPR gap 1 - 0, FPR gap 0.5 - 0 -> 1.0
    assert m["demographic_parity_difference"] == pytest.approx(0.75)
    assert m["equalized_odds_difference"] == pytest.approx(1.0)
    assert set(m) == {
        "accuracy", "balanced_accuracy", "worst_group_accuracy", "demographic_parity_difference",
        "equalized_odds_difference", "accuracy_sex=F", "accuracy_sex=M", "accuracy_race=a", "accuracy_race=b",
        "accuracy_sex=F&race=a", "accuracy_sex=F&race=b", "accuracy_sex=M&race=a", "accuracy_sex=M&race=b",
    }
    assert all(isinstance(v, float) for v in m.values())


def test_hand_case_one_group_column():
    m = classification_metrics(Y_TRUE, Y_PRED, GROUPS[["sex"]])
    assert m["worst_group_accuracy"] == pytest.approx(5 / 8)  # min over sex values
    # selection rate F 2/8, M 5/8; TPR F 2/4, M 3/4; FPR F 0/4, M 2/4
    assert m["demographic_parity_difference"] == pytest.approx(3 / 8)
    assert m["equalized_odds_difference"] == pytest.approx(0.5)
    assert not any("&" in k for k in m)
    assert not any(k.startswith("accuracy_race") for k in m)


def test_balanced_accuracy_hand_case():
    y_true = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    y_pred = np.array([0, 0, 0, 0, 0, 1, 1, 0])
    m = classification_metrics(y_true, y_pred, pd.DataFrame(index=range(8)))
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["balanced_accuracy"] == pytest.approx((5 / 6 + 1 / 2) / 2)
    assert set(m) == {"accuracy", "balanced_accuracy"}  # no groups: no group metrics


def test_against_sklearn_and_fairlearn_random():
    rng = np.random.default_rng(0)
    n = 600
    groups = pd.DataFrame({"g": rng.choice(["x", "y", "z"], n), "h": rng.choice(["p", "q"], n)})
    y_true = rng.integers(0, 2, n)
    y_pred = np.where(rng.random(n) < 0.7, y_true, 1 - y_true)
    m = classification_metrics(y_true, y_pred, groups)
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    sensitive = (groups["g"] + "/" + groups["h"]).to_numpy()
    assert m["demographic_parity_difference"] == pytest.approx(
        demographic_parity_difference(y_true, y_pred, sensitive_features=sensitive))
    assert m["equalized_odds_difference"] == pytest.approx(
        equalized_odds_difference(y_true, y_pred, sensitive_features=sensitive))
    cells = []
    for (g, h), idx in groups.groupby(["g", "h"]).groups.items():
        acc = accuracy_score(y_true[idx], y_pred[idx])
        assert m[f"accuracy_g={g}&h={h}"] == pytest.approx(acc)
        cells.append(acc)
    for g in "xyz":
        sel = groups["g"].to_numpy() == g
        assert m[f"accuracy_g={g}"] == pytest.approx(accuracy_score(y_true[sel], y_pred[sel]))
    assert m["worst_group_accuracy"] == pytest.approx(min(cells))


def test_multiclass_has_accuracies_but_no_binary_fairness_gaps():
    y_true = np.array([0, 1, 2, 2, 1, 0])
    y_pred = np.array([0, 2, 2, 2, 1, 1])
    groups = pd.DataFrame({"g": ["a", "a", "a", "b", "b", "b"]})
    m = classification_metrics(y_true, y_pred, groups)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert m["accuracy_g=a"] == pytest.approx(2 / 3) and m["accuracy_g=b"] == pytest.approx(2 / 3)
    assert "demographic_parity_difference" not in m and "equalized_odds_difference" not in m


def test_group_helpers():
    keys = intersection_keys(GROUPS)
    assert keys[0] == "sex=F&race=a" and keys[-1] == "sex=M&race=b"
    assert len(set(keys)) == 4
    acc = group_accuracies(Y_TRUE, Y_PRED, GROUPS[["race"]])
    assert acc == {"accuracy_race=a": pytest.approx(7 / 8), "accuracy_race=b": pytest.approx(0.5)}


def test_attack_success_rate():
    assert attack_success_rate(np.array([0, 0, 3, 0, 1]), target=0) == pytest.approx(0.6)
    assert attack_success_rate(np.array([2, 2]), target=0) == 0.0
    assert math.isnan(attack_success_rate(np.array([], dtype=int), target=0))


def test_detection_metrics_hand_case_and_sklearn():
    flagged = np.array([1, 1, 1, 0, 0, 0, 1, 0], dtype=bool)
    truth = np.array([1, 0, 1, 1, 0, 0, 0, 0], dtype=bool)
    d = detection_metrics(flagged, truth)
    assert d["true_positives"] == 2 and d["n_true"] == 3
    assert d["precision"] == pytest.approx(0.5)
    assert d["recall"] == pytest.approx(2 / 3)
    assert d["f1"] == pytest.approx(4 / 7)
    p, r, f, _ = precision_recall_fscore_support(truth, flagged, average="binary")
    assert (d["precision"], d["recall"], d["f1"]) == pytest.approx((p, r, f))


def test_detection_metrics_degenerate_cases():
    none = detection_metrics(np.zeros(5, bool), np.array([1, 0, 0, 0, 0], bool))
    assert none == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "true_positives": 0, "n_true": 1}
    perfect = detection_metrics(np.array([1, 0, 1], bool), np.array([1, 0, 1], bool))
    assert (perfect["precision"], perfect["recall"], perfect["f1"]) == (1.0, 1.0, 1.0)


class _ArgmaxOfInputs(nn.Module):
    """Logits = the inputs themselves, so predictions are ``X.argmax(1)`` (a hand-controllable model)."""

    def __init__(self, n_classes: int):
        super().__init__()
        self.head = nn.Linear(n_classes, n_classes)  # unused; gives predict_proba a dtype/device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def _ds(y_pred: np.ndarray, y_true: np.ndarray, groups: pd.DataFrame | None = None) -> IndexedDataset:
    X = np.eye(3, dtype=np.float32)[y_pred]
    return IndexedDataset(np.arange(len(y_true)), X, y_true, groups if groups is not None else pd.DataFrame(
        index=range(len(y_true))), ("0", "1", "2"))


def test_evaluate_model_uses_test_split_and_triggered_set():
    test = _ds(np.array([0, 1, 2, 2, 1, 0]), np.array([0, 1, 2, 1, 1, 1]),
               pd.DataFrame({"g": ["a", "a", "a", "b", "b", "b"]}))
    triggered = _ds(np.array([0, 0, 2, 0]), np.array([1, 2, 2, 1]))
    train = _ds(np.array([0, 1]), np.array([0, 1]))
    bundle = DataBundle("toy", train, train, test, triggered_test=triggered, attack_target=0)
    m = evaluate_model(_ArgmaxOfInputs(3), bundle)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["accuracy_g=a"] == pytest.approx(1.0) and m["accuracy_g=b"] == pytest.approx(1 / 3)
    assert m["worst_group_accuracy"] == pytest.approx(1 / 3)
    assert m["attack_success_rate"] == pytest.approx(3 / 4)
    no_attack = evaluate_model(_ArgmaxOfInputs(3), DataBundle("toy", train, train, test))
    assert "attack_success_rate" not in no_attack
    assert {k: v for k, v in m.items() if k != "attack_success_rate"} == no_attack


# ------------------------------------------------------------------ small group cells (evaluation.min_group_size)
def test_excluded_cells_leave_worst_group_and_gaps_but_keep_their_accuracy():
    m = classification_metrics(Y_TRUE, Y_PRED, GROUPS, exclude=["sex=F&race=b", "sex=M&race=b"])
    assert m["accuracy_sex=F&race=b"] == pytest.approx(0.5)  # still reported under its stable name
    assert m["worst_group_accuracy"] == pytest.approx(0.75)  # min(1.0, 0.75) over the kept cells
    # kept cells F&a, M&a: selection rates 0.5, 0.75 -> 0.25; TPR 1, 1 and FPR 0, 0.5 -> 0.5
    assert m["demographic_parity_difference"] == pytest.approx(0.25)
    assert m["equalized_odds_difference"] == pytest.approx(0.5)
    assert set(m) == set(classification_metrics(Y_TRUE, Y_PRED, GROUPS))


def test_one_kept_cell_has_no_gaps_and_none_kept_has_no_worst_group():
    one_column = GROUPS[["sex"]]
    m = classification_metrics(Y_TRUE, Y_PRED, one_column, exclude=["sex=F"])
    assert m["worst_group_accuracy"] == pytest.approx(5 / 8)
    assert "demographic_parity_difference" not in m and "equalized_odds_difference" not in m
    none_kept = classification_metrics(Y_TRUE, Y_PRED, one_column, exclude=["sex=F", "sex=M"])
    assert "worst_group_accuracy" not in none_kept and none_kept["accuracy_sex=M"] == pytest.approx(5 / 8)


def test_evaluate_model_excludes_the_bundles_small_groups():
    test = _ds(np.array([0, 1, 1, 1, 1, 0, 1]), np.array([0, 1, 1, 1, 1, 1, 0]),
               pd.DataFrame({"g": ["a", "a", "a", "a", "a", "b", "c"]}))
    bundle = DataBundle("toy", test, test, test, info={"small_groups": ["g=b", "g=c"]})
    m = evaluate_model(_ArgmaxOfInputs(3), bundle)
    assert m["accuracy_g=b"] == 0.0 and m["accuracy_g=c"] == 0.0
    assert m["worst_group_accuracy"] == 1.0  # one-row cells no longer read as a 0.000 worst group
    assert "demographic_parity_difference" not in m


# ------------------------------------------------ small cells by label (evaluation.min_label_rows)
def test_small_cells_by_rows_and_by_rows_of_each_label():
    keys = np.array(["a"] * 6 + ["b"] * 6 + ["c"] * 2 + [""] * 1)
    y = np.array([1, 1, 1, 0, 0, 0] + [1, 1, 1, 1, 1, 0] + [1, 0] + [0])
    assert small_cells(keys, y, 2, min_rows=3) == ["c"]  # '' (no group columns) is never a cell
    assert small_cells(keys, y, 2, min_rows=3, min_label_rows=2) == ["b", "c"]  # b has one row of label 0
    assert small_cells(keys, y, 2, min_rows=1, min_label_rows=3) == ["b", "c"]
    assert small_cells(keys, y, 3, min_rows=1, min_label_rows=3) == []  # the label rule is for binary labels only


def test_a_cell_without_positives_is_left_out_instead_of_reading_eod_one():
    # cells a and b are predicted perfectly; cell c has no positive test rows: fairlearn reads its TPR as 0
    y = np.array([1, 1, 0, 0] * 2 + [0] * 4)
    groups = pd.DataFrame({"g": ["a"] * 4 + ["b"] * 4 + ["c"] * 4})
    assert classification_metrics(y, y, groups)["equalized_odds_difference"] == pytest.approx(1.0)
    small = small_cells(intersection_keys(groups), y, 2, min_rows=1)
    assert small == ["g=c"]
    assert classification_metrics(y, y, groups, exclude=small)["equalized_odds_difference"] == pytest.approx(0.0)


def test_load_lists_a_cell_with_one_label_only_as_small(tmp_path):
    from tda_clean.data import load_bundle
    from tests.unit_helpers import config, small_table

    frame = small_table(n=600)
    negatives = np.flatnonzero(frame["label"].to_numpy() == 0)[:160]
    frame["site"] = "common"
    frame.loc[negatives, "site"] = "rare"  # a large cell whose rows all have label 0
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    data = {"kind": "csv", "path": str(path), "label": "label", "groups": ["site"]}
    bundle = load_bundle(config(data))
    rare = bundle.test.group_keys() == "site=rare"
    assert rare.sum() >= 20 and set(bundle.test.y[rare]) == {0}  # not small by size, only by label
    assert bundle.info["small_groups"] == ["site=rare"]
    common = bundle.test.y[~rare]
    strict = {"min_label_rows": int(min(np.bincount(common))) + 1}  # the common cell's rarer label falls short too
    assert load_bundle(config(data, evaluation=strict)).info["small_groups"] == ["site=common", "site=rare"]
