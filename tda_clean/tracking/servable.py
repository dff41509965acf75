"""A trained model as a servable MLflow pyfunc that loads without tda_clean and predicts on raw rows.

The network is saved with ``torch.export`` (graph and weights; no pickled Python classes), the preprocessing
fitted on the training split as JSON, and the pyfunc is *model code*: :mod:`tda_clean.tracking.serving_model`,
which imports only numpy, pandas, torch and mlflow (their versions pinned in ``requirements.txt``). The input
signature is the user's raw columns (tables) or raw arrays (images), ``predict`` returns ``label`` (the class
name) and ``prob_<class>`` columns.

A network ``torch.export`` cannot export for any batch size is exported for single rows (predictions then run row
by row); one it cannot export at all (a user's ``model.kind: python`` module with Python control flow on tensor
values, say) falls back to ``mlflow.pytorch``'s pickle with the user's code files as ``code_paths``, with a warning:
that model needs the user's code and PyTorch's unpickler to load, so it is not "safe" in the sense above.
mlflow is imported inside the functions.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from tda_clean.config import RunConfig
    from tda_clean.data import DataBundle

MODEL_CODE = Path(__file__).with_name("serving_model.py")
#: Tag set on the logged model (and its run): "true", or "false" when the pickle fallback was used.
SERVABLE_TAG = "servable"
#: Tag with the reason of a fallback.
FALLBACK_TAG = "servable_fallback"


def servability(tags: dict[str, str]) -> dict[str, Any]:
    """``report.json``'s view of a logged model's tags: ``{"servable": True}``, ``{"servable": False,
    "servable_fallback": <reason>}`` (the pickle fallback), or ``{"servable": None}`` (logged without the tags)."""
    if SERVABLE_TAG not in tags:
        return {"servable": None}
    if tags[SERVABLE_TAG] == "true":
        return {"servable": True}
    return {"servable": False, "servable_fallback": tags.get(FALLBACK_TAG, "")}


@dataclass(frozen=True)
class ServingInput:
    """What it takes to serve a model on raw rows.

    classes:        class names, ``classes[k]`` for logit ``k``.
    preprocessing:  the bundle's JSON recipe from raw rows to model input (:attr:`DataBundle.preprocessing`), or
                    None (the model then takes its preprocessed ``(n, *shape)`` input as it is).
    example_X:      ``(k, *feature_shape)`` model inputs (a few validation rows) to export and check with.
    code_paths:     the user's model code files, shipped only by the pickle fallback.
    """

    classes: tuple[str, ...]
    preprocessing: dict[str, Any] | None
    example_X: np.ndarray
    code_paths: tuple[str, ...] = field(default=())


def serving_input(config: RunConfig, bundle: DataBundle) -> ServingInput:
    """The :class:`ServingInput` of a run's models (validation rows as examples; train rows when val is empty)."""
    rows = bundle.val if len(bundle.val) else bundle.train
    code: tuple[str, ...] = ()
    if config.model.kind == "python":
        from tda_clean.models.user import code_files

        code = tuple(sorted({str(p) for p in code_files(config.train) if p is not None}))
    return ServingInput(tuple(bundle.classes), bundle.preprocessing, rows.X[:8], code)


def export_network(model: torch.nn.Module, example: torch.Tensor) -> tuple[Any, int | None]:
    """``torch.export`` of ``model`` with a dynamic batch axis, else for single rows; ``(program, batch)`` with
    ``batch`` None (any number of rows) or 1. Raises what ``torch.export`` raises when neither works or the
    exported program's logits differ from the module's on ``example``."""
    import torch

    model = model.eval()
    try:
        program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
        batch = None
    except Exception:  # noqa: BLE001 - e.g. the batch size used as a Python int: export for one row instead
        program, batch = torch.export.export(model, (example[:1],)), 1
    with torch.no_grad():
        rows = example if batch is None else example[:1]
        expected, got = model(rows), program.module()(rows)
    if not torch.allclose(expected, got, rtol=1e-4, atol=1e-5):
        raise ValueError("the exported program's logits differ from the module's")
    return program, batch


