"""``action.kind: recommended``: the detector's recommended action is applied (``relabel`` or ``remove``), it is
``label_noise``'s default, an explicit action is kept (and the report says the detector recommended otherwise), and
``recommended`` with a detector that recommends nothing is refused naming the key."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tda_clean.actions import action_summary, apply_action, replay_audit, resolve_action
from tda_clean.config import RecommendedAction, RelabelAction, RemoveAction, parse_config
from tda_clean.errors import InputError
from tda_clean.selection import Selection
from tests.unit_helpers import toy_dataset

FLAGGED = [4, 1, 7]


def _selection(action: str | None, chosen: str | None = "loo_loss") -> Selection:
    n = 12
    mask = np.zeros(n, bool)
    mask[FLAGGED] = True
    suggested = (np.arange(n) + 1) % 3  # every suggestion differs from toy_dataset's label (i % 3)
    return Selection(mask=mask, indices=np.array(FLAGGED), scores=np.where(mask, 1.0, 0.0), threshold=float("nan"),
                     detector="label_noise", suggested_labels=suggested, reasons=("r",) * 3,
                     info={"chosen": chosen} if chosen else {}, recommended_action=action)


@pytest.mark.parametrize("recommended, counts", [("relabel", {"relabeled": 3, "removed": 0}),
                                                 ("remove", {"relabeled": 0, "removed": 3})])
def test_recommended_applies_the_detectors_action(recommended, counts):
    train = toy_dataset(n=12, n_classes=3)
    selection = _selection(recommended, "loo_loss" if recommended == "relabel" else "harmful")
    result = apply_action(train, selection, RecommendedAction())
    assert {k: result.counts[k] for k in counts} == counts
    assert set(result.audit["action"]) == {recommended}   # the audit names the action applied, so it replays
    cleaned = replay_audit(train, result.audit)
    np.testing.assert_array_equal(cleaned.y, result.train.y)
    if recommended == "relabel":
        np.testing.assert_array_equal(result.train.y[FLAGGED], selection.suggested_labels[FLAGGED])
    else:
        assert len(result.train) == 12 - 3 and not np.isin(train.row_id[FLAGGED], result.train.row_id).any()
    summary = action_summary(RecommendedAction(), selection)
    chosen = selection.info["chosen"]
    assert summary == {"kind": recommended, "configured": "recommended", "recommended": recommended,
                       "reason": f"recommended by label_noise for {chosen}'s rows"}


def test_an_explicit_action_is_kept_and_the_summary_says_what_was_recommended():
    selection = _selection("relabel")
    assert resolve_action(RemoveAction(), selection) == RemoveAction()
    result = apply_action(toy_dataset(n=12, n_classes=3), selection, RemoveAction())
    assert result.counts["removed"] == 3 and result.counts["relabeled"] == 0
    assert action_summary(RemoveAction(), selection)["reason"] == (
        "as configured in action.kind; label_noise recommends relabel for loo_loss's rows")
    assert action_summary(RelabelAction(), selection)["reason"] == "as configured in action.kind"


def test_a_detector_without_a_recommendation_is_refused_at_the_action():
    with pytest.raises(InputError, match="action.kind=recommended: detector 'label_noise' recommends no action"):
        apply_action(toy_dataset(n=12, n_classes=3), _selection(None, None), RecommendedAction())


def test_selection_keeps_its_recommendation_on_disk(tmp_path):
    selection = _selection("remove")
    selection.save(tmp_path / "s.npz")
    assert Selection.load(tmp_path / "s.npz").recommended_action == "remove"
    replace(selection, recommended_action=None).save(tmp_path / "n.npz")
    assert Selection.load(tmp_path / "n.npz").recommended_action is None


BASE = {"data": {"kind": "digits"}}


def test_label_noise_defaults_to_the_recommended_action_and_keeps_an_explicit_one():
    assert parse_config({**BASE, "detector": {"kind": "label_noise"}}).action == RecommendedAction()
    explicit = parse_config({**BASE, "detector": {"kind": "label_noise"}, "action": {"kind": "remove"}})
    assert explicit.action == RemoveAction()
    assert parse_config({**BASE, "detector": {"kind": "harmful"}}).action == RelabelAction()   # unchanged default


def test_recommended_with_a_detector_that_recommends_nothing_is_one_line_naming_the_key():
    with pytest.raises(InputError) as info:
        parse_config({**BASE, "detector": {"kind": "harmful"}, "action": {"kind": "recommended"}}, source="c.yaml")
    assert str(info.value) == ("c.yaml: action.kind: 'recommended' follows the detector's recommendation; "
                               "detector.kind=harmful makes none (use remove or relabel)")


def test_a_run_config_passed_whole_keeps_its_unset_action_derived():
    """``tda_clean.clean(config=RunConfig, detector=...)`` dumps the RunConfig and merges the overrides: an action
    the user never wrote must follow the new detector, one the user wrote must stay."""
    from tda_clean.api import _base, _merge

    unset = parse_config(BASE)                                           # cleanlab's default action: relabel
    assert unset.action == RelabelAction()
    raw = _merge(_base(unset), {"detector": {"kind": "label_noise"}})
    assert parse_config(raw).action == RecommendedAction()
    written = parse_config({**BASE, "action": {"kind": "relabel"}})
    raw = _merge(_base(written), {"detector": {"kind": "label_noise"}})
    assert parse_config(raw).action == RelabelAction()
    assert parse_config(_base(written)) == written and parse_config(_base(unset)) == unset
