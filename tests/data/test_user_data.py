"""The user's own data on disk: image folders, image-path tables, text columns, string labels, the user's own splits
(split column or separate files), config-relative paths, and the cleaned result written back in the user's format."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from tda_clean.cli import main
from tda_clean.config import load_config
from tda_clean.data import load_bundle
from tda_clean.data.export import write_cleaned
from tda_clean.errors import InputError
from tests.unit_helpers import config, csv_config, small_table


def _png(path: Path, value: int, size=(6, 5), mode: str = "L") -> Path:
    """A constant image of ``value`` (W x H = ``size``); RGB ones get (value, 0, 255 - value)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, 0, 255 - value)).save(path)
    return path


def _folder(root: Path, per_class: int = 6, mode: str = "L") -> Path:
    for k, name in enumerate(("cat", "dog")):
        for i in range(per_class):
            _png(root / name / f"{i:02d}.png", 40 + 100 * k + i, mode=mode)
    return root


def _image_source(root: Path, **extra) -> dict:
    return {"kind": "image_folder", "path": str(root), **extra}


def _fails(cfg) -> str:
    with pytest.raises(InputError) as info:
        load_bundle(cfg)
    return str(info.value)


# --------------------------------------------------------------------------------------------- images
def test_image_folder_grey_and_rgb(tmp_path):
    grey = load_bundle(config(_image_source(_folder(tmp_path / "grey", per_class=12))))
    assert grey.classes == ("cat", "dog") and grey.info["classes"] == ["cat", "dog"]
    assert grey.train.X.shape[1:] == (5, 6) and grey.train.X.dtype == np.float32  # (n, H, W)
    for split in (grey.train, grey.val, grey.test):  # row_id = position in (class, file) order
        np.testing.assert_allclose(split.X[:, 0, 0] * 255, 40 + 100 * (split.row_id >= 12) + split.row_id % 12,
                                   atol=1e-4)
        np.testing.assert_array_equal(split.y, (split.row_id >= 12).astype(int))
    rgb = load_bundle(config(_image_source(_folder(tmp_path / "rgb", per_class=12, mode="RGB"))))
    assert rgb.train.X.shape[1:] == (3, 5, 6)  # (n, C, H, W)
    np.testing.assert_allclose(rgb.train.X[:, 2, 0, 0] * 255, 255 - rgb.train.X[:, 0, 0, 0] * 255, atol=1e-3)
    forced = load_bundle(config(_image_source(tmp_path / "rgb", image_mode="L", image_size=[4, 3])))
    assert forced.train.X.shape[1:] == (4, 3)


def test_image_sizes_must_match_unless_resized(tmp_path):
    root = _folder(tmp_path / "imgs")
    odd = _png(root / "dog" / "99.png", 10, size=(7, 5))
    msg = _fails(config(_image_source(root)))
    assert str(odd) in msg and "5x7" in msg and "data.image_size" in msg
    assert load_bundle(config(_image_source(root, image_size=[5, 6]))).train.X.shape[1:] == (5, 6)


def test_unreadable_image_names_the_file(tmp_path):
    root = _folder(tmp_path / "imgs")
    bad = root / "cat" / "broken.png"
    bad.write_bytes(b"not a png")
    msg = _fails(config(_image_source(root)))
    assert msg.startswith(f"data: cannot read image {bad}")


def test_image_path_table_resolves_against_the_table_folder(tmp_path, monkeypatch):
    folder = tmp_path / "data"
    rows = [{"file": f"imgs/{i}.png", "label": "yes" if i % 2 else "no", "sex": "FM"[i % 2 == 0 and i % 4 == 0]}
            for i in range(24)]
    for i, row in enumerate(rows):
        _png(folder / row["file"], 100 + 3 * i)
    pd.DataFrame(rows).to_csv(folder / "images.csv", index=False)
    monkeypatch.chdir(tmp_path)  # not the table's folder
    bundle = load_bundle(config({"kind": "csv", "path": str(folder / "images.csv"), "label": "label",
                                 "groups": ["sex"], "image_column": "file"},
                                split={"val_fraction": 0.25, "test_fraction": 0.25}))
    assert bundle.classes == ("no", "yes") and bundle.train.X.shape[1:] == (5, 6)
    for split in (bundle.train, bundle.val, bundle.test):
        np.testing.assert_allclose(split.X[:, 0, 0] * 255, 100 + 3 * split.row_id, atol=1e-4)
        assert list(split.groups["sex"]) == [rows[i]["sex"] for i in split.row_id]
    missing = folder / "gone.csv"
    pd.DataFrame(rows[:3] + [{"file": "imgs/none.png", "label": "no", "sex": "F"}]).to_csv(missing, index=False)
    assert str(folder / "imgs" / "none.png") in _fails(csv_config(missing, image_column="file"))


