"""Experiment tracking behind a small interface with explicit run ids.

``import tda_clean.tracking`` never imports mlflow: :func:`make_tracker` loads
:mod:`tda_clean.tracking.mlflow_tracker` (which imports mlflow itself only when a tracker is constructed).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from tda_clean.tracking.base import ERROR_TAG, PARENT_TAG, NullTracker, RunStatus, Tracker
from tda_clean.tracking.keys import mlflow_key
from tda_clean.tracking.layout import STAGE_TAG, log_before_after

if TYPE_CHECKING:  # pragma: no cover
    from tda_clean.config import TrackingConfig

__all__ = [
    "ERROR_TAG", "PARENT_TAG", "STAGE_TAG", "NullTracker", "RunStatus", "Tracker", "log_before_after",
    "make_tracker", "mlflow_key",
]


def make_tracker(config: TrackingConfig) -> Tracker:
    """:class:`NullTracker` when ``config.enabled`` is false, else an :class:`MlflowTracker`.

    Raises:
        tda_clean.errors.InputError: an http(s) tracking URI does not answer within a few seconds.
    """
    if not config.enabled:
        return NullTracker()
    from tda_clean.tracking.mlflow_tracker import MlflowTracker

    return MlflowTracker(config.tracking_uri, config.experiment)
