"""K-FAC and EK-FAC curvature for ``nn.Linear`` and ``nn.Conv2d`` layers (block-diagonal over layers).

For a layer with input activations ``a`` (bias column 1 appended) and output gradients ``g = d loss_n / d s``
(per row, unreduced), the per-sample weight gradient is the matrix ``M_n = sum_t g_t a_t^T`` of shape
``(out, in + 1)`` (t runs over spatial locations for Conv2d, once for Linear). Its row-major flattening is the
layer's segment of the flat parameter vector (``[weight.flatten(), bias]``).

    A = (1/(n T)) sum_{n,t} a a^T            (in+1, in+1)      S = (1/n) sum_{n,t} g g^T     (out, out)
    H_CE ~= S (x) A  with eigenbasis  Q_S (x) Q_A

K-FAC uses eigenvalues ``lam_S (x) lam_A``; EK-FAC (George et al. 2018) replaces them with
``lam[o, i] = (1/n) sum_n ((Q_S^T M_n Q_A)[o, i])^2``. The L2 term of the training loss is exact in any basis,
so the curvature used is ``Q (lam + l2 + damping) Q^T`` per layer. Labels for ``g`` are drawn from the model
(``fisher="sampled"``, seeded; cross-entropy only) or the given ones (``"empirical"``, used for any other loss).

Scores ``q^T A^-1 g_i`` for many queries (``InfluenceEngine.scores``) are computed IN the eigenbasis, where
``A^-1`` is diagonal: both gradients are projected from their layer factors (:meth:`KFACSolver.eigenbasis_gradients`),
so no (m, p) solution is ever projected back, and Linear layers' rank-one row gradients are projected as
``(Q_S^T g)(Q_A^T a)^T`` (same scores as solve-then-dot up to float rounding; timings in BENCHMARKS.md).

Any selected parameter owned by another module type raises :class:`InputError` naming the module.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from tda_clean.config.influence import KFACSettings
from tda_clean.errors import InputError
from tda_clean.influence import layer_grads
from tda_clean.influence.curvature import CurvatureSolver, TrainingLoss, register_solver, resolve_damping
from tda_clean.objective import cross_entropy
from tda_clean.progress import progress_bar


@dataclass
class _Layer:
    name: str
    module: nn.Module
    w_slice: slice
    b_slice: slice | None
    out: int
    inp: int  # input width including the bias column when present
    owner: str = ""  # module name in the model ("" for the root module)


def _layers(loss: TrainingLoss) -> list[_Layer]:
    space = loss.space
    offsets = space.offsets()
    layers = []
    for mod_name, module in space.owners().items():
        label = mod_name or "(root)"
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            raise InputError(f"{'ekfac/kfac'}: module {label!r} ({type(module).__name__}) is not supported; K-FAC "
                             "handles nn.Linear and nn.Conv2d only -- choose params='head' or other module names")
        if isinstance(module, nn.Conv2d) and (module.groups != 1 or isinstance(module.padding, str)):
            raise InputError(f"ekfac/kfac: module {label!r} (Conv2d) uses groups={module.groups} / padding="
                             f"{module.padding!r}; only groups=1 with numeric padding is supported")
        own = [n for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        full = [f"{mod_name}.{n}" if mod_name else n for n in own]
        missing = [n for n in full if n not in offsets]
        if missing:
            raise InputError(f"ekfac/kfac: module {label!r} is only partly selected (missing {missing}); "
                             "select whole modules")
        w_name = f"{mod_name}.weight" if mod_name else "weight"
        b_name = f"{mod_name}.bias" if mod_name else "bias"
        has_bias = b_name in offsets
        out = module.weight.shape[0]
        inp = module.weight[0].numel() + (1 if has_bias else 0)
        layers.append(_Layer(label, module, offsets[w_name], offsets.get(b_name), out, inp, mod_name))
    return layers


def _activations(layer: _Layer, x: torch.Tensor) -> torch.Tensor:
    """Layer input -> ``(n, T, inp)`` patches (bias column appended when the layer has a bias)."""
    m = layer.module
    if isinstance(m, nn.Conv2d):
        a = F.unfold(x, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride).transpose(1, 2)
    else:
        a = x.reshape(x.shape[0], -1, x.shape[-1])
    if layer.b_slice is not None:
        a = torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)
    return a


def _out_grads(layer: _Layer, g: torch.Tensor) -> torch.Tensor:
    """Output gradient -> ``(n, T, out)``."""
    if isinstance(layer.module, nn.Conv2d):
        return g.flatten(2).transpose(1, 2)
    return g.reshape(g.shape[0], -1, g.shape[-1])


def _to_flat(layer: _Layer, M: torch.Tensor, out: torch.Tensor) -> None:
    """Write a layer block ``M`` (..., out, inp) into the flat parameter layout ``out`` (..., p) in place:
    ``[weight.flatten(), bias]`` of the layer's slices (the bias is the last column of ``M``)."""
    w = layer.w_slice.stop - layer.w_slice.start
    out[..., layer.w_slice] = M[..., : w // layer.out].reshape(*M.shape[:-2], -1)
    if layer.b_slice is not None:
        out[..., layer.b_slice] = M[..., -1]


def _sum_sq_in_basis(g: torch.Tensor, a: torch.Tensor, QS: torch.Tensor, QA: torch.Tensor) -> torch.Tensor:
    """``sum_n (Q_S^T M_n Q_A)**2`` (out, inp) for ``M_n = sum_t g_nt a_nt^T``; ``g`` (n, T, out), ``a`` (n, T, inp).

    With one location (T = 1: Linear layers) ``M_n`` is rank one, so the projected matrix is ``u_n w_n^T`` with
    ``u_n = Q_S^T g_n``, ``w_n = Q_A^T a_n`` and the sum is ``(u*u)^T (w*w)``: n (out^2 + inp^2 + out inp) work
    instead of n out inp (out + inp), e.g. 64x less for a 6,273 -> 64 layer.
    """
    if g.shape[1] == 1:
        u, w = g[:, 0] @ QS, a[:, 0] @ QA
        return (u * u).T @ (w * w)
    return (_in_basis(g, a, QS, QA) ** 2).sum(0)


def _in_basis(g: torch.Tensor, a: torch.Tensor, QS: torch.Tensor, QA: torch.Tensor) -> torch.Tensor:
    """``Q_S^T M_n Q_A`` (n, out, inp) for ``M_n = sum_t g_nt a_nt^T``; ``g`` (n, T, out), ``a`` (n, T, inp).

    Two exact orders: form ``M_n`` then rotate it (``T out inp + out^2 inp + out inp^2`` multiply-adds per row), or
    rotate every location first, ``sum_t (Q_S^T g_nt)(Q_A^T a_nt)^T`` (``T (out^2 + inp^2 + out inp)``); the cheaper
    one is taken. Rotating first wins where the positions are few and the patches wide (a 3x3 conv with 1,152
    inputs at 4x4: 8x fewer); forming first where the map is large (14x14 with 288 inputs).
    """
    T, out, inp = g.shape[1], g.shape[2], a.shape[2]
    if T * (out * out + inp * inp + out * inp) < T * out * inp + out * out * inp + out * inp * inp:
        return torch.einsum("nto,nti->noi", g @ QS, a @ QA)
    return QS.T @ torch.einsum("nto,nti->noi", g, a) @ QA


def factor_eigh(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(eigenvalues (d,), eigenvectors (d, d))`` of the symmetric factor ``M`` (d, d), in ``M``'s dtype but
    computed in float64: single-precision LAPACK returns NaN for some singular factors (a layer whose inputs
    include units that never fire gives zero rows and columns), which would poison every score."""
    vals, vecs = torch.linalg.eigh(M.double())
    return vals.to(M.dtype), vecs.to(M.dtype)


@register_solver("kfac", "ekfac")
class KFACSolver(CurvatureSolver):
    """K-FAC / EK-FAC (``settings.kind``). After fit: ``eigenvalues_`` {layer: (out, inp)} of the CE part,
    ``damping_``, ``negative_curvature_`` (always False: the Fisher is PSD), ``min_eigenvalue_``."""

    name = "ekfac"
    eigenbasis = True
    settings: KFACSettings

    def fit(self, loss: TrainingLoss) -> "KFACSolver":
        self.name = self.settings.kind
        self.p_, self.l2_, self.loss_ = loss.p, loss.l2, loss
        self.layers_ = _layers(loss)
        labels = self._labels(loss)
        A = {l.name: torch.zeros(l.inp, l.inp, dtype=loss.dtype, device=loss.device) for l in self.layers_}
        S = {l.name: torch.zeros(l.out, l.out, dtype=loss.dtype, device=loss.device) for l in self.layers_}
        T = {}
        for rows, acts, grads in self._passes(loss, labels):
            for l in self.layers_:
                a, g = acts[l.name], grads[l.name]
                T[l.name] = a.shape[1]
                A[l.name] += torch.einsum("nti,ntj->ij", a, a) / a.shape[1]
                S[l.name] += torch.einsum("nto,ntq->oq", g, g)
        self.QA_, self.QS_, self.eigenvalues_ = {}, {}, {}
        for l in self.layers_:
            la, qa = factor_eigh(A[l.name] / loss.n)
            ls, qs = factor_eigh(S[l.name] / loss.n)
            self.QA_[l.name], self.QS_[l.name] = qa, qs
            self.eigenvalues_[l.name] = torch.outer(ls.clamp_min(0), la.clamp_min(0))
        if self.settings.eigen_correction:
            corrected = {l.name: torch.zeros(l.out, l.inp, dtype=loss.dtype, device=loss.device) for l in self.layers_}
            for rows, acts, grads in self._passes(loss, labels):
                for l in self.layers_:
                    corrected[l.name] += _sum_sq_in_basis(grads[l.name], acts[l.name], self.QS_[l.name], self.QA_[l.name])
            self.eigenvalues_ = {k: v / loss.n for k, v in corrected.items()}
        allv = torch.cat([v.reshape(-1) for v in self.eigenvalues_.values()]) + self.l2_
        self.damping_ = resolve_damping(self.settings.damping, lambda: float(allv.mean()))
        self.min_eigenvalue_ = float(allv.min())
        self.negative_curvature_ = False
        if self.min_eigenvalue_ + self.damping_ <= 1e-12 * max(float(allv.max()), 1e-30):
            raise InputError(f"{self.name} solver: damping={self.damping_:.3g} leaves the curvature singular "
                             f"(smallest eigenvalue {self.min_eigenvalue_:.3g} with l2={self.l2_}); use damping > 0 or 'auto'")
        return self

    def _labels(self, loss: TrainingLoss) -> torch.Tensor:
        self.fisher_ = self.settings.fisher if loss.objective.loss is cross_entropy else "empirical"  # sampled: CE's
        if self.fisher_ == "empirical":
            return loss.labels
        gen = torch.Generator(device="cpu").manual_seed(self.settings.seed)
        out = []
        with torch.no_grad():
            for _, Xb, _ in loss.blocks():
                probs = torch.softmax(loss.space.model(Xb), dim=1)
                out.append(torch.multinomial(probs.double().cpu(), 1, generator=gen).flatten())
        return torch.cat(out).to(loss.device)

    def _passes(self, loss: TrainingLoss, labels: torch.Tensor):
        """Yield ``(rows, acts {layer: (b, T, inp)}, grads {layer: (b, T, out)})`` per batch of training rows
        (streamed from ``loss.blocks()``: the training features are never held whole)."""
        model = loss.space.model
        long = loss.n > loss.batch_size
        with progress_bar(loss.n, f"{self.name} curvature pass", "row", worth_showing=long) as bar:
            for rows, Xb, _ in loss.blocks():
                bar.update(rows.stop - rows.start)
                acts, outs, handles = {}, {}, []
                for l in self.layers_:
                    def hook(module, inputs, output, l=l):
                        acts[l.name] = _activations(l, inputs[0].detach())
                        outs[l.name] = output
                    handles.append(l.module.register_forward_hook(hook))
                try:
                    with torch.enable_grad():
                        logits = model(Xb)
                        ce = loss.objective.data_sum(logits, labels[rows])
                        names = [l.name for l in self.layers_]
                        gouts = torch.autograd.grad(ce, [outs[k] for k in names])
                finally:
                    for h in handles:
                        h.remove()
                grads = {l.name: _out_grads(l, g.detach()) for l, g in zip(self.layers_, gouts)}
                yield rows, acts, grads

    def _apply(self, V: torch.Tensor, inverse: bool) -> torch.Tensor:
        V = self._check_vectors(V)
        out = torch.zeros_like(V)
        k = V.shape[0]
        for l in self.layers_:
            M = V[:, l.w_slice].reshape(k, l.out, -1)
            if l.b_slice is not None:
                M = torch.cat([M, V[:, l.b_slice].reshape(k, l.out, 1)], dim=2)
            QS, QA = self.QS_[l.name].to(V.dtype), self.QA_[l.name].to(V.dtype)
            lam = self.eigenvalues_[l.name].to(V.dtype) + self.l2_ + self.damping_
            R = QS.T @ M @ QA
            R = R / lam if inverse else R * lam
            _to_flat(l, QS @ R @ QA.T, out)
        return out

    def to_eigenbasis(self, V: torch.Tensor) -> torch.Tensor:
        """Flat vectors ``V`` (k, p) in the Kronecker eigenbasis, ``Q_S^T M Q_A`` per layer (k, p), the layout of
        :meth:`eigenbasis_gradients`."""
        V = self._check_vectors(V)
        out = torch.zeros_like(V)
        for l in self.layers_:
            M = V[:, l.w_slice].reshape(V.shape[0], l.out, -1)
            if l.b_slice is not None:
                M = torch.cat([M, V[:, l.b_slice].reshape(V.shape[0], l.out, 1)], dim=2)
            _to_flat(l, self.QS_[l.name].to(V.dtype).T @ M @ self.QA_[l.name].to(V.dtype), out)
        return out

    def hvp(self, V: torch.Tensor) -> torch.Tensor:
        return self._apply(V, inverse=False)

    def solve(self, V: torch.Tensor) -> torch.Tensor:
        return self._apply(V, inverse=True)

    # ------------------------------------------------------------------ scores in the eigenbasis
    def eigenbasis_gradients(self, X: torch.Tensor, y: torch.Tensor, row_loss) -> torch.Tensor | None:
        """Per-row gradients of ``row_loss(logits_i, y_i)`` in the Kronecker eigenbasis, ``(n, p)``: layer by layer
        ``Q_S^T M_i Q_A`` flattened (same layout as the flat parameter vector within each layer's block).

        From one hooked forward/backward (:func:`layer_grads._record`): a Linear layer on 2-D inputs has a rank-one
        ``M_i = g_i a_i^T``, projected as ``(Q_S^T g_i)(Q_A^T a_i)^T`` (out^2 + inp^2 work per row instead of
        out inp (out + inp)); conv layers project their summed patch products. ``None`` where the hooks do not cover
        the forward pass (train mode, shared layers, ...): callers fall back to materialised gradients.
        """
        space = self.loss_.space
        records = layer_grads._record(space, X, y, row_loss) if layer_grads.supported(space) else None
        if records is None:
            return None
        out = torch.zeros(len(X), self.p_, dtype=self.loss_.dtype, device=self.loss_.device)
        for l in self.layers_:
            _, a, delta = records[l.owner]
            acts, grads = _activations(l, a), _out_grads(l, delta)            # (n, T, inp), (n, T, out)
            QS, QA = self.QS_[l.name].to(grads.dtype), self.QA_[l.name].to(grads.dtype)
            if acts.shape[1] == 1:
                P = (grads[:, 0] @ QS)[:, :, None] * (acts[:, 0] @ QA)[:, None, :]
            else:
                P = _in_basis(grads, acts, QS, QA)
            _to_flat(l, P, out)
        return out

    def eigenbasis_scale(self) -> torch.Tensor:
        """``(p,)`` 1 / (eigenvalue + l2 + damping) in the layout of :meth:`eigenbasis_gradients`: there,
        ``q^T A^-1 g = sum(q~ * g~ * scale)``."""
        out = torch.zeros(self.p_, dtype=self.loss_.dtype, device=self.loss_.device)
        for l in self.layers_:
            _to_flat(l, 1.0 / (self.eigenvalues_[l.name].to(out.dtype) + self.l2_ + self.damping_), out)
        return out
