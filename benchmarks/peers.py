"""Peer libraries on the same model, weights and data as tda-clean (run in benchmarks/.venv-peers).

    benchmarks/.venv-peers/bin/python benchmarks/peers.py --model mlp --model cnn

Loads the weights ``lds.py`` trained (``.cache/<model>-<key>.pt``, identical parameter names to the tda-clean
factory models), scores the 1,347 digits training rows against the true-class margin of the first N_QUERY test
points with each peer method, and writes ``results/peers-<model>.npz`` (score matrices (q, n), removal
convention up to a positive scale) and ``results/peers-<model>.json`` (best-of-REPEATS wall times, settings,
errors). Matching settings are in ``compare_settings.py``. Methods:

  dattri 0.3.0: explicit IF (last layer; all params for the MLP), CG (all params), LiSSA (all params),
                EK-FAC (Linear layers, empirical Fisher), TracIn (its default 512-dim projection)
  captum 0.9:   TracInCP (all params, exact gradients)
  kronfluence 1.0.1: EK-FAC (all Linear + Conv2d, sampled-label Fisher)
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import compare_settings as S  # noqa: E402
from benchmarks.common import MODELS, RESULTS, load_data, load_trained, machine, margins, peak_rss_mb  # noqa: E402


SLOW_S = 30.0  # a run longer than this is not repeated (its warm-up share is negligible)


def best_of(fn, repeats: int):
    """(result of the last run, best wall time over ``repeats`` runs; one run if it took more than SLOW_S)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
        if best > SLOW_S:
            break
    return out, best


# -------------------------------------------------------------------------------------------- dattri
def dattri_methods(name, model, payload, Xtr, ytr, Xq, yq):
    from dattri.algorithm.influence_function import (
        IFAttributorCG, IFAttributorEKFAC, IFAttributorExplicit, IFAttributorLiSSA,
    )
    from dattri.algorithm.tracin import TracInAttributor
    from dattri.task import AttributionTask

    l2 = MODELS[name]["train"]["l2"]
    lam = l2 + S.DAMPING

    def _batch(data):
        x, y = data  # per-sample calls under vmap see unbatched rows: x (8, 8), y ()
        return (x.unsqueeze(0), y.reshape(1)) if x.dim() == 2 else (x, y.reshape(-1))

    def loss_func(params, data):
        x, y = _batch(data)
        out = torch.func.functional_call(model, params, (x,))
        return F.cross_entropy(out, y.long())

    def target_func(params, data):
        x, y = _batch(data)
        out = torch.func.functional_call(model, params, (x,))
        return margins(out, y.long()).sum()

    state = {k: v.clone() for k, v in model.state_dict().items()}
    train_full = DataLoader(TensorDataset(torch.as_tensor(Xtr), torch.as_tensor(ytr)), batch_size=len(Xtr))
    # one training batch: dattri recomputes the test-side inverse-HVP for every training batch
    train_loader = DataLoader(TensorDataset(torch.as_tensor(Xtr), torch.as_tensor(ytr)), batch_size=len(Xtr))
    test_loader = DataLoader(TensorDataset(torch.as_tensor(Xq), torch.as_tensor(yq)), batch_size=len(Xq))

    def task(checkpoints=state):
        return AttributionTask(loss_func=loss_func, model=model, checkpoints=checkpoints, target_func=target_func)

    def run(attributor, cache_loader=train_full, **cache_kw):
        attributor.cache(cache_loader, **cache_kw)
        with torch.no_grad():
            return attributor.attribute(train_loader, test_loader).T.double().numpy()  # (q, n)

    methods = {
        "exact (last layer)": lambda: run(IFAttributorExplicit(task(), layer_name=S.HEAD[name], regularization=lam)),
        "cg (all params)": lambda: run(IFAttributorCG(task(), max_iter=S.CG_ITERS, regularization=lam)),
        "lissa (all params)": lambda: run(IFAttributorLiSSA(
            task(), batch_size=S.LISSA["batch_size"], num_repeat=1, recursion_depth=S.LISSA["depth"],
            damping=lam / S.LISSA["scale"], scaling=S.LISSA["scale"])),
        "ekfac (linear layers, empirical)": lambda: run(
            IFAttributorEKFAC(task(), module_name=S.LINEAR_MODULES[name], damping=lam),
            cache_loader=DataLoader(TensorDataset(torch.as_tensor(Xtr), torch.as_tensor(ytr)), batch_size=256)),
    }
    if name == "mlp":
        methods["exact (all params)"] = lambda: run(IFAttributorExplicit(task(), regularization=lam))

    def tracin():
        ckpts = [s for _, _, s in payload["checkpoints"]]
        lrs = torch.tensor([lr for _, lr, _ in payload["checkpoints"]])
        att = TracInAttributor(task(ckpts), weight_list=lrs, normalized_grad=False)
        with torch.no_grad():
            out = att.attribute(train_loader, test_loader).T.double().numpy()
        model.load_state_dict(state)
        return out

    methods["tracin-cp (dattri default: 512-dim projection)"] = tracin
    return methods


# -------------------------------------------------------------------------------------------- captum
class MarginLoss(nn.Module):
    """Summed true-class margin (captum's test_loss_fn; per-sample gradients come from captum's hooks)."""

    reduction = "sum"

    def forward(self, logits, y):
        return margins(logits, y.long()).sum()


