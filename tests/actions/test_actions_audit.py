"""Actions (remove, relabel, none) and the audit table: expected rows/labels, exact replay, input untouched."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from tda_clean.actions import AUDIT_COLUMNS, apply_action, relabel, remove, replay_audit
from tda_clean.config import NoAction, RelabelAction, RemoveAction
from tda_clean.data.dataset import IndexedDataset
from tda_clean.errors import InputError
from tda_clean.selection import Selection
from tests.unit_helpers import toy_dataset


def _selection(n: int, indices: list[int], suggested: np.ndarray | None, detector: str = "toy") -> Selection:
    scores = np.linspace(0.0, 1.0, n)
    scores[indices] = 10.0 - np.arange(len(indices))  # indices are ordered most suspicious first
    mask = np.zeros(n, bool)
    mask[indices] = True
    return Selection(mask=mask, indices=np.array(indices), scores=scores, threshold=5.0, detector=detector,
                     suggested_labels=suggested, reasons=tuple(f"why {i}" for i in indices))


def _copy(ds: IndexedDataset) -> IndexedDataset:
    return replace(ds, row_id=ds.row_id.copy(), X=ds.X.copy(), y=ds.y.copy(), groups=ds.groups.copy(),
                   weight=None if ds.weight is None else ds.weight.copy())


def assert_same(a: IndexedDataset, b: IndexedDataset) -> None:
    np.testing.assert_array_equal(a.row_id, b.row_id)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.y, b.y)
    assert a.y.dtype == b.y.dtype and a.X.dtype == b.X.dtype
    if a.weight is None or b.weight is None:
        assert a.weight is None and b.weight is None
    else:
        np.testing.assert_array_equal(a.weight, b.weight)
    pd.testing.assert_frame_equal(a.groups, b.groups)
    assert a.classes == b.classes and a.feature_names == b.feature_names


@pytest.fixture
def train() -> IndexedDataset:
    return toy_dataset(n=12, n_classes=3, weight=True)  # row_id 100, 103, ..., 133; y = 0 1 2 0 1 2 ...


def _roundtrip(audit: pd.DataFrame, tmp_path, fmt: str) -> pd.DataFrame:
    path = tmp_path / f"audit.{fmt}"
    if fmt == "csv":
        audit.to_csv(path, index=False)
        return pd.read_csv(path)
    audit.to_parquet(path, index=False)
    return pd.read_parquet(path)


# ----------------------------------------------------------------------------------------------- remove
def test_remove_drops_flagged_rows(train):
    snap = _copy(train)
    sel = _selection(len(train), [7, 2, 10], suggested=None)
    result = remove(train, sel)
    keep = [0, 1, 3, 4, 5, 6, 8, 9, 11]
    np.testing.assert_array_equal(result.train.row_id, train.row_id[keep])
    np.testing.assert_array_equal(result.train.X, train.X[keep])
    np.testing.assert_array_equal(result.train.y, train.y[keep])
    np.testing.assert_array_equal(result.train.weight, train.weight[keep])
    assert result.train.groups["g"].tolist() == train.groups["g"].iloc[keep].tolist()
    assert result.counts == {"removed": 3}
    audit = result.audit
    assert list(audit.columns) == AUDIT_COLUMNS + ["group_g"]  # the row's groups follow the fixed columns
    assert audit["group_g"].tolist() == train.groups["g"].iloc[[7, 2, 10]].tolist()
    assert audit["row_id"].tolist() == [121, 106, 130]
    assert (audit["action"] == "remove").all() and (audit["detector"] == "toy").all()
    assert audit["old_label"].tolist() == ["1", "2", "1"]  # class names
    assert audit["new_label"].isna().all() and audit["weight"].isna().all()
    assert audit["rank"].tolist() == [0, 1, 2]
    assert audit["score"].tolist() == [10.0, 9.0, 8.0]
    assert audit["reason"].tolist() == ["why 7", "why 2", "why 10"]
    assert_same(train, snap)


# ----------------------------------------------------------------------------------------------- relabel
def test_relabel_changes_only_rows_whose_suggestion_differs(train):
    snap = _copy(train)
    suggested = train.y.copy()
    suggested[[1, 4, 9]] = [2, 0, 1]        # 1: 1->2, 4: 1->0, 9: 0->1
    suggested[6] = 2                         # not flagged: must be ignored
    sel = _selection(len(train), [4, 9, 1, 5], suggested)  # row 5's suggestion equals its label
    result = relabel(train, sel)
    expected = train.y.copy()
    expected[[1, 4, 9]] = [2, 0, 1]
    np.testing.assert_array_equal(result.train.y, expected)
    np.testing.assert_array_equal(result.train.X, train.X)
    np.testing.assert_array_equal(result.train.row_id, train.row_id)
    np.testing.assert_array_equal(result.train.weight, train.weight)
    assert result.counts == {"relabeled": 3}
    audit = result.audit.sort_values("rank")
    assert audit["row_id"].tolist() == [112, 127, 103]
    assert audit["old_label"].tolist() == ["1", "0", "1"]
    assert audit["new_label"].tolist() == ["0", "1", "2"]
    assert audit["rank"].tolist() == [0, 1, 2]
    assert (audit["action"] == "relabel").all()
    assert_same(train, snap)


def test_relabel_without_suggested_labels_is_input_error(train):
    with pytest.raises(InputError) as info:
        relabel(train, _selection(len(train), [1], suggested=None, detector="influence"))
    assert "detector 'influence' suggests no labels" in str(info.value)
    assert "action.kind=remove" in str(info.value)


def test_apply_action_counts_carry_all_keys(train):
    sel = _selection(len(train), [3, 0], suggested=(train.y + 1) % 3)
    assert apply_action(train, sel, RemoveAction()).counts == {"removed": 2, "relabeled": 0, "reweighted": 0,
                                                               "unlearned": 0}
    assert apply_action(train, sel, RelabelAction()).counts == {"removed": 0, "relabeled": 2, "reweighted": 0,
                                                                "unlearned": 0}
    none = apply_action(train, sel, NoAction())
    assert none.counts == {"removed": 0, "relabeled": 0, "reweighted": 0, "unlearned": 0}
    assert none.audit.empty and list(none.audit.columns) == AUDIT_COLUMNS
    assert_same(none.train, train)


# ----------------------------------------------------------------------------------------------- replay
@pytest.mark.parametrize("fmt", [None, "csv", "parquet"])
@pytest.mark.parametrize("kind", ["remove", "relabel"])
def test_replay_reproduces_cleaned_dataset_exactly(train, tmp_path, fmt, kind):
    snap = _copy(train)
    sel = _selection(len(train), [8, 0, 5, 11], suggested=(train.y + 1) % 3)
    result = apply_action(train, sel, RemoveAction() if kind == "remove" else RelabelAction())
    audit = result.audit if fmt is None else _roundtrip(result.audit, tmp_path, fmt)
    assert len(audit) == 4
    assert_same(replay_audit(train, audit), result.train)
    assert_same(train, snap)


def test_replay_of_combined_audit_after_csv(train, tmp_path):
    """Relabel some rows and remove others in two steps; the concatenated audit replays both."""
    sel1 = _selection(len(train), [2, 3], suggested=(train.y + 2) % 3)
    step1 = apply_action(train, sel1, RelabelAction())
    sel2 = _selection(len(step1.train), [0, 6], suggested=None)
    step2 = apply_action(step1.train, sel2, RemoveAction())
    audit = _roundtrip(pd.concat([step1.audit, step2.audit], ignore_index=True), tmp_path, "csv")
    cleaned = replay_audit(train, audit)
    assert_same(cleaned, step2.train)
    assert len(cleaned) == 10 and 100 not in cleaned.row_id and 118 not in cleaned.row_id


def test_replay_on_digits_sized_data_with_real_selection_shape(tmp_path):
    rng = np.random.default_rng(0)
    n = 500
    ds = IndexedDataset(np.arange(1000, 1000 + n), rng.normal(size=(n, 8, 8)).astype(np.float32),
                        rng.integers(0, 10, n), pd.DataFrame(index=range(n)), tuple("0123456789"))
    idx = rng.choice(n, 40, replace=False).tolist()
    sel = _selection(n, idx, suggested=rng.integers(0, 10, n))
    for action in (RemoveAction(), RelabelAction()):
        result = apply_action(ds, sel, action)
        assert_same(replay_audit(ds, _roundtrip(result.audit, tmp_path, "csv")), result.train)


def test_replay_reweight_rows(train):
    audit = pd.DataFrame([{"row_id": 103, "action": "reweight", "old_label": 1, "new_label": None, "weight": 0.25,
                           "detector": "x", "score": 1.0, "rank": 0, "reason": ""}], columns=AUDIT_COLUMNS)
    out = replay_audit(train, audit)
    expected = train.weight.copy()
    expected[1] = 0.25
    np.testing.assert_array_equal(out.weight, expected)
    unweighted = toy_dataset(n=12, n_classes=3, weight=False)
    out = replay_audit(unweighted, audit)
    np.testing.assert_array_equal(out.weight, np.r_[1.0, 0.25, np.ones(10)])


def test_replay_empty_audit_is_identity(train):
    assert_same(replay_audit(train, pd.DataFrame(columns=AUDIT_COLUMNS)), train)


def test_replay_rejects_bad_audits(train):
    good = remove(train, _selection(len(train), [1], None)).audit
    with pytest.raises(InputError, match=r"missing columns \['reason'\]"):
        replay_audit(train, good.drop(columns=["reason"]))
    with pytest.raises(InputError, match="row_id 999 is not in the original data"):
        replay_audit(train, good.assign(row_id=999))
    with pytest.raises(InputError, match="unknown action 'shred' for row_id 103"):
        replay_audit(train, good.assign(action="shred"))


def test_reweight_sets_weights_of_flagged_rows_and_replays(train, tmp_path):
    from dataclasses import replace as dc_replace

    from tda_clean.config import ReweightAction

    original = train.weight.copy()  # the toy set already carries weights: untouched rows keep theirs
    sel = _selection(len(train), [4, 1], suggested=None)
    result = apply_action(train, sel, ReweightAction(weight=0.25))
    expected = original.copy()
    expected[[1, 4]] = 0.25
    np.testing.assert_array_equal(result.train.weight, expected)
    np.testing.assert_array_equal(train.weight, original)
    assert result.counts["reweighted"] == 2
    assert list(result.audit["action"]) == ["reweight", "reweight"] and list(result.audit["weight"]) == [0.25, 0.25]
    assert_same(replay_audit(train, _roundtrip(result.audit, tmp_path, "csv")), result.train)
    # the detector's own weights win over the configured constant
    suggested = np.linspace(0, 1, len(train))
    result = apply_action(train, dc_replace(sel, suggested_weights=suggested), ReweightAction(weight=0.25))
    assert result.train.weight[4] == pytest.approx(suggested[4]) and result.train.weight[0] == original[0]
    with pytest.raises(InputError, match="outside \\[0, 1\\]"):
        apply_action(train, dc_replace(sel, suggested_weights=suggested * 3), ReweightAction())