# ----------------------------------------------------------------------------------------------- text
def test_text_column_tfidf_fitted_on_train_only(tmp_path):
    rng = np.random.default_rng(0)
    words = np.array(["good", "great", "fine", "bad", "awful", "poor"])
    label = np.repeat(["pos", "neg"], 30)
    text = [" ".join(rng.choice(words[:3] if y == "pos" else words[3:], 4)) for y in label]
    split = np.tile(["train", "train", "val", "test"], 15)
    text[2] += " valonlyword"  # a word seen outside the training split only
    path = tmp_path / "reviews.csv"
    pd.DataFrame({"review": text, "label": label, "split": split}).to_csv(path, index=False)
    bundle = load_bundle(csv_config(path, groups=(), text_column="review", split_column="split"))
    assert set(bundle.train.feature_names) == set(words) and bundle.train.X.shape[1] == 6
    assert bundle.classes == ("neg", "pos")
    assert np.allclose(np.linalg.norm(bundle.train.X, axis=1), 1.0, atol=1e-5)  # tf-idf rows, l2-normalised
    small = load_bundle(csv_config(path, groups=(), text_column="review", split_column="split", text_features=2))
    assert small.train.X.shape[1] == 2


# ------------------------------------------------------------------------------------ labels and splits
def test_string_and_shifted_integer_labels(tmp_path):
    frame = small_table()
    frame["label"] = np.where(frame["label"] == 1, "yes", "no")
    frame.to_csv(tmp_path / "s.csv", index=False)
    bundle = load_bundle(csv_config(tmp_path / "s.csv"))
    assert bundle.classes == ("no", "yes")
    np.testing.assert_array_equal(bundle.train.y, (frame["label"].to_numpy()[bundle.train.row_id] == "yes"))
    frame["label"] = 2 + np.arange(len(frame)) % 10  # class ids 2..11 (used to crash)
    frame.to_csv(tmp_path / "i.csv", index=False)
    bundle = load_bundle(csv_config(tmp_path / "i.csv"))
    assert bundle.classes == tuple(str(c) for c in range(2, 12))
    np.testing.assert_array_equal(bundle.train.y, frame["label"].to_numpy()[bundle.train.row_id] - 2)


def test_split_column_is_used_as_given(tmp_path):
    frame = small_table()
    frame["part"] = np.array(["train", "train", "val", "test"])[np.arange(len(frame)) % 4]
    frame.to_csv(tmp_path / "t.csv", index=False)
    bundle = load_bundle(csv_config(tmp_path / "t.csv", split_column="part"))
    for name, split in zip(("train", "val", "test"), (bundle.train, bundle.val, bundle.test)):
        np.testing.assert_array_equal(split.row_id, np.flatnonzero(frame["part"] == name))
    assert "part" not in bundle.train.feature_names
    frame.loc[7, "part"] = "holdout"
    frame.to_csv(tmp_path / "t.csv", index=False)
    msg = _fails(csv_config(tmp_path / "t.csv", split_column="part"))
    assert msg == "data.split_column: column 'part' has value 'holdout' (1 rows); allowed: train, val, test"