def captum_methods(name, model, payload, Xtr, ytr, Xq, yq):
    from captum.influence import TracInCP

    def tracin():
        tmp = Path(tempfile.mkdtemp(prefix="captum-ckpt-"))
        try:
            paths = []
            for k, (_, lr, s) in enumerate(payload["checkpoints"]):
                p = tmp / f"ckpt{k}.pt"
                torch.save({"state": s, "lr": lr}, p)
                paths.append(str(p))

            def load(m, path):
                blob = torch.load(path, weights_only=False)
                m.load_state_dict(blob["state"])
                m.eval()
                return blob["lr"]

            work = _copy_model(model)
            tr = TracInCP(work, TensorDataset(torch.as_tensor(Xtr), torch.as_tensor(ytr)), paths,
                          checkpoints_load_func=load, loss_fn=nn.CrossEntropyLoss(reduction="sum"),
                          test_loss_fn=MarginLoss(), batch_size=512, sample_wise_grads_per_batch=True)
            return tr.influence((torch.as_tensor(Xq), torch.as_tensor(yq)), show_progress=False).double().numpy()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    return {"tracin-cp (all params)": tracin}


def _copy_model(model):
    import copy

    return copy.deepcopy(model)


# --------------------------------------------------------------------------------------- kronfluence
def kronfluence_methods(name, model, payload, Xtr, ytr, Xq, yq):
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task

    l2 = MODELS[name]["train"]["l2"]

    class DigitsTask(Task):
        def compute_train_loss(self, batch, model, sample=False):
            x, y = batch
            logits = model(x)
            if sample:
                with torch.no_grad():
                    y = torch.multinomial(torch.softmax(logits.detach(), -1), 1).flatten()
            return F.cross_entropy(logits, y, reduction="sum")

        def compute_measurement(self, batch, model):
            x, y = batch
            return margins(model(x), y).sum()

        def get_influence_tracked_modules(self):
            return S.ALL_MODULES[name]

    class DS(torch.utils.data.Dataset):
        def __init__(self, X, y):
            self.X, self.y = torch.as_tensor(X), torch.as_tensor(y)

        def __len__(self):
            return len(self.X)

        def __getitem__(self, i):
            return self.X[i], self.y[i]

    def ekfac():
        out = Path(tempfile.mkdtemp(prefix="kronfluence-"))
        try:
            task = DigitsTask()
            work = prepare_model(_copy_model(model), task)
            an = Analyzer("bench", work, task, cpu=True, disable_tqdm=True, output_dir=str(out), log_level=40)
            an.fit_all_factors("ekfac", DS(Xtr, ytr), per_device_batch_size=512,
                               factor_args=FactorArguments(strategy="ekfac"), overwrite_output_dir=True)
            an.compute_pairwise_scores("s", "ekfac", DS(Xq, yq), DS(Xtr, ytr), per_device_query_batch_size=len(Xq),
                                       per_device_train_batch_size=512,
                                       score_args=ScoreArguments(damping_factor=l2 + S.DAMPING),
                                       overwrite_output_dir=True)
            scores = an.load_pairwise_scores("s")["all_modules"]
            return scores.double().numpy()
        finally:
            shutil.rmtree(out, ignore_errors=True)

    return {"ekfac (all layers, sampled)": ekfac}


LIBRARIES = {"dattri": dattri_methods, "captum": captum_methods, "kronfluence": kronfluence_methods}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", choices=sorted(MODELS))
    ap.add_argument("--repeats", type=int, default=S.REPEATS)
    ap.add_argument("--only", action="append", help="run only methods whose 'library: method' contains this")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    Xtr, ytr, Xte, yte = load_data()
    Xq, yq = Xte[: S.N_QUERY], yte[: S.N_QUERY]
    for name in args.model or ["mlp", "cnn"]:
        model, payload = load_trained(name)
        for p in model.parameters():
            p.requires_grad_(True)
        rows, scores = [], {}
        for lib, factory in LIBRARIES.items():
            try:
                methods = factory(name, model, payload, Xtr, ytr, Xq, yq)
            except Exception as exc:  # noqa: BLE001
                rows.append({"library": lib, "method": "*", "status": "not available", "error": repr(exc)})
                continue
            for method, fn in methods.items():
                label = f"{lib}: {method}"
                if args.only and not any(o in label for o in args.only):
                    continue
                row = {"library": lib, "method": method}
                try:
                    out, seconds = best_of(fn, args.repeats)
                    scores[label] = np.asarray(out, dtype=np.float64)
                    row.update(status="ok", seconds=seconds, shape=list(scores[label].shape))
                except Exception as exc:  # noqa: BLE001
                    row.update(status="failed", error=f"{type(exc).__name__}: {exc}")
                    traceback.print_exc()
                print(json.dumps(row), flush=True)
                rows.append(row)
        RESULTS.mkdir(parents=True, exist_ok=True)
        suffix = "-partial" if args.only else ""
        np.savez(RESULTS / f"peers-{name}{suffix}.npz", **scores)
        versions = {}
        for pkg in ("torch", "captum", "dattri", "kronfluence"):
            try:
                from importlib.metadata import version

                versions[pkg] = version(pkg)
            except Exception:  # noqa: BLE001
                versions[pkg] = None
        (RESULTS / f"peers-{name}{suffix}.json").write_text(json.dumps(
            {"machine": machine(), "versions": versions, "peak_rss_mb": peak_rss_mb(), "rows": rows}, indent=1))
        print(f"wrote {RESULTS / f'peers-{name}{suffix}.npz'}")


if __name__ == "__main__":
    main()
