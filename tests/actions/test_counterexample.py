"""Counter-example unlearning of a BadNets backdoor on digits: the trigger estimate finds the patch, the
after-model loses the backdoor and keeps its accuracy, runs are deterministic and the before-model is untouched."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tda_clean.actions.counterexample import estimate_trigger
from tda_clean.actions.unlearn import unlearn
from tda_clean.config import BadNets, CNNConfig, TrainConfig, unlearn_spec
from tda_clean.data import load_bundle
from tda_clean.data.scenarios import badnets, trigger_mask
from tda_clean.models.factory import build_model
from tda_clean.models.trainer import fit, predict_proba
from tests.unit_helpers import digits_config, torch_single_thread

_single_thread = pytest.fixture(scope="module", autouse=True)(torch_single_thread)
TRAIN = TrainConfig(optimizer="adam", lr=0.003, l2=1e-4, epochs=25, batch_size=64, device="cpu")
SCENARIO = BadNets(target=0, rate=0.05, patch_size=2, patch_value=1.0)


@pytest.fixture(scope="module")
def backdoored():
    bundle = badnets(load_bundle(digits_config()), SCENARIO, 0)
    model = build_model(CNNConfig(channels=(8, 16), hidden=32), bundle.train.feature_shape, bundle.train.n_classes, 0)
    fit(model, bundle.train.X, bundle.train.y, TRAIN, 0, progress=False)
    return bundle, model.eval()


def _scores(model, bundle) -> tuple[float, float]:
    acc = float(np.mean(predict_proba(model, bundle.test.X).argmax(1) == bundle.test.y))
    asr = float(np.mean(predict_proba(model, bundle.triggered_test.X).argmax(1) == bundle.attack_target))
    return acc, asr


@pytest.mark.parametrize("false_positives", [0, 30])
def test_trigger_estimate_is_the_patch(backdoored, false_positives):
    bundle, _ = backdoored
    forget = bundle.corrupted_mask.copy()          # 54 poisons, plus clean target-class rows a detector might add
    clean_target = np.flatnonzero((bundle.train.y == SCENARIO.target) & ~forget)
    forget[np.random.default_rng(0).choice(clean_target, false_positives, replace=False)] = True
    (mask, values), agree = estimate_trigger(bundle.train.X, forget)
    truth = trigger_mask(SCENARIO, bundle.train.X.shape[-2:]).reshape(-1)
    np.testing.assert_array_equal(mask, truth)
    np.testing.assert_allclose(values[truth], 1.0, atol=1e-6)
    assert agree[truth].min() > 0.5 and agree[~truth].max() < 0.4


def test_counterexample_removes_the_backdoor_and_keeps_accuracy(backdoored):
    bundle, model = backdoored
    acc_before, asr_before = _scores(model, bundle)
    before = [p.detach().clone() for p in model.parameters()]
    out, info = unlearn(unlearn_spec(method="counterexample", counter_steps=40), model, bundle.train.X, bundle.train.y,
                        bundle.corrupted_mask, TRAIN, 0)
    acc, asr = _scores(out, bundle)
    print(f"before acc {acc_before:.4f} ASR {asr_before:.4f}; after acc {acc:.4f} ASR {asr:.4f}; {info}")
    assert asr_before > 0.5                        # the scenario plants a working backdoor
    assert asr < 0.05 and acc >= acc_before - 0.02
    assert info["method"] == "counterexample" and info["trigger_features"] == 4
    assert info["relabelled"] >= 0.9 * bundle.corrupted_mask.sum()   # poisons come from non-target classes
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)                   # the before-model is untouched


def test_counterexample_is_deterministic_and_uses_a_given_trigger(backdoored):
    bundle, model = backdoored
    cfg = unlearn_spec(method="counterexample", counter_steps=5)
    args = (model, bundle.train.X, bundle.train.y, bundle.corrupted_mask, TRAIN)
    a, b, c = unlearn(cfg, *args, 0)[0], unlearn(cfg, *args, 0)[0], unlearn(cfg, *args, 1)[0]
    flat = [torch.cat([p.detach().reshape(-1) for p in m.parameters()]) for m in (a, b, c)]
    assert torch.equal(flat[0], flat[1]) and not torch.equal(flat[0], flat[2])
    empty = (np.zeros(64, dtype=bool), np.zeros(64))
    _, info = unlearn(cfg, *args, 0, trigger=empty)
    assert info["trigger_features"] == 0 and info["relabelled"] == 0   # nothing erased: the before-model's label
    from tda_clean.errors import InputError

    with pytest.raises(InputError, match="trigger must be"):
        unlearn(cfg, *args, 0, trigger=(np.zeros(10, dtype=bool), np.zeros(10)))


def test_config_accepts_the_method_and_names_a_bad_key():
    from tda_clean.config import parse_config
    from tda_clean.errors import InputError

    raw = {"data": {"kind": "digits"}, "action": {"kind": "unlearn", "method": "counterexample", "counter_steps": 5}}
    assert parse_config(raw).action.counter_steps == 5
    with pytest.raises(InputError, match="action.layers"):
        parse_config({**raw, "action": {**raw["action"], "layers": "head"}})
    with pytest.raises(InputError, match="action.stamp"):
        parse_config({**raw, "action": {**raw["action"], "stamp": -1}})


def test_step_cap_is_a_share_of_a_training_run():
    from tda_clean.actions.counterexample import step_cap, target_class

    assert step_cap(0.04, 60, 1078, 64) == 41 and step_cap(0.04, 20, 6000, 64) == 75 and step_cap(1e-9, 1, 1, 64) == 1
    y = np.array([0, 1, 2, 0, 1, 2, 1, 1, 0, 0, 0, 2])
    forget = np.zeros(12, dtype=bool)
    forget[[0, 3, 8, 1]] = True                    # three rows labelled 0, one labelled 1: target 0
    assert target_class(y, forget) == 0


def test_body_of_a_model_without_one_is_refused():
    from tda_clean.config import LogisticConfig
    from tda_clean.errors import InputError

    X = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    y, forget = np.arange(40) % 2, np.arange(40) < 4
    model = build_model(LogisticConfig(), (4,), 2, 0)
    with pytest.raises(InputError, match="action.layers=body: the model has no trainable layer"):
        unlearn(unlearn_spec(method="counterexample", counter_steps=2, layers="body"), model, X, y, forget,
                TrainConfig(device="cpu"), 0)


@pytest.mark.parametrize("stamp", [0, 8])
@pytest.mark.parametrize("loss", ["logits", "labels"])
def test_no_stamping_and_a_forget_set_smaller_than_stamp(stamp, loss):
    """``stamp: 0`` (no stamped rows; up to ``batch_size`` forget rows a step) and 3 forget rows under ``stamp: 8``:
    the batch, the targets and the weights line up and the steps run."""
    from tda_clean.config import MLPConfig

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 4)).astype(np.float32), np.arange(60) % 3
    forget = np.arange(60) < 3
    model = build_model(MLPConfig(hidden=(8,)), (4,), 3, 0)
    trigger = (np.array([True, False, False, False]), np.array([5.0, 0, 0, 0]))
    out, info = unlearn(unlearn_spec(method="counterexample", counter_steps=3, stamp=stamp, counter_loss=loss), model,
                        X, y, forget, TrainConfig(device="cpu"), 0, trigger=trigger)
    assert info["steps"] == 3 and info["stamp"] == stamp
    assert all(torch.isfinite(p).all() for p in out.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(out.parameters(), model.parameters()))  # the steps moved it


def test_teacher_logits_are_kept_per_distinct_row():
    """Many steps over few rows: the teacher's logits are held once per distinct row (memory does not grow with the
    steps), and indexing them by ``where`` gives the teacher on every drawn row."""
    from tda_clean.actions.counterexample import teacher_logits

    gen = torch.Generator().manual_seed(0)
    teacher = torch.nn.Linear(3, 5).double()
    Xt = torch.randn(10, 3, generator=gen, dtype=torch.float64)
    draws = torch.randint(0, 10, (400, 6), generator=gen)
    logits, where = teacher_logits(teacher, Xt, draws, chunk=4)
    assert logits.shape == (len(torch.unique(draws)), 5) and where.shape == draws.shape
    with torch.no_grad():
        torch.testing.assert_close(logits[where], teacher(Xt[draws]))


def test_target_drop_lowers_only_other_classes_target_logit():
    from tda_clean.actions.counterexample import _below_target

    logits = torch.tensor([[2.0, 1.0, 0.0], [2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    out = _below_target(logits, torch.tensor([0, 1, 2]), 0, 3.0)
    assert out[0, 0] == 2.0                        # a target-class row keeps its logit
    assert out[1, 0] == -1.0 and out[2, 0] == -3.0  # own target logit - 3, however far below the others it is
    assert torch.equal(out[:, 1:], logits[:, 1:]) and torch.equal(_below_target(logits, torch.tensor([1, 1, 1]), 0,
                                                                                None), logits)


def test_the_step_cap_holds_and_runs_repeat(backdoored):
    from tda_clean.actions.counterexample import step_cap

    bundle, model = backdoored
    args = (model, bundle.train.X, bundle.train.y, bundle.corrupted_mask, TRAIN)
    _, capped = unlearn(unlearn_spec(method="counterexample", counter_steps=7), *args, 0)
    assert capped["steps"] == 7
    spec = unlearn_spec(method="counterexample")
    n_keep, n_forget = int((~bundle.corrupted_mask).sum()), int(bundle.corrupted_mask.sum())
    per_step = min(16, TRAIN.batch_size) + spec.stamp + min(spec.stamp, n_forget)   # retained + stamped + forget
    a, info_a = unlearn(spec, *args, 0)
    assert info_a["steps"] == step_cap(spec.counter_budget, TRAIN.epochs, n_keep, per_step)
    b, _ = unlearn(unlearn_spec(method="counterexample"), *args, 0)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_offsets_undo_a_per_class_shift_and_lower_the_kl():
    from tda_clean.actions.head_bias import fit_offsets, mean_kl

    gen = torch.Generator().manual_seed(0)
    before = 2 * torch.randn(300, 4, generator=gen, dtype=torch.float64)
    shift = torch.tensor([1.5, -0.5, 0.0, 0.7], dtype=torch.float64)
    delta = fit_offsets(before + shift, before)
    torch.testing.assert_close(delta, -(shift - shift.mean()), atol=1e-6, rtol=0)   # the shift, up to a constant
    after = before + shift + 0.3 * torch.randn(300, 4, generator=gen, dtype=torch.float64)
    delta = fit_offsets(after, before)
    assert mean_kl(after, before, delta) < mean_kl(after, before) and abs(float(delta.sum())) < 1e-9
    shrunk = fit_offsets(after, before, ridge=0.1)                  # the ridge pulls the offsets towards 0
    assert float(shrunk.norm()) < float(delta.norm()) and mean_kl(after, before, shrunk) < mean_kl(after, before)
    only = fit_offsets(after, before, classes=[0])
    assert torch.equal(only[1:], torch.zeros(3, dtype=torch.float64)) and float(only[0]) < 0   # class 0 was raised
    assert mean_kl(after, before, only) < mean_kl(after, before)


@pytest.mark.parametrize("rows_from", ["held", "drawn"])
def test_head_bias_moves_only_the_last_bias_and_lowers_the_kl(backdoored, rows_from):
    bundle, model = backdoored
    args = (model, bundle.train.X, bundle.train.y, bundle.corrupted_mask, TRAIN, 0)
    plain, _ = unlearn(unlearn_spec(method="counterexample", counter_steps=10, head_bias="none"), *args)
    spec = unlearn_spec(method="counterexample", counter_steps=10, head_bias=rows_from, head_bias_rows=200)
    out, info = unlearn(spec, *args)
    again, _ = unlearn(spec, *args)
    assert all(torch.equal(p, q) for p, q in zip(out.parameters(), again.parameters()))   # deterministic
    names = [n for n, _ in out.named_parameters()]
    moved = [n for (n, p), q in zip(out.named_parameters(), plain.parameters()) if not torch.equal(p, q)]
    assert moved == [names[-1]] and names[-1].endswith("bias")      # the steps are the same; only the head's bias
    kl_before, kl_after = info["head_bias_kl"]
    assert kl_after < kl_before and len(info["head_bias"]) == bundle.train.n_classes
    bs = min(16, TRAIN.batch_size)
    expected = {"held": 200}                                          # drawn: the distinct drawn rows
    assert info["head_bias_rows"] == expected.get(rows_from, info["head_bias_rows"])
    assert 0 < info["head_bias_rows"] <= 10 * (bs + spec.stamp)
