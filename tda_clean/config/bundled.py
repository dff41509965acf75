"""The example configs that ship with tda-clean, usable by name: ``tda-clean run quickstart``.

They are the repository's top-level ``configs/*.yaml``. An installed wheel holds them as package data in
``tda_clean/configs/`` (``pyproject.toml`` maps that folder to ``configs/``); a checkout reads ``configs/`` itself.
A config named by path always wins: a name is looked up only when no such file exists and it holds no folder.
"""
from __future__ import annotations

from pathlib import Path

from tda_clean.errors import InputError

_PACKAGE = Path(__file__).resolve().parents[1]  # tda_clean/


def bundled_dir() -> Path | None:
    """The folder of the bundled configs: ``tda_clean/configs`` when installed, ``<checkout>/configs`` in a checkout."""
    installed, checkout = _PACKAGE / "configs", _PACKAGE.parent / "configs"
    if installed.is_dir():
        return installed
    if checkout.is_dir() and (_PACKAGE.parent / "pyproject.toml").is_file():
        return checkout
    return None


def bundled_configs() -> dict[str, Path]:
    """``{name: path}`` of the bundled configs, sorted by name (the file name without ``.yaml``)."""
    folder = bundled_dir()
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))} if folder else {}


def summary(path: Path, width: int = 80) -> str:
    """The start of a config's leading comment block on one line of at most ``width`` characters, or ``""``."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(lines).split(": ")[0] if lines else ""
    return text if len(text) <= width else text[: width - 3].rsplit(" ", 1)[0].rstrip(",;(") + "..."


def resolve_config(name_or_path: str | Path) -> Path:
    """The config file a command means: an existing file as given, else the bundled config of that name
    (``quickstart`` or ``quickstart.yaml``). Raises :class:`InputError` naming both when neither exists."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    configs = bundled_configs()
    if len(path.parts) == 1:
        stem = path.name.removesuffix(".yaml").removesuffix(".yml")
        if stem in configs:
            return configs[stem]
    known = ", ".join(configs) or "none installed"
    raise InputError(f"config file not found: {path} (and no bundled config of that name; bundled: {known})")
