"""EK-FAC's per-row rotation ``Q_S^T (sum_t g_t a_t^T) Q_A``: both evaluation orders give the same numbers."""
import pytest
import torch

from tda_clean.influence.kfac import _in_basis, _sum_sq_in_basis


def _orthogonal(d: int, gen: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))[0]


@pytest.mark.parametrize("T,out,inp", [(4, 12, 90), (196, 4, 18), (3, 5, 5)])  # rotate-first / form-first / tie
def test_rotation_orders_agree(T, out, inp):
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(7, T, out, generator=gen, dtype=torch.float64)
    a = torch.randn(7, T, inp, generator=gen, dtype=torch.float64)
    QS, QA = _orthogonal(out, gen), _orthogonal(inp, gen)
    explicit = torch.stack([QS.T @ sum(torch.outer(g[n, t], a[n, t]) for t in range(T)) @ QA for n in range(7)])
    assert torch.allclose(_in_basis(g, a, QS, QA), explicit, rtol=0, atol=1e-10 * explicit.abs().max())
    assert torch.allclose(_sum_sq_in_basis(g, a, QS, QA), (explicit ** 2).sum(0), rtol=1e-10, atol=0)


def test_a_singular_float32_factor_gets_a_finite_eigenbasis():
    """A K-FAC input factor (64, 64) from a digits CNN's dense layer with 35 units that never fire (zero rows and
    columns), float32: single-precision ``eigh`` returned NaN for it, which made every Δ-influence query fail."""
    from pathlib import Path

    import numpy as np

    from tda_clean.influence.kfac import factor_eigh

    M = torch.from_numpy(np.load(Path(__file__).parent / "data" / "singular_factor_64.npz")["M"])
    assert M.dtype == torch.float32 and int((M.diagonal() == 0).sum()) == 35
    vals, vecs = factor_eigh(M)
    assert vals.dtype == vecs.dtype == torch.float32
    assert bool(torch.isfinite(vals).all() and torch.isfinite(vecs).all())
    rebuilt = (vecs.double() * vals.double()) @ vecs.double().T
    assert torch.allclose(rebuilt, M.double(), atol=1e-6 * float(M.abs().max()))
