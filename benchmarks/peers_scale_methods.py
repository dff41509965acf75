"""One method of the reference-workload peer comparison, in a fresh process (``peers_scale.py`` drives it).

    python benchmarks/peers_scale_methods.py --method ours-ekfac --n 40000 --data DIR --scores OUT.npy

Imports only torch / numpy and the method's own library (tda_clean in the main environment; kronfluence or dattri
in ``benchmarks/.venv-peers``), so either environment runs it. Data (written by ``peers_scale.py prepare``):
``DIR/X.npy`` (N, 1, 28, 28) float32 in [0, 1], ``y.npy`` (N,) the noisy labels, ``Xq.npy`` / ``yq.npy`` the
queries, ``weights.pt`` the trained ResNet's state_dict. Rows scored: ``subset(N, n)`` (seeded).

Every method scores, for each training row i and query j, the influence of REMOVING row i on query j's
cross-entropy loss, up to a positive per-method scale (positive = removing the row raises the query's loss:
a supportive row), and writes the per-row sum over queries ``(n,)`` float64 to ``--scores``; the rows with the most
negative sums are the "harmful" ones. Curvature: the training loss (mean CE + ``L2/2 ||theta||^2``) over every
Conv2d / Linear layer (BatchNorm in eval mode, not attributed) plus ``DAMPING``; dattri EK-FAC sees the Linear
head only (all it supports). Prints one JSON line: method wall and CPU seconds (after data and model are loaded),
peak RSS of the process (``VmHWM``), the library version.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.workload_model import ResNet  # noqa: E402

if os.environ.get("TDA_CLEAN_ROOT"):  # another checkout's tda_clean (e.g. a branch not merged yet), recorded
    sys.path.insert(0, os.environ["TDA_CLEAN_ROOT"])

L2 = 5e-4          # the workload trainer's l2 (part of the Hessian)
DAMPING = 1e-2     # added to the curvature on every side (peers without the l2 term get L2 + DAMPING)
PROJ_DIM = 512     # TRAK-style projection (dattri's default)
BATCH = 256        # training rows per batch where a library takes a batch size
METHODS = ("ours-ekfac", "kronfluence-ekfac", "ours-projected", "dattri-trak", "dattri-ekfac-head",
           "ours-projected-factored")
PEER = {"kronfluence-ekfac": "kronfluence", "dattri-trak": "dattri", "dattri-ekfac-head": "dattri"}


def subset(total: int, n: int, seed: int = 0) -> np.ndarray:
    """The ``n`` training rows scored: a seeded subset of ``range(total)``, sorted."""
    return np.sort(np.random.default_rng(seed).permutation(total)[:n])


def status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return -1


def layer_modules(model: nn.Module) -> list[str]:
    """Names of the Conv2d / Linear modules (the attributed layers)."""
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def load(data: Path, n: int, width: int | None):
    X = np.load(data / "X.npy", mmap_mode="r")
    rows = subset(len(X), n)
    X, y = np.ascontiguousarray(X[rows]), np.load(data / "y.npy")[rows]
    Xq, yq = np.load(data / "Xq.npy"), np.load(data / "yq.npy")
    model = ResNet(10, width) if width else ResNet(10)
    model.load_state_dict(torch.load(data / "weights.pt", weights_only=True))
    return model.eval(), X, y, Xq, yq


# -------------------------------------------------------------------------------------------------- ours
def ours_ekfac(model, X, y, Xq, yq):
    from tda_clean.config.influence import GradientSettings, InfluenceSpec, KFACSettings
    from tda_clean.influence import InfluenceEngine, PerSampleLoss, TrainingObjective
    from tda_clean.influence.reducers import RowSum

    spec = InfluenceSpec(solver=KFACSettings(kind="ekfac", damping=DAMPING, fisher="sampled"),
                         gradients=GradientSettings(params=tuple(layer_modules(model)), batch_size=BATCH))
    engine = InfluenceEngine(model, (X, y), spec, TrainingObjective(l2=L2))
    return engine.scores(PerSampleLoss(Xq, yq), reducer=RowSum())


def ours_projected(model, X, y, Xq, yq, method: str = "dense"):
    """Dense: one (p, k) Rademacher matrix over all the layers' gradients; factored: Kronecker-factored per layer
    (LoGra-style; where the library has it, ``method="factored"``)."""
    import inspect

    from tda_clean.config.influence import GradientSettings
    from tda_clean.influence import PerSampleLoss, TrainingObjective
    from tda_clean.influence.projected import projected_influence

    kw = {"method": method} if "method" in inspect.signature(projected_influence).parameters else {}
    if method != "dense" and not kw:
        raise SystemExit(f"this tda_clean has no projection method {method!r}")
    out = projected_influence(model, (X, y), PerSampleLoss(Xq, yq), l2=L2, k=PROJ_DIM, seed=0, damping=DAMPING,
                              gradients=GradientSettings(params=tuple(layer_modules(model))),
                              training=TrainingObjective(l2=L2), **kw)
    return out.scores.sum(0)


# ------------------------------------------------------------------------------------------- kronfluence
def kronfluence_ekfac(model, X, y, Xq, yq):
    import shutil
    import tempfile

    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task

    modules = layer_modules(model)

    class LossTask(Task):
        def compute_train_loss(self, batch, model, sample=False):
            x, t = batch
            logits = model(x)
            if sample:
                with torch.no_grad():
                    t = torch.multinomial(torch.softmax(logits.detach(), -1), 1).flatten()
            return F.cross_entropy(logits, t, reduction="sum")

        def compute_measurement(self, batch, model):
            x, t = batch
            return F.cross_entropy(model(x), t, reduction="sum")

        def get_influence_tracked_modules(self):
            return modules

    class DS(torch.utils.data.Dataset):
        def __init__(self, A, b):
            self.A, self.b = torch.as_tensor(A), torch.as_tensor(b)

        def __len__(self):
            return len(self.A)

        def __getitem__(self, i):
            return self.A[i], self.b[i]

    out = Path(tempfile.mkdtemp(prefix="kronfluence-"))
    try:
        task = LossTask()
        work = prepare_model(model, task).eval()
        an = Analyzer("scale", work, task, cpu=True, disable_tqdm=True, output_dir=str(out), log_level=40)
        an.fit_all_factors("ekfac", DS(X, y), per_device_batch_size=BATCH,
                           factor_args=FactorArguments(strategy="ekfac"), overwrite_output_dir=True)
        an.compute_pairwise_scores("s", "ekfac", DS(Xq, yq), DS(X, y), per_device_query_batch_size=len(Xq),
                                   per_device_train_batch_size=BATCH,
                                   score_args=ScoreArguments(damping_factor=L2 + DAMPING), overwrite_output_dir=True)
        return an.load_pairwise_scores("s")["all_modules"].double().sum(0).numpy()
    finally:
        shutil.rmtree(out, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ dattri
def _dattri_task(model, loss_func, target_func):
    from dattri.task import AttributionTask

    state = {k: v.clone() for k, v in model.state_dict().items()}
    return AttributionTask(loss_func=loss_func, model=model, checkpoints=state, target_func=target_func)


def _unbatched(data):
    x, t = data  # per-sample calls under vmap see one row: x (1, 28, 28), t ()
    return (x.unsqueeze(0), t.reshape(1)) if x.dim() == 3 else (x, t.reshape(-1))


def dattri_ekfac_head(model, X, y, Xq, yq):
    from torch.utils.data import DataLoader, TensorDataset

    from dattri.algorithm.influence_function import IFAttributorEKFAC

    def loss_func(params, data):
        x, t = _unbatched(data)
        return F.cross_entropy(torch.func.functional_call(model, params, (x,)), t.long())

    task = _dattri_task(model, loss_func, loss_func)
    att = IFAttributorEKFAC(task, module_name=["head"], damping=L2 + DAMPING)
    train = DataLoader(TensorDataset(torch.as_tensor(X), torch.as_tensor(y)), batch_size=BATCH)
    att.cache(train)
    with torch.no_grad():
        # batches of BATCH rows: 4,096-row batches exhausted memory (BENCHMARKS.md)
        big = DataLoader(TensorDataset(torch.as_tensor(X), torch.as_tensor(y)), batch_size=BATCH)
        test = DataLoader(TensorDataset(torch.as_tensor(Xq), torch.as_tensor(yq)), batch_size=len(Xq))
        return att.attribute(big, test).double().sum(1).numpy()  # (n, q) -> (n,)


def dattri_trak(model, X, y, Xq, yq):
    from torch.utils.data import DataLoader, TensorDataset

    from dattri.algorithm.trak import TRAKAttributor

    def margin(params, data):  # TRAK's model output: log p / (1 - p) of the true class (dattri's examples)
        x, t = _unbatched(data)
        logp = -F.cross_entropy(torch.func.functional_call(model, params, (x,)), t.long())
        return logp - torch.log(1 - torch.exp(logp))

    def prob(params, data):
        x, t = _unbatched(data)
        return torch.exp(-F.cross_entropy(torch.func.functional_call(model, params, (x,)), t.long()))

    names = [f"{m}.{p}" for m in layer_modules(model) for p, _ in dict(model.named_modules())[m].named_parameters()]
    task = _dattri_task(model, margin, margin)
    # dattri's kernel is the SUM of (projected grad / sqrt(p_all))^2: regularization n (L2 + DAMPING) / p_all
    # matches the mean-Fisher damping of ours-projected (up to the projections' scales)
    p_all = sum(p.numel() for p in model.parameters() if p.requires_grad)
    att = TRAKAttributor(task, prob, projector_kwargs={"proj_dim": PROJ_DIM, "proj_max_batch_size": 32,
                                                       "proj_seed": 0, "device": "cpu"},
                         layer_name=names, device="cpu", regularization=len(X) * (L2 + DAMPING) / p_all)
    att.cache(DataLoader(TensorDataset(torch.as_tensor(X), torch.as_tensor(y)), batch_size=BATCH))
    with torch.no_grad():
        test = DataLoader(TensorDataset(torch.as_tensor(Xq), torch.as_tensor(yq)), batch_size=len(Xq))
        return att.attribute(test).double().sum(1).numpy()  # (n, q) -> (n,)


RUN = {"ours-ekfac": ours_ekfac, "ours-projected": ours_projected,
       "ours-projected-factored": lambda *a: ours_projected(*a, method="factored"),
       "kronfluence-ekfac": kronfluence_ekfac,
       "dattri-trak": dattri_trak, "dattri-ekfac-head": dattri_ekfac_head}


def version(method: str) -> str | None:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as v

    try:
        return v(PEER.get(method, "tda-clean"))
    except PackageNotFoundError:
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", choices=METHODS, required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--scores", type=Path, required=True)
    ap.add_argument("--width", type=int, default=None, help="ResNet width (the smoke mode's narrow net)")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(0)
    model, X, y, Xq, yq = load(args.data, args.n, args.width)
    for p in model.parameters():
        p.requires_grad_(True)
    if args.method in PEER:
        import gc

        gc.collect()
        gc.freeze()  # kronfluence's release_memory() calls gc.collect() per step: a fixed cost, not the method's
    wall, cpu = time.perf_counter(), time.process_time()
    scores = np.asarray(RUN[args.method](model, X, y, Xq, yq), dtype=np.float64).reshape(-1)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if scores.shape != (args.n,):
        raise SystemExit(f"{args.method}: expected {args.n} row scores, got shape {scores.shape}")
    args.scores.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.scores, scores)
    print(json.dumps({"method": args.method, "n": args.n, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                      "peak_rss_mib": round(status_kb("VmHWM") / 1024, 1), "threads": torch.get_num_threads(),
                      "version": version(args.method), "torch": torch.__version__,
                      "tda_clean_root": os.environ.get("TDA_CLEAN_ROOT")}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
