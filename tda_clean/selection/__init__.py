"""Detectors/selectors. Importing this package registers the built-in detectors."""
from __future__ import annotations

import importlib

from tda_clean.selection.base import DETECTORS, BaseSelector, FitContext, NotFittedError, Selection, register_detector

_BUILTIN = ("tda_clean.selection.confident_learning", "tda_clean.selection.influence_detectors")


def make_detector(cfg) -> BaseSelector:
    """Build the detector registered under ``cfg.kind``."""
    for module in _BUILTIN:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    return DETECTORS[cfg.kind](cfg)


__all__ = ["BaseSelector", "DETECTORS", "FitContext", "NotFittedError", "Selection", "make_detector", "register_detector"]
