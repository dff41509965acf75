"""Typed configuration: validation messages with key paths, overrides, loading and the stable hash."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from tda_clean.config import (
    CleanlabDetector,
    TableSource,
    apply_overrides,
    load_config,
    parse_config,
)
from tda_clean.errors import InputError

BASE = {"seed": 3, "data": {"kind": "digits"}, "detector": {"kind": "cleanlab", "folds": 3}}


def _error(raw) -> str:
    with pytest.raises(InputError) as info:
        parse_config(raw)
    return str(info.value)


def _with(**sections) -> dict:
    return {**BASE, **sections}


# ------------------------------------------------------------------------------------------ validation
def test_valid_config_is_typed_and_defaults_filled():
    cfg = parse_config(_with(data={"kind": "csv", "path": "t.csv", "label": "y", "groups": ["sex"]}))
    assert isinstance(cfg.data, TableSource)
    assert cfg.data.path == Path("t.csv")
    assert cfg.data.groups == ("sex",)
    assert isinstance(cfg.detector, CleanlabDetector) and cfg.detector.folds == 3
    assert cfg.train.optimizer == "lbfgs" and cfg.split.test_fraction == 0.25


def test_config_is_frozen():
    cfg = parse_config(BASE)
    with pytest.raises(ValidationError):
        cfg.seed = 5  # type: ignore[misc]


def test_unknown_nested_key_names_the_key_path():
    msg = _error(_with(detector={"kind": "cleanlab", "foo": 1}))
    assert "detector.foo: unknown key" in msg


def test_unknown_key_inside_tagged_union_drops_the_tag():
    msg = _error(_with(data={"kind": "csv", "path": "t.csv", "label": "y", "colour": "red"}))
    assert "data.colour: unknown key" in msg
    assert "data.csv" not in msg


def test_unknown_top_level_key():
    assert "bogus: unknown key" in _error(_with(bogus=1))


def test_wrong_type_names_key_and_expected_type():
    msg = _error(_with(seed="abc"))
    assert msg.startswith("config: seed:")
    assert "integer" in msg


def test_wrong_nested_type():
    msg = _error(_with(train={"epochs": "many"}))
    assert "train.epochs:" in msg and "integer" in msg


def test_enum_lists_allowed_values():
    msg = _error(_with(train={"optimizer": "sgd"}))
    assert "train.optimizer:" in msg
    assert "'lbfgs'" in msg and "'adam'" in msg


def test_device_enum_lists_allowed_values():
    msg = _error(_with(train={"device": "tpu"}))
    assert "train.device:" in msg
    for allowed in ("'auto'", "'cpu'", "'cuda'"):
        assert allowed in msg


def test_unknown_data_kind_lists_allowed_kinds():
    msg = _error(_with(data={"kind": "mnist"}))
    assert msg.startswith("config: data:")
    assert "'mnist'" in msg
    for kind in ("'digits'", "'adult'", "'csv'", "'parquet'"):
        assert kind in msg


def test_unknown_detector_kind_lists_allowed_kinds():
    msg = _error(_with(detector={"kind": "bogus"}))
    assert "detector:" in msg and "'bogus'" in msg and "'cleanlab'" in msg


def test_unknown_scenario_and_action_kinds():
    msg = _error(_with(scenario={"kind": "shuffle"}))
    assert "scenario:" in msg and "'uniform_flip'" in msg and "'badnets'" in msg
    msg = _error(_with(action={"kind": "burn"}))
    assert "action:" in msg and "'remove'" in msg and "'relabel'" in msg


def test_missing_required_field_in_union_member():
    msg = _error(_with(data={"kind": "csv", "label": "y"}))
    assert "data.path: Field required" in msg


def test_range_constraints():
    assert "train.epochs:" in _error(_with(train={"epochs": 0}))
    assert "scenario.rate:" in _error(_with(scenario={"kind": "uniform_flip", "rate": 0.7}))
    assert "gate.min_accuracy:" in _error(_with(gate={"min_accuracy": 1.5}))


def test_split_fractions_must_leave_training_rows():
    msg = _error(_with(split={"val_fraction": 0.5, "test_fraction": 0.45}))
    assert "split:" in msg and "below 0.9" in msg


def test_several_errors_are_all_reported_on_one_line():
    msg = _error(_with(seed="x", train={"optimizer": "sgd"}))
    assert "seed:" in msg and "train.optimizer:" in msg
    assert "\n" not in msg


def test_non_mapping_top_level():
    assert "expected a mapping" in _error([1, 2])


# ------------------------------------------------------------------------------------------ overrides
def test_override_nested_and_typed_by_yaml():
    out = apply_overrides(BASE, ["train.lr=0.5", "train.epochs=7", "tracking.enabled=false",
                                 "data.groups=[sex, race]", "name=run-1"])
    assert out["train"] == {"lr": 0.5, "epochs": 7}
    assert out["tracking"] == {"enabled": False}
    assert out["data"] == {"kind": "digits", "groups": ["sex", "race"]}
    assert out["name"] == "run-1"
    assert isinstance(out["train"]["lr"], float) and isinstance(out["train"]["epochs"], int)


def test_override_does_not_modify_input():
    raw = {"data": {"kind": "digits"}, "train": {"lr": 0.1}}
    apply_overrides(raw, ["train.lr=0.9", "data.kind=adult"])
    assert raw == {"data": {"kind": "digits"}, "train": {"lr": 0.1}}


def test_override_value_with_equals_sign_keeps_the_rest():
    out = apply_overrides(BASE, ["name=a=b"])
    assert out["name"] == "a=b"


@pytest.mark.parametrize("item, fragment", [
    ("train.lr", "expected KEY.PATH=VALUE"),
    ("train..lr=1", "empty key"),
    ("=1", "empty key"),
    ("seed.x=1", "seed is a value, not a section"),
])
def test_override_bad_syntax(item, fragment):
    with pytest.raises(InputError) as info:
        apply_overrides(BASE, [item])
    assert fragment in str(info.value)
    assert repr(item) in str(info.value)


def test_override_then_validation_names_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(BASE))
    with pytest.raises(InputError) as info:
        load_config(path, ["detector.folds=abc"])
    assert "detector.folds:" in str(info.value)
    assert str(path) in str(info.value)


# ------------------------------------------------------------------------------------------ loading
def test_load_config_with_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(BASE))
    cfg = load_config(path, ["train.optimizer=adam", "seed=11", "scenario={kind: uniform_flip, rate: 0.1}"])
    assert cfg.train.optimizer == "adam" and cfg.seed == 11
    assert cfg.scenario.kind == "uniform_flip" and cfg.scenario.rate == 0.1


def test_missing_config_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(InputError) as info:
        load_config(missing)
    assert "config file not found" in str(info.value) and str(missing) in str(info.value)


def test_invalid_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data: {kind: digits\nseed: [")
    with pytest.raises(InputError) as info:
        load_config(path)
    assert "not valid YAML" in str(info.value) and "\n" not in str(info.value)


def test_shipped_configs_validate():
    root = Path(__file__).resolve().parents[1] / "configs"
    quick = load_config(root / "quickstart.yaml")
    assert quick.data.kind == "adult" and quick.scenario.kind == "group_flip"
    backdoor = load_config(root / "digits_backdoor.yaml")
    assert backdoor.data.kind == "digits" and backdoor.scenario.kind == "badnets"


# ------------------------------------------------------------------------------------------ hash
def test_hash_is_stable_across_key_order_and_equal_defaults():
    a = parse_config({"seed": 3, "data": {"kind": "digits"}, "train": {"lr": 0.1, "epochs": 5}})
    b = parse_config({"train": {"epochs": 5, "lr": 0.1}, "data": {"kind": "digits"}, "seed": 3})
    c = parse_config({"train": {"epochs": 5, "lr": 0.1, "optimizer": "lbfgs"}, "data": {"kind": "digits"}, "seed": 3})
    assert a.config_hash() == b.config_hash() == c.config_hash()
    assert len(a.config_hash()) == 16 and int(a.config_hash(), 16) >= 0


def test_hash_is_a_fixed_function_of_the_config(tmp_path):
    # the same YAML text loaded twice, and a round-trip through model_dump, give the same hash
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(BASE))
    first, second = load_config(path), load_config(path)
    again = parse_config(first.model_dump(mode="json"))
    assert first.config_hash() == second.config_hash() == again.config_hash()


@pytest.mark.parametrize("override", ["seed=4", "train.lr=0.02", "detector.folds=4",
                                      "scenario={kind: uniform_flip, rate: 0.1}", "gate.min_accuracy=0.5"])
def test_hash_changes_when_a_result_relevant_value_changes(override):
    base = parse_config(BASE)
    changed = parse_config(apply_overrides(BASE, [override]))
    assert changed.config_hash() != base.config_hash()


def test_hash_ignores_tracking_settings():
    base = parse_config(BASE)
    tracked = parse_config(apply_overrides(BASE, ["tracking.enabled=false", "tracking.experiment=other",
                                                  "tracking.tracking_uri=sqlite:///x.db"]))
    assert tracked.config_hash() == base.config_hash()


def test_flat_view_uses_dotted_keys():
    flat = parse_config(_with(model={"kind": "mlp", "hidden": [8, 4]})).flat()
    assert flat["model.kind"] == "mlp"
    assert flat["model.hidden"] == "[8, 4]"
    assert flat["detector.folds"] == "3"
    assert flat["seed"] == "3"
    assert all(isinstance(v, str) for v in flat.values())


def test_runconfig_requires_data():
    msg = _error({"seed": 1})
    assert "data: Field required" in msg


# ------------------------------------------------------------------------------- bad input (issue: one line)
def _load_error(path: Path, overrides=()) -> str:
    before = path.read_bytes()
    with pytest.raises(InputError) as info:
        load_config(path, list(overrides))
    assert path.read_bytes() == before
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.parametrize("content", [b"\x00\xff\xfe\x01binary", b"name: caf\xe9\n", b"a: \x00\n"])
def test_binary_or_non_utf8_config_is_one_line_naming_the_file(tmp_path, content):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    message = _load_error(path)
    assert message.startswith(f"{path}: not valid YAML (")


def test_override_with_invalid_yaml_names_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(BASE))
    message = _load_error(path, ["name=[unclosed"])
    assert message.startswith("--set name: not valid YAML (") and "line 1, column 10" in message


@pytest.mark.timeout(60)
def test_alias_bomb_is_refused_naming_the_file(tmp_path):
    # 9 levels of 10 aliases: 10**9 leaves once expanded (tens of GB as JSON); refused from the alias graph
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 10)]
    lines.append("seed: 1")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines))
    message = _load_error(path)
    assert message.startswith(f"{path}: expands to more than") and "aliases" in message


@pytest.mark.timeout(60)
def test_alias_bomb_in_an_override_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(BASE))
    bomb = "{a: &a [x, x, x, x, x, x, x, x, x, x], b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a], " \
           "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b], d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c], " \
           "e: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d, *d, *d, *d, *d, *d, *d, *d, *d, *d, *d]}"
    assert _load_error(path, [f"name={bomb}"]).startswith("--set name: expands to more than")


def test_self_referencing_alias_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: &a [1, *a]\n")
    assert _load_error(path).startswith(f"{path}: expands to more than")


def test_oversized_config_file_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 1\n" + "# padding\n" * 200_000)
    assert "bytes; a config file is at most" in _load_error(path)


def test_a_few_aliases_still_work(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 4\ndata: &d {kind: digits}\ndetector: {kind: cleanlab, folds: 3}\n")
    assert load_config(path).seed == 4


@pytest.mark.parametrize("seed, fragment", [(2**70, "seed: Input should be less than 2147483648"),
                                            (-1, "seed: Input should be greater than or equal to 0")])
def test_seed_out_of_range_names_seed(seed, fragment):
    assert _error(_with(seed=seed)) == f"config: {fragment}"


@pytest.mark.parametrize("data, leaked", [
    ({"features": ["a", "y"]}, "'y'"), ({"features": ["a", "uid"], "id_column": "uid"}, "'uid'")])
def test_label_or_id_column_as_feature_is_refused(data, leaked):
    msg = _error(_with(data={"kind": "csv", "path": "t.csv", "label": "y", **data}))
    assert msg.startswith(f"config: data.features: {leaked} is the label or id column")


def test_class_flip_rate_one_names_scenario_rate():
    msg = _error(_with(scenario={"kind": "class_flip", "source": 0, "target": 1, "rate": 1.0}))
    assert msg == "config: scenario.rate: Input should be less than 1"


def test_min_group_size_is_validated():
    assert parse_config(BASE).evaluation.min_group_size == 20
    assert "evaluation.min_group_size:" in _error(_with(evaluation={"min_group_size": 0}))
