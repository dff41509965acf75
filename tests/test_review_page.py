"""The review page writer without a browser: the embedded JSON cannot break out of its <script> block, missing
suggestions are null (never ``<NA>``), row views show the raw columns, every detector's reason has plain
words, and exported CSV cells cannot run as spreadsheet formulas."""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from tda_clean.data.dataset import IndexedDataset
from tda_clean.review_page import influenced, render_page, row_views, script_json
from tda_clean.review_reasons import plain_reason
from tda_clean.spreadsheet import escape_frame, unescape_cell, write_safe_csv

HOSTILE = '</script><script>alert(1)</script>&<!--\u2028'
META = {"name": "t</title><b>x", "action": "relabel", "apply_command": "tda-clean apply RUN --approved approvals.csv",
        "storage_key": "k"}


def page_data(page: str) -> dict:
    """The JSON the page embeds (its one ``<script type="application/json">`` block)."""
    blocks = re.findall(r'<script type="application/json" id="review-data">(.*?)</script>', page, flags=re.S)
    assert len(blocks) == 1
    return json.loads(blocks[0])


def frame(n: int = 4, suggested=True) -> pd.DataFrame:
    return pd.DataFrame({
        "row_id": np.arange(10, 10 + n), "rank": np.arange(n), "detector": "cleanlab",
        "score": np.linspace(0.9, 0.6, n), "label": [HOSTILE] + ["b"] * (n - 1),
        "suggested_label": ["a"] * n if suggested else pd.NA, "suggested_action": "relabel b -> a",
        "group_sex": ["=HYPERLINK(\"http://x\")"] + ["F"] * (n - 1),
        "most_influenced_val_rows": ["3:+1.50e-03 4:-2.00e-04"] * n, "reason": "plain", "reason_detail": "tech",
        "approved": "",
    })


def test_hostile_values_stay_inside_the_json_block():
    page = render_page(frame(), {}, {}, META)
    assert page.count("</script>") == 2 and page.count("<script") == 2  # the data block and the page script
    assert "<b>x" not in page and "t&lt;/title&gt;&lt;b&gt;x" in page
    data = page_data(page)
    assert data["rows"][0]["label"] == HOSTILE and data["rows"][0]["group"] == 'sex==HYPERLINK("http://x")'
    assert data["rows"][0]["val"] == [[3, 1.5e-3], [4, -2e-4]]


def test_missing_suggestion_is_null_not_na():
    page = render_page(frame(suggested=False), {}, {}, META)
    assert "<NA>" not in page and "NaN" not in re.sub(r"isNaN", "", page)
    assert [r["suggested"] for r in page_data(page)["rows"]] == [None] * 4


def test_why_columns_are_passed_when_present_and_only_png_data_uris():
    f = frame(2).assign(why=["pixels top-left", None], why_image=["data:image/png;base64,AAAA", "javascript:x"])
    rows = page_data(render_page(f, {}, {}, META))["rows"]
    assert [r["why"] for r in rows] == ["pixels top-left", None]
    assert [r["why_image"] for r in rows] == ["data:image/png;base64,AAAA", None]


def test_row_views_show_raw_columns_or_thumbnails():
    table = IndexedDataset(row_id=np.array([7, 8]), X=np.array([[0.5, 0.0], [0.0, 1.0]], dtype=np.float32),
                           y=np.array([0, 1]), groups=pd.DataFrame(index=range(2)), classes=("no", "yes"),
                           feature_names=("age", "city_Paris"))
    raw = pd.DataFrame({"age": [41, 23], "city": ["Paris", "<i>Nice</i>"]}, index=[7, 8])
    assert row_views(table, np.array([1]), raw) == {8: {"label": "yes", "values": [["age", "23"], ["city", "<i>Nice</i>"]]}}
    assert row_views(table, np.array([0]))[7]["values"] == [["age", "0.5"], ["city_Paris", "0"]]  # encoded features
    images = IndexedDataset(row_id=np.array([1]), X=np.random.default_rng(0).random((1, 1, 8, 8)), y=np.array([0]),
                            groups=pd.DataFrame(index=range(1)), classes=("zero",))
    assert row_views(images, np.array([0]))[1]["image"].startswith("data:image/png;base64,")


def test_influenced_cells_parse():
    assert influenced("12:+1.00e-03 7:-2.50e-04") == [[12, 1e-3], [7, -2.5e-4]]
    assert influenced(float("nan")) == [] and influenced("") == []


