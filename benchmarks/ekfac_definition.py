"""Which EK-FAC follows the definition? tda-clean's and dattri's inverse-curvature products against an explicit one.

    python benchmarks/ekfac_definition.py            # main environment; runs dattri in benchmarks/.venv-peers

On a tiny float64 MLP (6 -> 5 -> tanh -> 3, biases, 200 random rows, empirical Fisher, damping 0.1, no L2) the
EK-FAC inverse of George et al. (2018) is computed explicitly, layer by layer, from its definition:

    A = mean_i a_i a_i^T,  S = mean_i g_i g_i^T,  A = Q_A diag Q_A^T,  S = Q_S diag Q_S^T  (eigenvectors = COLUMNS)
    lam[o, j] = mean_i ((Q_S^T G_i Q_A)[o, j])^2                       G_i = g_i a_i^T  (per-sample gradient)
    F^-1 V    = Q_S ((Q_S^T V Q_A) / (lam + damping)) Q_A^T

and compared on the same random vectors with (1) tda-clean's ``ekfac`` solver, (2) dattri 0.3.0's
``IFAttributorEKFAC.transform_test_rep``, and (3) dattri with its eigenvector matrices transposed before use
(dattri rotates with ``q_s @ V @ q_a.T`` where ``torch.linalg.eigh`` returns eigenvectors as columns, i.e. it works in
the basis of the ROWS of Q). Prints the relative error and Pearson r of each against the explicit product and writes
``results/ekfac-definition.json``.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

HERE = Path(__file__).resolve().parent
PEERS_PYTHON = HERE / ".venv-peers" / "bin" / "python"
DAMPING, N, SEED, K = 0.1, 200, 0, 8
LAYERS = ["0", "2"]


def tiny_problem():
    """Model, training rows, labels and K random vectors in the [w.flatten(), b] layout of both layers, float64."""
    torch.manual_seed(SEED)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    gen = torch.Generator().manual_seed(SEED + 1)
    X = torch.randn(N, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (N,), generator=gen)
    p = sum(q.numel() for q in model.parameters())
    V = torch.randn(K, p, generator=gen, dtype=torch.float64)
    return model, X, y, V


def _per_layer(model, X, y):
    """{layer: (a (n, in+1), g (n, out))} with g the per-sample gradient of the CE loss w.r.t. the layer output."""
    acts, outs, handles = {}, {}, []
    for name in LAYERS:
        mod = model.get_submodule(name)

        def hook(module, inputs, output, name=name):
            acts[name] = torch.cat([inputs[0].detach(), torch.ones(len(inputs[0]), 1, dtype=X.dtype)], 1)
            outs[name] = output
        handles.append(mod.register_forward_hook(hook))
    loss = F.cross_entropy(model(X), y, reduction="sum")
    grads = torch.autograd.grad(loss, [outs[k] for k in LAYERS])
    for h in handles:
        h.remove()
    return {k: (acts[k], g.detach()) for k, g in zip(LAYERS, grads)}


def _split(model, V):
    """Vectors (K, p) -> {layer: (K, out, in+1)} in the parameter order of ``model`` (weight, bias per layer)."""
    out, start = {}, 0
    for name in LAYERS:
        mod = model.get_submodule(name)
        w, b = mod.weight.numel(), mod.bias.numel()
        W = V[:, start:start + w].reshape(len(V), *mod.weight.shape)
        B = V[:, start + w:start + w + b].reshape(len(V), -1, 1)
        out[name] = torch.cat([W, B], 2)
        start += w + b
    return out


def _join(model, blocks):
    parts = []
    for name in LAYERS:
        M = blocks[name]
        parts += [M[:, :, :-1].reshape(len(M), -1), M[:, :, -1]]
    return torch.cat(parts, 1)


def explicit(model, X, y, V) -> torch.Tensor:
    stats, blocks = _per_layer(model, X, y), _split(model, V)
    out = {}
    for name in LAYERS:
        a, g = stats[name]
        _, QA = torch.linalg.eigh(a.T @ a / N)
        _, QS = torch.linalg.eigh(g.T @ g / N)
        G = g[:, :, None] * a[:, None, :]                                   # (n, out, in+1) per-sample gradients
        lam = ((QS.T @ G @ QA) ** 2).mean(0)
        out[name] = QS @ ((QS.T @ blocks[name] @ QA) / (lam + DAMPING)) @ QA.T
    return _join(model, out)


def ours(model, X, y, V) -> torch.Tensor:
    sys.path.insert(0, str(HERE.parent))
    from tda_clean.config.influence import GradientSettings, KFACSettings
    from tda_clean.influence import InfluenceSpec, TrainingObjective
    from tda_clean.influence.estimators import InfluenceEngine

    spec = InfluenceSpec(solver=KFACSettings(kind="ekfac", damping=DAMPING, fisher="empirical"),
                         gradients=GradientSettings(params="all", dtype="float64"))
    engine = InfluenceEngine(model, (X.numpy(), y.numpy()), spec, TrainingObjective(0.0))
    return engine.solver.solve(V)


DATTRI = r'''
import sys, torch, numpy as np
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset
import dattri.func.fisher as fisher
from dattri.algorithm.influence_function import IFAttributorEKFAC
from dattri.task import AttributionTask
d = np.load(sys.argv[1]); fixes = set(sys.argv[2].split(","))
model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
model.load_state_dict({k: torch.as_tensor(d["p_" + k.replace(".", "_")]) for k in model.state_dict()})
X, y, V = (torch.as_tensor(d[k]) for k in ("X", "y", "V"))
if "transpose" in fixes:  # rotate with Q^T V Q (eigenvectors are eigh's columns)
    original = fisher.estimate_eigenvector
    fisher.estimate_eigenvector = lambda cov: {k: (qa.T, qs.T) for k, (qa, qs) in original(cov).items()}
def to_matrix_layout(V, inverse=False):
    # [w.flatten(), b] per layer <-> [W | b].flatten(): dattri reshapes the former as if it were the latter
    out, start = [], 0
    for mod in (model[0], model[2]):
        o, i = mod.weight.shape
        seg = V[:, start:start + o * i + o]
        if not inverse:
            M = torch.cat([seg[:, :o * i].reshape(-1, o, i), seg[:, o * i:].reshape(-1, o, 1)], 2)
            out.append(M.reshape(len(V), -1))
        else:
            M = seg.reshape(-1, o, i + 1)
            out += [M[:, :, :i].reshape(len(V), -1), M[:, :, i]]
        start += o * i + o
    return torch.cat(out, 1)
def loss_func(params, data):
    x, t = data
    if x.dim() == 1: x, t = x[None], t.reshape(1)
    return F.cross_entropy(torch.func.functional_call(model, params, (x,)), t)
def margin_func(params, data):  # the benchmark's target: summed margins (what peers.py passes as target_func)
    x, t = data
    if x.dim() == 1: x, t = x[None], t.reshape(1)
    out = torch.func.functional_call(model, params, (x,))
    true = out.gather(1, t[:, None]).squeeze(1)
    other = out.masked_fill(F.one_hot(t, out.shape[1]).bool(), float("-inf")).logsumexp(1)
    return (true - other).sum()
target = margin_func if "margin-target" in fixes else None
task = AttributionTask(loss_func=loss_func, model=model, checkpoints=model.state_dict(), target_func=target)
att = IFAttributorEKFAC(task, module_name=["0", "2"], damping=float(sys.argv[4]))
att.cache(DataLoader(TensorDataset(X, y), batch_size=len(X)))
if "layout" in fixes:
    result = to_matrix_layout(att.transform_test_rep(0, to_matrix_layout(V)), inverse=True)
else:
    result = att.transform_test_rep(0, V)
np.save(sys.argv[3], result.numpy())
'''


VARIANTS = (
    ("as-is", "dattri 0.3.0 ekfac"),
    ("transpose", "dattri, eigenvectors transposed"),
    ("layout", "dattri, bias layout fixed"),
    ("layout,transpose", "dattri, layout fixed + eigenvectors transposed"),
    ("margin-target", "dattri, Fisher on the benchmark's margin target"),
)


def dattri(model, X, y, V, variant: str, tmp: Path) -> torch.Tensor | None:
    if not PEERS_PYTHON.exists():
        return None
    arrays = {"X": X.numpy(), "y": y.numpy(), "V": V.numpy()}
    arrays.update({"p_" + k.replace(".", "_"): v.numpy() for k, v in model.state_dict().items()})
    np.savez(tmp / "in.npz", **arrays)
    subprocess.run([str(PEERS_PYTHON), "-c", DATTRI, str(tmp / "in.npz"), variant, str(tmp / "out.npy"), str(DAMPING)],
                   check=True)
    return torch.as_tensor(np.load(tmp / "out.npy"))


def compare(ref: torch.Tensor, got: torch.Tensor) -> dict[str, float]:
    rel = float((got - ref).norm() / ref.norm())
    r = float(np.corrcoef(ref.numpy().ravel(), got.numpy().ravel())[0, 1])
    return {"relative_error": rel, "pearson": r}


def main() -> None:
    import tempfile

    torch.set_num_threads(1)
    model, X, y, V = tiny_problem()
    ref = explicit(model, X, y, V)
    results = {"tda-clean ekfac": compare(ref, ours(model, X, y, V))}
    with tempfile.TemporaryDirectory() as tmp:
        for variant, label in VARIANTS:
            got = dattri(model, X, y, V, variant, Path(tmp))
            if got is not None:
                results[label] = compare(ref, got)
    for label, figs in results.items():
        print(f"{label:48s} relative error {figs['relative_error']:.3e}   Pearson r {figs['pearson']:.6f}")
    out = HERE / "results" / "ekfac-definition.json"
    out.write_text(json.dumps({"damping": DAMPING, "n": N, "vectors": K, "results": results}, indent=2) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
