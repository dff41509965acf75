"""The reference workload (issue 16): Fashion-MNIST through the image-path route, a 0.6M-parameter ResNet, end to end.

Fashion-MNIST's idx files (the library's offline source, ``FashionMNISTSource().path``, or ``--fashion``) are
written as PNG files to a cache folder (``--cache``; each image once, existing files are kept). A CSV lists the
images of this run (``path``, ``label``, ``split``): ``--n-train`` training images (a seeded subset of the 60,000,
all by default), ``--n-val`` validation and the rest of the 10,000 test images as the test split. The run is
``tda_clean.pipeline.run_pipeline`` with tracking off: load (read the PNGs), uniform label noise (``--noise``),
train the ResNet (``benchmarks/workload_model.py``, tda-clean's Adam trainer, ``--epochs``), detect the rows
harmful to the validation loss (``--solver``: EK-FAC by default, or K-FAC, over every Conv2d / Linear layer; the
BatchNorm layers frozen), remove them, retrain, evaluate.

Per stage: seconds (the pipeline's own timings) and the process's peak RSS during that stage (``VmHWM``, reset
before each stage through ``/proc/self/clear_refs``). ``--stop-after STAGE`` ends the process after that stage;
the next call with the same ``--run-dir`` resumes there (the pipeline's resume), so a long run can be split
into several commands. The figures of every call are merged in ``<run-dir>-stages.json`` beside the run folder
(default ``/tmp/tda-clean-workload/n<N>-e<E>-<solver>``); when the run completes, the JSON goes to ``--json``
(default ``benchmarks/results/workload-n<N>-e<E>-<solver>.json``).

    python benchmarks/workload.py --n-train 60000 --epochs 1 [--stop-after train_before]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STAGES = ("load", "train_before", "detect", "act", "train_after", "evaluate_before", "evaluate_after", "report",
          "log")
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tda-clean" / "fashion-mnist-png"
N_TRAIN, N_TEST = 60000, 10000


def fashion_dir() -> Path:
    from tda_clean.config import FashionMNISTSource

    return FashionMNISTSource().path


def write_images(source: Path, cache: Path, out: Path, n_train: int, n_val: int, n_test: int | None = None,
                 seed: int = 0) -> tuple[Path, dict]:
    """The run's images as PNG files ``cache/{train,test}/<label>/<index>.png`` (each written once: an existing
    file is kept) and ``out/images.csv`` listing them (absolute ``path``, ``label``, ``split``): ``n_train``
    training images (a seeded subset of the 60,000), ``n_val`` validation and ``n_test`` (default: all the other)
    test images from the 10,000. InputError (one line) when the idx files are missing."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    from tda_clean.data.sources import FASHION_FILES, read_idx
    from tda_clean.errors import InputError

    missing = [name for name in FASHION_FILES if not (source / name).is_file()]
    if missing:
        raise InputError(f"Fashion-MNIST: {source / missing[0]} not found (apt-get install dataset-fashion-mnist, or "
                         "pass --fashion DIR with the four idx .gz files)")
    start, cache = time.perf_counter(), cache.resolve()
    Xtr, ytr, Xte, yte = (read_idx(source / name) for name in FASHION_FILES)
    rng = np.random.default_rng(seed)
    train = np.sort(rng.permutation(len(ytr))[:n_train])
    order = rng.permutation(len(yte))
    n_test = len(yte) - n_val if n_test is None else n_test
    test = np.sort(order[: n_val + n_test])
    rows, written = [], 0
    for part, X, y, index, split in (("train", Xtr, ytr, train, np.full(len(train), "train")),
                                     ("test", Xte, yte, test, np.where(np.isin(test, order[:n_val]), "val", "test"))):
        paths = [cache / part / str(y[i]) / f"{i:05d}.png" for i in index]
        for i, path in zip(index, paths):
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                Image.fromarray(X[i]).save(tmp, format="PNG")
                tmp.replace(path)  # a killed run leaves no truncated PNG behind
                written += 1
        rows.append(pd.DataFrame({"path": [str(p) for p in paths], "label": y[index].astype(int),
                                  "split": split}))
    out.mkdir(parents=True, exist_ok=True)
    table = out / "images.csv"
    pd.concat(rows, ignore_index=True).to_csv(table, index=False)
    return table, {"written": written, "seconds": round(time.perf_counter() - start, 1), "cache": str(cache)}


