"""Metrics, the before/after evaluation of a model, the release gate and plots."""
from __future__ import annotations

import numpy as np
from torch import nn

from tda_clean.data.dataset import DataBundle
from tda_clean.evaluation.metrics import attack_success_rate, classification_metrics, detection_metrics
from tda_clean.models.trainer import predict_proba

__all__ = ["evaluate_model", "classification_metrics", "attack_success_rate", "detection_metrics"]


def evaluate_model(model: nn.Module, bundle: DataBundle) -> dict[str, float]:
    """All held-out metrics of ``model`` on ``bundle.test`` (plus attack success on the triggered test set)."""
    test = bundle.test
    y_pred = predict_proba(model, test.X).argmax(axis=1)
    metrics = classification_metrics(test.y, y_pred, test.groups, bundle.info.get("small_groups", ()))
    if bundle.triggered_test is not None and bundle.attack_target is not None:
        pred = predict_proba(model, bundle.triggered_test.X).argmax(axis=1)
        metrics["attack_success_rate"] = attack_success_rate(pred, bundle.attack_target)
    return metrics
