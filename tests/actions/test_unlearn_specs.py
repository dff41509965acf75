"""One config spec per unlearning method (``action: {kind: unlearn, method: ...}``): each parses with its defaults,
``method`` defaults to ``newton``, and a setting of another method is refused with a one-line error naming the
key (exit 2 on the command line)."""
from __future__ import annotations

import pytest
import yaml

from tda_clean.cli import main
from tda_clean.config import (
    UNLEARN_SPECS, AscentUnlearn, CounterexampleUnlearn, FinetuneUnlearn, NewtonUnlearn, RetrainUnlearn, UnlearnSpec,
    parse_config, unlearn_spec,
)
from tda_clean.config.actions import METHODS
from tda_clean.errors import InputError

SPEC_OF = {"retrain": RetrainUnlearn, "newton": NewtonUnlearn, "finetune": FinetuneUnlearn, "ascent": AscentUnlearn,
           "counterexample": CounterexampleUnlearn}


def _action(action: dict):
    return parse_config({"data": {"kind": "digits"}, "action": {"kind": "unlearn", **action}}).action


def _settings(spec: type) -> set[str]:
    return set(spec.model_fields) - {"kind", "method"}


@pytest.mark.parametrize("method", METHODS)
def test_every_method_parses_with_its_defaults(method):
    action = _action({"method": method})
    spec = SPEC_OF[method]
    assert type(action) is spec and action.method == method and isinstance(action, UnlearnSpec)
    assert action == spec() == unlearn_spec(method=method)
    assert {k: getattr(action, k) for k in _settings(spec)} == {k: f.default for k, f in spec.model_fields.items()
                                                                   if k in _settings(spec)}


def test_the_specs_cover_the_methods_and_newton_is_the_default():
    assert {s.model_fields["method"].default for s in UNLEARN_SPECS} == set(METHODS) == set(SPEC_OF)
    assert type(_action({})) is NewtonUnlearn
    assert _action({"method": "counterexample", "counter_steps": 40}).counter_steps == 40
    assert _action({"method": "ascent", "epochs": 2, "ascent_weight": 0.1}).epochs == 2
    assert _action({"solver": "cg", "steps": 3}) == NewtonUnlearn(solver="cg", steps=3)  # method left at newton


def test_the_methods_settings_are_their_own():
    """Shared only where two methods use a setting the same way (the gradient methods' Adam loop, the batch size)."""
    assert _settings(RetrainUnlearn) == set()
    assert {"order", "steps", "solver", "params", "damping"} <= _settings(NewtonUnlearn)
    assert _settings(FinetuneUnlearn) == {"epochs", "lr", "batch_size", "reinit_head"}
    assert _settings(AscentUnlearn) == _settings(FinetuneUnlearn) | {"ascent_weight", "max_forget_loss"}
    assert {"counter_steps", "counter_budget", "stamp", "target_drop", "batch_size"} <= _settings(CounterexampleUnlearn)
    assert not _settings(CounterexampleUnlearn) & ({"epochs", "lr", "solver"} | _settings(NewtonUnlearn))


FOREIGN = [(method, key) for method in METHODS for key in sorted(set().union(*map(_settings, UNLEARN_SPECS)))
           if key not in _settings(SPEC_OF[method])]


@pytest.mark.parametrize(("method", "key"), FOREIGN, ids=[f"{m}-{k}" for m, k in FOREIGN])
def test_another_methods_setting_names_the_key(method, key):
    value = SPEC_OF[next(m for m in METHODS if key in _settings(SPEC_OF[m]))].model_fields[key].default
    with pytest.raises(InputError) as err:
        _action({"method": method, key: value})
    assert str(err.value) == f"config: action.{key}: unknown key"


def test_unknown_method_names_the_key():
    with pytest.raises(InputError) as err:
        _action({"method": "scrub"})
    assert str(err.value) == ("config: action.method: Input should be 'retrain', 'newton', 'finetune', 'ascent' or "
                              "'counterexample'")


def test_foreign_setting_exits_2_with_one_line(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"data": {"kind": "digits"},
                                    "action": {"kind": "unlearn", "method": "newton", "counter_steps": 5}}))
    assert main(["validate", str(path)]) == 2
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("tda-clean: error:")]
    assert len(lines) == 1 and "action.counter_steps: unknown key" in lines[0], lines