def test_separate_split_files(tmp_path):
    frame = small_table()
    parts = {"train": frame.iloc[:200], "val": frame.iloc[200:250], "test": frame.iloc[250:]}
    for name, part in parts.items():
        part.to_csv(tmp_path / f"{name}.csv", index=False)
    cfg = csv_config(tmp_path / "train.csv", id_column="uid", val_path=str(tmp_path / "val.csv"),
                     test_path=str(tmp_path / "test.csv"))
    bundle = load_bundle(cfg)
    for name, split in zip(parts, (bundle.train, bundle.val, bundle.test)):
        np.testing.assert_array_equal(split.row_id, parts[name]["uid"].to_numpy())
    assert bundle.info["n_train"] == 200
    test = parts["test"].copy()
    test.loc[test.index[:3], "label"] = 7  # a class the training file does not have
    test.to_csv(tmp_path / "test.csv", index=False)
    assert _fails(cfg) == "data: class '7' has 3 rows in the test split but none in train"
    with pytest.raises(InputError, match="val_path: give both"):
        csv_config(tmp_path / "train.csv", val_path=str(tmp_path / "val.csv"))


def test_config_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    folder.mkdir()
    small_table().to_csv(folder / "t.csv", index=False)
    (folder / "c.yaml").write_text(yaml.safe_dump({"data": {"kind": "csv", "path": "t.csv", "label": "label"}}))
    monkeypatch.chdir(tmp_path)
    assert load_config(folder / "c.yaml").data.path == folder / "t.csv"
    assert load_config(folder / "c.yaml", ["data.path=other.csv"]).data.path == Path("other.csv")  # --set: cwd


# ------------------------------------------------------------------------------------ cleaned output
def _audit(rows: list[tuple[int, str, str | None]]) -> pd.DataFrame:
    return pd.DataFrame([{"row_id": r, "action": a, "new_label": new} for r, a, new in rows])


def test_cleaned_csv_is_byte_equal_to_original_minus_removed_plus_relabels(tmp_path):
    text = ('id,note,label\r\n1,"a, quoted",yes\r\n2,plain,no\r\n3,"multi\nline",yes\r\n4,x,no\r\n'
            '5,"say ""hi""",no\r\n6,last,yes')
    path = tmp_path / "d.csv"
    path.write_bytes(text.encode())
    source = csv_config(path, groups=(), id_column="id").data
    out = write_cleaned(source, _audit([(2, "remove", None), (5, "relabel", "yes"), (3, "relabel", "no"),
                                        (6, "keep", None)]), tmp_path / "cleaned")
    assert out == {"cleaned_data": str(tmp_path / "cleaned" / "d.csv")}
    expected = ('id,note,label\r\n1,"a, quoted",yes\r\n3,"multi\nline",no\r\n4,x,no\r\n'
                '5,"say ""hi""",yes\r\n6,last,yes')
    assert (tmp_path / "cleaned" / "d.csv").read_bytes() == expected.encode()
    assert path.read_bytes() == text.encode()  # the input is only read


def test_cleaned_parquet_and_image_manifest(tmp_path):
    frame = pd.DataFrame({"k": [10, 11, 12, 13], "v": [0.5, 1.5, 2.5, 3.5], "label": [3, 5, 3, 5]})
    frame.to_parquet(tmp_path / "p.parquet", index=False)
    source = config({"kind": "parquet", "path": str(tmp_path / "p.parquet"), "label": "label"}).data
    write_cleaned(source, _audit([(1, "remove", None), (2, "relabel", "5")]), tmp_path / "out")
    back = pd.read_parquet(tmp_path / "out" / "p.parquet")
    pd.testing.assert_frame_equal(back, pd.DataFrame({"k": [10, 12, 13], "v": [0.5, 2.5, 3.5], "label": [3, 5, 5]}))
    root = _folder(tmp_path / "imgs", per_class=2)
    write_cleaned(config(_image_source(root)).data, _audit([(0, "remove", None), (3, "relabel", "cat")]),
                  tmp_path / "out")
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv")
    assert manifest.to_dict("list") == {"path": [str(root / n) for n in ("cat/01.png", "dog/00.png", "dog/01.png")],
                                        "label": ["cat", "dog", "cat"]}


