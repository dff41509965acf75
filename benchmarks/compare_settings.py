"""Settings shared by both sides of the peer comparison (``ours_matching.py`` in the main environment,
``peers.py`` in ``benchmarks/.venv-peers``). Plain constants: importable in both environments.

Every method scores removal of each of the 1,347 digits training rows on the true-class margin of the first
``N_QUERY`` test points (``logit_y - logsumexp_{k!=y} logit_k``). Curvature is the training-loss Hessian
``H = H_CE + l2 I`` plus ``DAMPING I``; peers that do not see the trainer's L2 term get ``l2 + DAMPING``.
"""
N_QUERY = 100
DAMPING = 0.1
CG_ITERS = 30            # fixed CG iterations on both sides (tolerance set too small to stop earlier)
LISSA = {"depth": 100, "batch_size": 128, "scale": 50.0}   # same recursion, same scale, one repeat
REPEATS = 3              # runs per timing (best of); 3 on a quiet machine (1 fits a loaded one)

# parameter subsets per model: "head" = last Linear; "linear" = every Linear (EK-FAC in dattri handles Linear only)
HEAD = {"mlp": ["head.weight", "head.bias"], "cnn": ["head.weight", "head.bias"]}
LINEAR_MODULES = {"mlp": ["body.0", "head"], "cnn": ["dense.1", "head"]}
ALL_MODULES = {"mlp": ["body.0", "head"], "cnn": ["conv.0", "conv.2", "dense.1", "head"]}
