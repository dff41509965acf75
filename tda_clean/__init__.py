"""tda-clean: find the training rows that hurt a model, act on them, retrain, and prove the effect.

Importing the package is cheap and never imports prefect or mlflow.
"""
from tda_clean.config import RunConfig, load_config
from tda_clean.errors import InputError, TdaCleanError

__version__ = "0.1.0"
__all__ = ["RunConfig", "load_config", "InputError", "TdaCleanError", "run_pipeline", "clean", "RunReport"]


def run_pipeline(*args, **kwargs):
    """Lazy alias of :func:`tda_clean.pipeline.run_pipeline`."""
    from tda_clean.pipeline import run_pipeline as _run

    return _run(*args, **kwargs)


def clean(*args, **kwargs):
    """Lazy alias of :func:`tda_clean.api.clean` (the Python API at the level of the CLI)."""
    from tda_clean.api import clean as _clean

    return _clean(*args, **kwargs)


def __getattr__(name: str):
    if name == "RunReport":
        from tda_clean.api import RunReport

        return RunReport
    raise AttributeError(f"module 'tda_clean' has no attribute {name!r}")