def test_script_json_rejects_nan():
    with pytest.raises(ValueError):
        script_json({"x": float("nan")})


def test_every_registered_detector_has_plain_words():
    from tda_clean.selection import DETECTORS

    for name in DETECTORS:
        technical = f"{name} score 1.23 > threshold 0.5 (rank within the top 3)"
        text = plain_reason(name, technical, "cat", "dog")
        assert text != technical and "threshold" not in text, name
    assert "“dog”" in plain_reason("cleanlab", "cleanlab: out-of-sample p(given label)=0.120; suggested label 1 (p=0.8)",
                                   "cat", "dog")
    assert "12%" in plain_reason("cleanlab", "cleanlab: out-of-sample p(given label)=0.120; x", "cat", "dog")
    assert "16 of 16" in plain_reason("delta_influence", "support of 16/16 class-0 queries collapsed under ...", "7",
                                      None)


def test_label_noise_plain_words_follow_the_chosen_detector():
    loo = plain_reason("label_noise", "leave-one-out loss of the given label 3.2 (top-k overlap with harmful 0.60 >= "
                       "0.42)", "cat", "dog")
    harm = plain_reason("label_noise", "removing the row is predicted to lower val_loss by 0.012 (top-k overlap with "
                        "loo_loss 0.10 < 0.42)", "cat", "dog")
    assert "wrong label" in loo and "“dog”" in loo
    assert "the validation loss" in harm and "“dog”" not in harm


def test_exported_csv_cells_cannot_run_as_formulas(tmp_path):
    f = pd.DataFrame({"row_id": [1, 2, 3, 4, 5, 6], "score": [-0.5, 1.0, 2.0, 3.0, 4.0, 5.0],
                      "label": ["=1+1", "+A1", "-2", "@SUM(A1)", "\tx", "'quoted"],
                      "group_g": ["\rr", "plain", "a=b", "x", "y", "z"]})
    path = tmp_path / "out.csv"
    write_safe_csv(f, path)
    back = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert back["label"].tolist() == ["'=1+1", "'+A1", "'-2", "'@SUM(A1)", "'\tx", "''quoted"]
    assert back["group_g"].tolist()[:3] == ["'\rr", "plain", "a=b"]
    assert back["score"].tolist()[0] == "-0.5"  # numbers stay numbers
    assert [unescape_cell(v) for v in back["label"]] == f["label"].tolist()  # reversible
    assert escape_frame(f)["row_id"].tolist() == f["row_id"].tolist()


def test_audit_of_formula_like_class_names_is_escaped_and_read_back(tmp_path):
    """Class names '=yes' / '-no': audit.csv holds "'=yes", and the cleaned DataFrame gets the names as given."""
    import tda_clean
    from tests.test_api import frames

    df = pd.concat(frames())
    df["label"] = df["label"].map({"yes": "=yes", "no": "-no"})
    flip = df.index[:20]
    df.loc[flip, "label"] = df.loc[flip, "label"].map({"=yes": "-no", "-no": "=yes"})
    report = tda_clean.clean(df, label="label", groups=["sex"], detector={"kind": "cleanlab", "folds": 3},
                             action="relabel", output=tmp_path / "run", tracking={"enabled": False})
    audit = pd.read_csv(report.run_dir / "audit.csv", dtype=str)
    relabelled = audit[audit["action"] == "relabel"]
    assert len(relabelled) > 0 and set(relabelled["new_label"]) <= {"'=yes", "'-no"}
    new = dict(zip(relabelled["row_id"].astype(int), relabelled["new_label"].str[1:]))
    cleaned = report.cleaned_data["label"].to_numpy()
    assert all(cleaned[row] == label for row, label in new.items())  # row_id = position in the DataFrame


def test_raw_table_reads_the_users_columns_by_row_id(tmp_path):
    from tda_clean.review_page import raw_table
    from tests.unit_helpers import csv_config, small_table

    small_table(20).to_csv(tmp_path / "t.csv", index=False)
    raw = raw_table(csv_config(tmp_path / "t.csv", id_column="uid").data)
    assert list(raw.columns) == ["age", "income", "city"] and raw.index[0] == 10_000  # no label, group or id column
    assert raw_table(csv_config(tmp_path / "missing.csv").data) is None  # unreadable now: encoded features instead