def test_run_on_string_labels_writes_cleaned_csv_and_named_audit(tmp_path):
    """End to end through the CLI with the user's split column: the cleaned CSV is the original bytes minus the
    removed rows (here: relabels only) with relabels as 'yes'/'no'; audit, review-free report keep the names."""
    frame = small_table()
    frame["label"] = np.where(frame["label"] == 1, "yes", "no")
    frame["part"] = np.array(["train", "train", "val", "test"])[np.arange(len(frame)) % 4]
    flip = np.flatnonzero(frame["part"] == "train")[:12]
    frame.loc[flip, "label"] = np.where(frame.loc[flip, "label"] == "yes", "no", "yes")
    frame.to_csv(tmp_path / "t.csv", index=False)
    cfg = {"data": {"kind": "csv", "path": "t.csv", "label": "label", "groups": ["sex"], "id_column": "uid",
                    "split_column": "part"},
           "detector": {"kind": "cleanlab", "folds": 3}, "action": {"kind": "relabel"},
           "train": {"epochs": 30}, "evaluation": {"min_group_size": 5}, "tracking": {"enabled": False}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(tmp_path / "c.yaml"), "--engine", "local", "--output", str(tmp_path / "run")]) in (0, 3)
    audit = pd.read_csv(tmp_path / "run" / "audit.csv")
    relabelled = audit[audit["action"] == "relabel"]
    assert len(relabelled) > 0 and set(audit["old_label"]) | set(relabelled["new_label"]) <= {"yes", "no"}
    new = dict(zip(relabelled["row_id"], relabelled["new_label"]))
    lines = (tmp_path / "t.csv").read_text().splitlines(keepends=True)
    col = list(frame.columns).index("label")
    want = [lines[0]]
    for uid, line in zip(frame["uid"], lines[1:]):  # no quoting in this table: fields split on commas
        fields = line.split(",")
        fields[col] = new.get(uid, fields[col])
        want.append(",".join(fields))
    assert (tmp_path / "run" / "cleaned" / "t.csv").read_text() == "".join(want)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["dataset"]["classes"] == ["no", "yes"] and report["dataset"]["n_train"] == 150


@pytest.mark.timeout(300)
def test_cli_refuses_unknown_split_value_and_unreadable_image(tmp_path):
    from tests.data.test_bad_input_cli import LOCAL, _refused

    frame = small_table()
    frame["part"] = np.where(np.arange(len(frame)) == 9, "dev", "train")
    frame.to_csv(tmp_path / "t.csv", index=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"kind": "csv", "path": "t.csv", "label": "label", "split_column": "part"}}))
    message = _refused(tmp_path, "run", str(cfg), *LOCAL, "--output", "out", inputs=(tmp_path / "t.csv",))
    assert message == "data.split_column: column 'part' has value 'dev' (1 rows); allowed: train, val, test"
    bad = _folder(tmp_path / "imgs") / "dog" / "zz.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    cfg.write_text(yaml.safe_dump({"data": {"kind": "image_folder", "path": "imgs"}, "model": {"kind": "cnn"}}))
    message = _refused(tmp_path, "run", str(cfg), *LOCAL, "--output", "out2", inputs=(bad,))
    assert message.startswith(f"data: cannot read image {bad}: ")
    assert not (tmp_path / "out2" / "report.json").exists()


def test_idx_image_files_with_labels_2_to_11(tmp_path):
    """Own images in the four Fashion-MNIST idx files: class ids 2..11 are encoded, not an IndexError."""
    import gzip

    from tda_clean.data.sources import FASHION_FILES

    rng = np.random.default_rng(0)
    for name, n in zip(FASHION_FILES, (40, 40, 20, 20)):
        arr = (rng.integers(0, 256, (n, 4, 4)) if "images" in name else 2 + np.arange(n) % 10).astype(np.uint8)
        with gzip.open(tmp_path / name, "wb") as f:
            f.write(bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape) + arr.tobytes())
    bundle = load_bundle(config({"kind": "fashion_mnist", "path": str(tmp_path), "max_rows": None},
                                split={"val_fraction": 0.25, "test_fraction": 0.25}))
    assert bundle.classes == tuple(str(c) for c in range(2, 12))
    np.testing.assert_array_equal(bundle.train.y, bundle.train.row_id % 10)