def workload_config(table: Path, epochs: int, noise: float, solver: str = "ekfac", runner: dict | None = None) -> dict:
    """The run's config (a plain dict for ``parse_config``)."""
    return {
        "name": "workload-fashion-resnet", "seed": 0,
        "data": {"kind": "csv", "path": str(table), "label": "label", "image_column": "path", "split_column": "split",
                 "image_mode": "L"},
        "scenario": {"kind": "uniform_flip", "rate": noise},
        "model": {"kind": "python", "factory": "workload_model:make_resnet", "code_dir": str(HERE)},
        "train": {"optimizer": "adam", "epochs": epochs, "lr": 2e-3, "batch_size": 128, "l2": 5e-4, "patience": 3},
        "detector": {"kind": "harmful", "objective": "val_loss", "solver": solver, "params": "all",
                     "fraction": noise, "dtype": "float32"},
        "action": {"kind": "remove"},
        "tracking": {"enabled": False},
        **({"runner": runner} if runner else {}),
    }


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return -1


def reset_peak() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS (Linux ``clear_refs`` 5); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class StopAfter(Exception):
    """Raised before the stage after ``--stop-after``: the run folder keeps every completed stage."""


def measuring_runner(records: dict, stop_after: str | None):
    """A ``run_pipeline`` stage runner: each stage's peak RSS (MiB) and its CPU seconds go to ``records``."""
    from tda_clean.pipeline import call_stage

    def run(stage, ctx, *args):
        name = stage.__name__.removeprefix("stage_")
        name = "_".join([name, *[a for a in args if a in ("before", "after")]])
        if stop_after is not None and STAGES.index(name) > STAGES.index(stop_after):
            raise StopAfter(name)
        gc.collect()
        exact = reset_peak()
        cpu = time.process_time()
        out = call_stage(stage, ctx, *args)
        records[name] = {"peak_rss_mib": round(_status_kb("VmHWM") / 1024, 1), "peak_exact": exact,
                         "cpu_s": round(time.process_time() - cpu, 2), "loadavg_after": os.getloadavg()}
        return out

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-train", type=int, default=N_TRAIN)
    parser.add_argument("--n-val", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=None, help="default: the test images not used for validation")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--solver", choices=("ekfac", "kfac"), default="ekfac")
    parser.add_argument("--fashion", type=Path, default=None, help="folder of the four idx .gz files")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--run-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--stop-after", choices=STAGES, default=None)
    parser.add_argument("--fresh", action="store_true", help="recompute every stage")
    args = parser.parse_args(argv)
    if not 1 <= args.n_train <= N_TRAIN:
        parser.error(f"--n-train must be in 1..{N_TRAIN}")
    if not 1 <= args.n_val < N_TEST:
        parser.error(f"--n-val must be in 1..{N_TEST - 1}")
    if args.n_test is not None and not 1 <= args.n_test <= N_TEST - args.n_val:
        parser.error(f"--n-test must be in 1..{N_TEST - args.n_val} (the test images not used for validation)")
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    tag = f"n{args.n_train}-e{args.epochs}-{args.solver}"
    run_dir = args.run_dir or Path("/tmp/tda-clean-workload") / tag
    out_json = args.json or HERE / "results" / f"workload-{tag}.json"

    from tda_clean.errors import TdaCleanError

    try:
        table, cache_info = write_images(args.fashion or fashion_dir(), args.cache,
                                         run_dir.parent / f"{run_dir.name}-table", args.n_train, args.n_val,
                                         args.n_test)
    except TdaCleanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from tda_clean.config import parse_config
    from tda_clean.pipeline import run_pipeline

    config = parse_config(workload_config(table, args.epochs, args.noise, args.solver))
    stages_path = run_dir.parent / f"{run_dir.name}-stages.json"
    records = {} if args.fresh or not stages_path.is_file() else json.loads(stages_path.read_text())
    try:
        report = run_pipeline(config, run_dir, fresh=args.fresh, stage_runner=measuring_runner(records, args.stop_after))
    except TdaCleanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StopAfter as stop:
        stages_path.write_text(json.dumps(records, indent=1))
        print(f"stopped before {stop}; run again with the same --run-dir to resume")
        return 0
    stages_path.write_text(json.dumps(records, indent=1))
    import torch

    from tda_clean.models.user import build

    n_params = sum(p.numel() for p in build(config.model, (28, 28), 10).parameters())
    result = {
        "command": "python benchmarks/workload.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "n_train": args.n_train, "n_val": args.n_val, "n_test": args.n_test or N_TEST - args.n_val, "epochs": args.epochs, "noise": args.noise, "solver": args.solver,
        "model_params": n_params, "machine": platform.node(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "device": "cuda" if torch.cuda.is_available() else "cpu",
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "png_images": cache_info,
        "stages": {name: {"seconds": report["timings_s"].get(name), **records.get(name, {})} for name in STAGES
                   if name in report["timings_s"]},
        "selection": {k: v for k, v in report["selection"].items() if isinstance(v, (int, float, str))},
        "before": report["before"], "after": report["after"], "gate": report["gate"],
        "loadavg_end": os.getloadavg(), "run_dir": str(run_dir),
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("n_train", "epochs", "stages", "selection")}, indent=1))
    print(f"wrote {out_json}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing
    raise SystemExit(main())
