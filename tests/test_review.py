"""Human review: `review: required` stops after detection; `tda-clean apply` acts on approved rows only,
audits rejected ones, and refuses bad approval files without applying anything."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from tda_clean.actions import replay_audit
from tda_clean.cli import main
from tda_clean.data import DataBundle
from tda_clean.run_dir import RunContext, cleaned_train
from tda_clean.config import load_config
from tests.test_review_page import page_data

CONFIG = {
    "name": "review-test", "data": {"kind": "digits"}, "scenario": {"kind": "uniform_flip", "rate": 0.05},
    "model": {"kind": "logistic"}, "train": {"optimizer": "lbfgs", "l2": 1e-3, "epochs": 20},
    "detector": {"kind": "cleanlab", "folds": 3}, "action": {"kind": "relabel"}, "review": "required",
    "tracking": {"enabled": False},
}


@pytest.fixture(scope="module")
def awaiting(tmp_path_factory):
    """A run stopped for review (module-scoped: detection runs once)."""
    root = tmp_path_factory.mktemp("review")
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    assert main(["run", str(config), "--engine", "local", "--output", str(root / "run")]) == 0
    return root


def _copy_run(awaiting, tmp_path):
    import shutil

    shutil.copytree(awaiting / "run", tmp_path / "run")
    return tmp_path / "run"


def test_review_required_stops_after_detection(awaiting, capsys):
    run = awaiting / "run"
    assert not (run / "audit.csv").exists() and not (run / "report.json").exists()
    candidates = pd.read_csv(run / "review" / "candidates.csv")
    selection = np.load(run / "selection.npz")
    assert len(candidates) == int(selection["mask"].sum()) > 0
    assert list(candidates["rank"]) == list(range(len(candidates)))
    assert candidates["suggested_action"].str.startswith("relabel").all()
    # three most influenced validation rows per candidate, each "row_id:signed influence"
    assert candidates["most_influenced_val_rows"].str.split().map(len).eq(3).all()
    assert candidates["reason_detail"].str.startswith("cleanlab:").all()  # the detector's own words
    assert candidates["reason"].str.contains("probability").all() and not candidates["reason"].str.contains("p=").any()
    data = page_data((run / "review" / "index.html").read_text())
    assert [r["id"] for r in data["rows"]] == candidates["row_id"].tolist()
    # digits: a thumbnail of every candidate and of every validation row it names, labels as class names
    assert all(data["train"][str(i)]["image"].startswith("data:image/png;base64,") for i in candidates["row_id"])
    named = {i for r in data["rows"] for i, _ in r["val"]}
    assert named and all(data["val"][str(i)]["image"].startswith("data:image/png;base64,") for i in named)
    assert {r["label"] for r in data["rows"]} <= set(map(str, range(10)))
    # why this row (XDA): the top candidates get 5 signed pixel shares and a heat map, the others nothing
    from tda_clean.review_why import XDA_ROWS

    explained = min(XDA_ROWS, len(candidates))
    why = candidates["why"].fillna("")
    assert why.iloc[:explained].str.fullmatch(r"(\(\d,\d\) [+-]\d\.\d\d(, )?){5}").all(), why.tolist()
    assert candidates["why_image"].iloc[:explained].str.startswith("data:image/png;base64,").all()
    assert (why.iloc[explained:] == "").all()
    records = json.loads((run / "review" / "xda.json").read_text())
    assert [r["row_id"] for r in records] == candidates["row_id"].iloc[:explained].tolist()
    for record, listed in zip(records, candidates["most_influenced_val_rows"]):  # the same validation rows
        assert record["val_row_ids"] == [int(item.split(":")[0]) for item in listed.split()]
        assert record["relevance"] == pytest.approx(sum(abs(v) for v in record["val_influence"]), rel=1e-6)


def test_apply_acts_on_approved_rows_only(awaiting, tmp_path, capsys):
    run = _copy_run(awaiting, tmp_path)
    candidates = pd.read_csv(run / "review" / "candidates.csv")
    decisions = candidates[["row_id"]].assign(approved=np.where(np.arange(len(candidates)) % 2 == 0, "yes", "no"))
    decisions.to_csv(tmp_path / "approved.csv", index=False)
    assert main(["apply", str(run), "--approved", str(tmp_path / "approved.csv")]) == 0
    audit = pd.read_csv(run / "audit.csv")
    approved = set(decisions.loc[decisions.approved == "yes", "row_id"])
    rejected = set(decisions.loc[decisions.approved == "no", "row_id"])
    assert set(audit.loc[audit.action == "relabel", "row_id"]) <= approved
    assert set(audit.loc[audit.action == "keep", "row_id"]) == rejected
    assert audit.loc[audit.action == "keep", "reason"].str.startswith("rejected in review").all()
    report = json.loads((run / "report.json").read_text())
    assert report["status"] == "completed" and report["actions"]["relabeled"] == (audit.action == "relabel").sum()
    assert report["resumed_stages"][:3] == ["load", "train_before", "detect"]
    ctx = RunContext(load_config(run / "config.yaml"), run)
    bundle = DataBundle.load(run / "data.npz")
    rebuilt, cleaned = replay_audit(bundle.train, audit), cleaned_train(ctx, bundle)
    assert np.array_equal(rebuilt.row_id, cleaned.row_id) and np.array_equal(rebuilt.y, cleaned.y)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (lambda c: c[["row_id"]], "missing column 'approved'"),
        (lambda c: pd.DataFrame({"row_id": [99999], "approved": ["yes"]}), "row_id 99999 is not a candidate"),
        (lambda c: c[["row_id"]].assign(approved="maybe"), "use yes or no"),
        (lambda c: c[["row_id"]].assign(approved="yes").iloc[1:], "have no decision"),
    ],
    ids=["missing-column", "unknown-row", "bad-value", "undecided"],
)
def test_bad_approvals_apply_nothing(awaiting, tmp_path, capsys, table, message):
    run = _copy_run(awaiting, tmp_path)
    candidates = pd.read_csv(run / "review" / "candidates.csv")
    table(candidates).to_csv(tmp_path / "approved.csv", index=False)
    assert main(["apply", str(run), "--approved", str(tmp_path / "approved.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err
    assert not (run / "audit.csv").exists() and not (run / "review" / "approvals.csv").exists()


def _decide(run, tmp_path, approve) -> pd.DataFrame:
    candidates = pd.read_csv(run / "review" / "candidates.csv")
    decisions = candidates[["row_id"]].assign(approved=np.where(approve(np.arange(len(candidates))), "yes", "no"))
    decisions.to_csv(tmp_path / "approved.csv", index=False)
    return decisions


def test_every_candidate_approved_then_other_decisions(awaiting, tmp_path, capsys):
    """All approved (no rejected row to audit) applies; a second apply with other decisions uses the new ones."""
    run = _copy_run(awaiting, tmp_path)
    decisions = _decide(run, tmp_path, lambda i: i >= 0)
    assert main(["apply", str(run), "--approved", str(tmp_path / "approved.csv")]) == 0
    audit = pd.read_csv(run / "audit.csv")
    assert set(audit["action"]) <= {"relabel"} and set(audit["row_id"]) <= set(decisions["row_id"])
    first = json.loads((run / "report.json").read_text())
    assert first["actions"]["relabeled"] == len(audit) > 0

    _decide(run, tmp_path, lambda i: i < 0)  # now every candidate rejected
    assert main(["apply", str(run), "--approved", str(tmp_path / "approved.csv")]) == 0
    audit = pd.read_csv(run / "audit.csv")
    assert set(audit["action"]) == {"keep"} and sorted(audit["row_id"]) == sorted(decisions["row_id"])
    second = json.loads((run / "report.json").read_text())
    assert second["actions"]["relabeled"] == 0
    assert "act" not in second["resumed_stages"] and "train_after" not in second["resumed_stages"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a CSV table with columns row_id, approved"),
        ("row_id,approved\n1,oui\u00e9\n".encode("latin-1"), "not UTF-8 text"),
        (b'row_id,approved\n"=HYPERLINK(""http://x"",""1"")",yes\n', "line 2, column row_id: '=HYPERLINK"),
        (None, "line 2, column row_id: '{id}.5' is not a row id"),
        ("row_id,approved\n\n{id},maybe\n\n", "line 3, column approved: row_id {id} has approved='maybe'"),
    ],
    ids=["empty", "not-utf8", "formula-id", "fractional-id", "blank-lines"],
)
def test_unreadable_approvals_exit_2_naming_file_and_line(awaiting, tmp_path, capsys, content, message):
    run = _copy_run(awaiting, tmp_path)
    first = int(pd.read_csv(run / "review" / "candidates.csv")["row_id"].iloc[0])
    path = tmp_path / "approved.csv"
    content = f"row_id,approved\n{first}.5,yes\n" if content is None else content
    path.write_bytes(content.format(id=first).encode() if isinstance(content, str) else content)
    assert main(["apply", str(run), "--approved", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"--approved {path}: " in err and message.format(id=first) in err, err
    assert not (run / "audit.csv").exists() and not (run / "review" / "approvals.csv").exists()


def test_run_pipeline_returns_one_shape(awaiting, tmp_path):
    """Stopped for review or completed: the same keys."""
    from tda_clean.pipeline import run_pipeline

    run = _copy_run(awaiting, tmp_path)
    config = load_config(run / "config.yaml")
    waiting = run_pipeline(config, run)
    decisions = pd.read_csv(run / "review" / "candidates.csv")[["row_id"]].assign(approved=True)
    done = run_pipeline(config, run, approvals=decisions)
    assert waiting["status"] == "awaiting_review" and done["status"] == "completed"
    assert list(waiting) == list(done)
    assert waiting["gate"] is None and waiting["after"] == {} and done["review"] == waiting["review"]


def test_approvals_saved_by_excel_with_a_byte_order_mark_are_read(awaiting, tmp_path):
    from tda_clean.review import read_approvals

    run = awaiting / "run"
    ids = pd.read_csv(run / "review" / "candidates.csv")["row_id"].tolist()
    path = tmp_path / "approved.csv"
    path.write_text("row_id,approved\n" + "".join(f"{i},yes\n" for i in ids), encoding="utf-8-sig")
    decisions = read_approvals(RunContext(load_config(run / "config.yaml"), run), path)
    assert decisions["row_id"].tolist() == ids and decisions["approved"].all()


def test_xda_explanations_are_logged_with_the_run(awaiting, tmp_path):
    """review/xda.json ("why this row") goes to the tracker's parent run with the other artefacts."""
    from tda_clean.pipeline import run_pipeline
    from tests.memory_tracker import InMemoryTracker

    run = _copy_run(awaiting, tmp_path)
    tracker = InMemoryTracker()
    decisions = pd.read_csv(run / "review" / "candidates.csv")[["row_id"]].assign(approved=True)
    report = run_pipeline(load_config(run / "config.yaml"), run, tracker=tracker, approvals=decisions)
    logged = tracker.runs[report["mlflow"]["parent_run_id"]].artifacts
    assert json.loads(logged["xda.json"]) == json.loads((run / "review" / "xda.json").read_text()) != []


def test_approvals_in_the_page_format_are_read(awaiting, tmp_path):
    """The page's download: extra columns, CRLF, text cells escaped with a leading ' (a label '=1+1')."""
    from tda_clean.review import read_approvals

    run = awaiting / "run"
    ids = pd.read_csv(run / "review" / "candidates.csv")["row_id"].tolist()
    lines = ["row_id,approved,label,suggested_label,suggested_action"]
    lines += [f"{i},{'yes' if k % 2 else 'no'},'=1+1,\"'@x, y\",relabel" for k, i in enumerate(ids)]
    path = tmp_path / "approvals.csv"
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    decisions = read_approvals(RunContext(load_config(run / "config.yaml"), run), path)
    assert decisions["row_id"].tolist() == ids
    assert decisions["approved"].tolist() == [k % 2 == 1 for k in range(len(ids))]
