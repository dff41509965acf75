"""The MLflow pyfunc of a released tda-clean model, as *model code*: MLflow copies this file into the logged model
and runs it when the model is loaded. It imports only json, re, numpy, pandas, torch and mlflow -- never
tda_clean -- so ``mlflow.pyfunc.load_model("models:/<name>@release")`` works wherever the model's
``requirements.txt`` is installed. The library itself never imports this module (it imports mlflow at import time).

Artifacts (written by :mod:`tda_clean.tracking.servable`):

- ``model``: the network as a ``torch.export`` program (``.pt2``: graph and weights, no pickled Python classes);
  input ``(n, *shape)`` in the model's dtype, output logits ``(n, n_classes)``.
- ``serving``: JSON with ``classes`` (class names; logit ``k`` is ``classes[k]``), ``model_dtype``, ``batch``
  (rows per call: null = any number, 1 when the network only exports for single rows) and ``input``, the
  preprocessing fitted on the training split, from the user's raw values to the network's input:

  - ``kind: table``: raw columns (a DataFrame, one row per example; other columns are ignored); numeric
    columns standardised ``(x - mean) / scale``, categorical ones one-hot encoded (an unseen value gives zeros), a
    free-text column TF-IDF weighted; blocks in that order, ``feature_names`` (d,).
  - ``kind: array``: raw values ``(n, *shape)`` (float64, the signature's dtype; e.g. 0..16 grey levels of
    scikit-learn's digits, 0..255 pixels of image files, already resized), divided by ``scale``.

``predict`` returns a DataFrame with one row per input row: ``label`` (str, the predicted class name) and
``prob_<class>`` (float, softmax probability of each class, in ``classes`` order; each row sums to 1).
"""
from __future__ import annotations

import json
import re

import mlflow
import numpy as np
import pandas as pd
import torch

CHUNK = 4096  # rows per forward pass


def table_features(frame: pd.DataFrame, spec: dict) -> np.ndarray:
    """Raw rows -> ``(n, d)`` float32 features, as the fitted ``spec`` (``kind: table``) says."""
    missing = [c for c in spec["columns"] if c not in frame.columns]
    if missing:
        raise ValueError(f"input has no column {missing[0]!r} (expected columns: {', '.join(spec['columns'])})")
    blocks = []
    if spec["numeric"]:
        num = spec["numeric"]
        dtype = np.dtype(num["dtype"])
        x = frame[num["columns"]].astype(np.float64).to_numpy().astype(dtype)  # computed in dtype, as sklearn
        x = (x - np.asarray(num["mean"], dtype=dtype)) / np.asarray(num["scale"], dtype=dtype)
        blocks.append(x.astype(np.float64))
    if spec["categorical"]:
        cat = spec["categorical"]
        for column, categories in zip(cat["columns"], cat["categories"]):
            values = frame[column].astype(str).to_numpy()
            blocks.append((values[:, None] == np.asarray(categories, dtype=str)[None, :]).astype(np.float64))
    if spec["text"]:
        blocks.append(_tfidf(frame[spec["text"]["column"]], spec["text"]))
    return np.hstack(blocks).astype(np.float32) if blocks else np.zeros((len(frame), 0), np.float32)


def _tfidf(texts: pd.Series, spec: dict) -> np.ndarray:
    """TF-IDF weights ``(n, n_terms)``: term counts times ``idf``, rows l2-normalised (scikit-learn's defaults)."""
    vocabulary, idf = spec["vocabulary"], np.asarray(spec["idf"])
    pattern = re.compile(spec["token_pattern"])
    out = np.zeros((len(texts), len(idf)))
    for i, text in enumerate(texts.astype(str)):
        for token in pattern.findall(text.lower() if spec["lowercase"] else text):
            if token in vocabulary:
                out[i, vocabulary[token]] += 1.0
    out *= idf
    norms = np.sqrt((out ** 2).sum(axis=1, keepdims=True))
    return np.divide(out, norms, out=out, where=norms > 0)


def array_features(values, spec: dict) -> np.ndarray:
    """Raw values ``(n, *shape)`` or ``(n, prod(shape))`` -> model input ``(n, *shape)`` (``kind: array``)."""
    x = values.to_numpy() if isinstance(values, pd.DataFrame) else np.asarray(values)
    shape = tuple(spec["shape"])
    if x.ndim == 1 and x.size == int(np.prod(shape)):
        x = x[None]
    if x.size != len(x) * int(np.prod(shape)):
        raise ValueError(f"input of shape {x.shape} does not hold rows of shape {shape}")
    dtype = np.dtype(spec.get("dtype", "float32"))
    if dtype.kind in "iu":
        return x.reshape(len(x), *shape).astype(dtype)
    return (x.reshape(len(x), *shape).astype(np.float64) / spec["scale"]).astype(np.float32)


def features(model_input, spec: dict) -> np.ndarray:
    """Raw input (DataFrame, records, dict of columns or array) -> the network's input."""
    if spec["kind"] == "table":
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        return table_features(frame, spec)
    if isinstance(model_input, dict) and len(model_input) == 1:  # a named tensor
        model_input = next(iter(model_input.values()))
    return array_features(model_input, spec)


def predict_frame(module, X: np.ndarray, serving: dict) -> pd.DataFrame:
    """``label`` and ``prob_<class>`` columns for network input ``X`` (see the module docstring)."""
    classes = [str(c) for c in serving["classes"]]
    step = serving.get("batch") or CHUNK
    dtype = getattr(torch, serving["model_dtype"])
    logits = []
    with torch.no_grad():
        for start in range(0, len(X), step):
            chunk = torch.as_tensor(np.ascontiguousarray(X[start:start + step]))
            logits.append(module(chunk.to(dtype) if chunk.is_floating_point() else chunk).double())
    logits_t = torch.cat(logits) if logits else torch.zeros((0, len(classes)), dtype=torch.float64)
    proba = torch.softmax(logits_t, dim=1).numpy()
    out = pd.DataFrame({"label": np.asarray(classes, dtype=object)[proba.argmax(axis=1)] if len(proba) else []})
    for k, name in enumerate(classes):
        out[f"prob_{name}"] = proba[:, k]
    return out


class TdaCleanClassifier(mlflow.pyfunc.PythonModel):
    """Raw rows in, class names and probabilities out (module docstring)."""

    def load_context(self, context) -> None:
        with open(context.artifacts["serving"], encoding="utf-8") as f:
            self.serving = json.load(f)
        self.module = torch.export.load(context.artifacts["model"]).module()

    def predict(self, context, model_input, params=None):
        return predict_frame(self.module, features(model_input, self.serving["input"]), self.serving)


mlflow.models.set_model(TdaCleanClassifier())
