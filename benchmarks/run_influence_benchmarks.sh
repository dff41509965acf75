#!/usr/bin/env bash
# One driver run of the influence peer comparison: our engine (main env) and the peers (benchmarks/.venv-peers)
# on the same trained weights and data, then one table with Pearson agreement, time ratios and LDS.
#   benchmarks/run_influence_benchmarks.sh [mlp] [cnn]
# Prerequisites: benchmarks/setup_peers.sh (once); the weights come from lds.py (trained here if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
models=("${@:-mlp cnn}"); models=(${models[@]})
python=${PYTHON:-python}
peers=benchmarks/.venv-peers/bin/python
[ -x "$peers" ] || benchmarks/setup_peers.sh
margs=(); for m in "${models[@]}"; do margs+=(--model "$m"); done
for m in "${models[@]}"; do
  # full-data weights + TracIn checkpoints (cheap; the 100 retrains are only done by lds.py without this flag)
  "$python" -c "import sys; sys.path.insert(0, '.'); from benchmarks.lds import full_model; from benchmarks.common import load_data; full_model('$m', *load_data())"
done
"$python" benchmarks/ours_matching.py "${margs[@]}" 2>&1 | grep -v '^\s*$' | grep '^{' || true
"$peers" benchmarks/peers.py "${margs[@]}" 2> >(grep -v 'WARNING\|it/s\]\|s/it\]\|FutureWarning\|GradScaler' >&2) | grep '^{' || true
"$python" benchmarks/compare.py "${margs[@]}"
