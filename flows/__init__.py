"""Prefect flows: a thin layer over :mod:`tda_clean.pipeline`, and the ``tda-clean`` command (:mod:`.cli`).

Installed as the package ``tda_clean_flows`` (``pyproject.toml`` maps it onto this folder): no generic top-level
``flows`` package lands in site-packages. Modules here import each other relatively, so they work under either name.
"""
