"""The review's "why" columns on a table: signed shares per ORIGINAL column (one-hot features summed back), the
top candidates only, and the same validation rows as ``most_influenced_val_rows``."""
from __future__ import annotations

import numpy as np
import pytest

from tda_clean.data import load_bundle
from tda_clean.models.factory import build_model
from tda_clean.models.trainer import fit
from tda_clean.review import REVIEW_SPEC, _influenced_val_rows, review_engine
from tda_clean.review_why import why_columns
from tests.unit_helpers import config, small_table, torch_single_thread

_single_thread = pytest.fixture(autouse=True)(torch_single_thread)


def test_table_why_names_original_columns(tmp_path):
    path = tmp_path / "t.csv"
    small_table(300).to_csv(path, index=False)
    cfg = config({"kind": "csv", "path": str(path), "label": "label", "groups": ["sex"], "id_column": "uid"},
                 model={"kind": "logistic"}, train={"optimizer": "lbfgs", "l2": 1e-3, "epochs": 30})
    bundle = load_bundle(cfg)
    assert any(name.startswith("city_") for name in bundle.train.feature_names)  # one-hot encoded
    model = build_model(cfg.model, bundle.train.feature_shape, bundle.train.n_classes, 0)
    fit(model, bundle.train.X, bundle.train.y, cfg.train, 0)
    idx = np.arange(7)
    engine = review_engine(model, bundle, REVIEW_SPEC, cfg.train)
    columns, records = why_columns(engine, bundle, idx, top_val=3, rows=5)
    assert set(columns) == {"why"} and [w == "" for w in columns["why"]] == [False] * 5 + [True] * 2
    for text, record in zip(columns["why"], records):
        named = [item.rsplit(" ", 1)[0] for item in text.split(", ")]
        assert set(named) <= {"age", "income", "city"} and len(named) == len(set(named)), text
        shares = record["columns"]
        assert sum(abs(v) for v in shares.values()) == pytest.approx(1, abs=1e-3)
        explained = record["relevance"] - record["relevance_at_baseline"]  # what the shares split
        assert abs(record["completeness_gap"]) < 0.05 * abs(explained)
    listed = _influenced_val_rows(engine, bundle, idx[:5], 3)
    assert [r["val_row_ids"] for r in records] == [[int(t.split(":")[0]) for t in row.split()] for row in listed]
