"""Prefect flows: a thin layer over :mod:`tda_clean.pipeline`."""