def requirements() -> list[str]:
    """The pinned packages the model code imports (torch without its local ``+cpu`` label, which pip matches)."""
    import mlflow
    import pandas as pd
    import torch

    return [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}",
            f"numpy=={np.__version__}", f"pandas=={pd.__version__}"]


def signature_and_example(serving: dict[str, Any]):
    """The pyfunc signature (raw input columns or array -> ``label``, ``prob_<class>``) and a raw input example."""
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    spec = serving["input"]
    outputs = Schema([ColSpec("string", "label")] + [ColSpec("double", f"prob_{c}") for c in serving["classes"]])
    if spec["kind"] == "table":
        types = {"double": "float64", "long": "int64", "boolean": "bool", "string": "object"}
        example = pd.DataFrame(spec["example"], columns=spec["columns"])
        example = example.astype({c: types[spec["types"][c]] for c in spec["columns"]})
        inputs = Schema([ColSpec(spec["types"][c], c) for c in spec["columns"]])
    else:
        dtype = np.dtype(spec.get("dtype", "float32"))
        dtype = dtype if dtype.kind in "iu" else np.dtype(np.float64)
        example = np.asarray(spec["example"], dtype=dtype)
        inputs = Schema([TensorSpec(dtype, (-1, *spec["shape"]))])
    return ModelSignature(inputs=inputs, outputs=outputs), example


def save_servable(model: torch.nn.Module, serving_in: ServingInput, path: str, *, mlflow_model) -> dict[str, str]:
    """Write the model to the local folder ``path`` as the servable pyfunc (module docstring); returns the tags
    to set on the logged model (:data:`SERVABLE_TAG`, and :data:`FALLBACK_TAG` when the pickle fallback was used)."""
    import tempfile

    import mlflow.pyfunc
    import torch

    model = model.cpu().eval()
    dtype = next(iter(model.parameters()), torch.zeros(())).dtype
    example = torch.as_tensor(np.ascontiguousarray(serving_in.example_X))
    example = example.to(dtype) if example.is_floating_point() else example
    try:
        program, batch = export_network(model, example)
    except Exception as exc:  # noqa: BLE001 - any export failure: the documented fallback
        reason = f"torch.export failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        warnings.warn(f"model {type(model).__name__} is logged with mlflow.pytorch's pickle (needs its code to "
                      f"load; not servable without it): {reason}", stacklevel=2)
        _save_pickle(model, serving_in, path, mlflow_model=mlflow_model)
        return {SERVABLE_TAG: "false", FALLBACK_TAG: reason}
    preprocessing = serving_in.preprocessing or {"kind": "array", "shape": list(serving_in.example_X.shape[1:]),
                                                 "scale": 1.0, "dtype": str(serving_in.example_X.dtype),
                                                 "example": serving_in.example_X[:1].tolist()}
    serving = {"format": 1, "classes": list(serving_in.classes), "model_dtype": str(dtype).removeprefix("torch."),
               "batch": batch, "input": preprocessing}
    signature, input_example = signature_and_example(serving)
    with tempfile.TemporaryDirectory(prefix="tda-clean-servable-") as tmp:
        torch.export.save(program, os.path.join(tmp, "model.pt2"))
        with open(os.path.join(tmp, "serving.json"), "w", encoding="utf-8") as f:
            json.dump(serving, f)
        mlflow.pyfunc.save_model(
            path, python_model=str(MODEL_CODE), mlflow_model=mlflow_model, signature=signature,
            input_example=input_example, pip_requirements=requirements(),
            artifacts={"model": os.path.join(tmp, "model.pt2"), "serving": os.path.join(tmp, "serving.json")},
        )
    return {SERVABLE_TAG: "true"}


def _save_pickle(model: torch.nn.Module, serving_in: ServingInput, path: str, *, mlflow_model) -> None:
    import mlflow.pytorch
    import torch

    mlflow.pytorch.save_model(model, path, mlflow_model=mlflow_model, serialization_format="pickle",
                              code_paths=list(serving_in.code_paths) or None,
                              pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
