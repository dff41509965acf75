"""The user's own model for the review classifier: an MLP on the TF-IDF features of the text column.

tda-clean calls ``make_model(input_shape, n_classes)`` (config ``model.factory: model:make_model``) with
``input_shape = (n_terms,)`` — the TF-IDF vector of a review, ``data.text_features`` terms at most — and the
number of classes (2: ``fresh``, ``rotten``); the module maps a float batch (n, n_terms) to logits (n, n_classes).
"""
from __future__ import annotations

from torch import nn


def make_model(input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """TF-IDF (n, d) -> Linear(d, 64) -> ReLU -> Dropout(0.2) -> Linear(64, n_classes) logits (n, n_classes)."""
    (d,) = input_shape
    return nn.Sequential(nn.Linear(d, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, n_classes))
