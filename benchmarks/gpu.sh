#!/usr/bin/env bash
# The reference workload (benchmarks/workload.py) and the influence peer comparison (ours_matching.py, peers.py,
# compare.py) on a lent GPU machine, within a device-time budget; one JSON of figures.
#
#   benchmarks/gpu.sh prepare                 # here, with the package index: fill .gpu/ (ignored by git)
#   benchmarks/gpu.sh run --out DIR [--small] [--skip-peers] [--n-train N] [--epochs E] [--budget S]
#
# The device machine is bare and offline: its python3 has torch (CUDA), numpy, pandas, scikit-learn, pillow,
# pyyaml, matplotlib, tqdm, but not pydantic nor the peer libraries, and no Fashion-MNIST. `prepare` copies the
# four idx files (from $FASHION_MNIST_DIR or the library's default folder) to .gpu/fashion-mnist and downloads the
# missing wheels (CPython 3.12, manylinux x86-64, no dependencies: the rest is on the machine) to .gpu/wheels;
# carry .gpu to the machine. `run` installs the wheels into a private folder when an import is missing, finds
# the idx files ($FASHION_MNIST_DIR, the library's default folder, then .gpu/fashion-mnist; one clear error
# otherwise), runs the workload (60,000 images, 2 epochs, CUDA when available) and, while the budget (default
# 480 s from the start) leaves at least 150 s, the peer comparison for the small CNN (digits; the peer scripts
# pin every side to the CPU, all cores); writes DIR/gpu.json.
# `--small`: 256 training images, a narrow net, no peers -- the CPU smoke test (tests/test_gpu_script.py).
set -euo pipefail
cd "$(dirname "$0")/.."
here=$PWD
start=$(date +%s)
py=${PYTHON:-python3}

die() { echo "error: $*" >&2; exit 2; }

usage() { sed -n '5,6p' "$0" | sed 's/^# *//' >&2; exit 2; }

prepare() {
  local src=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
  mkdir -p .gpu/fashion-mnist .gpu/wheels
  for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
    [ -f "$src/$f" ] || die "FASHION_MNIST_DIR: $src/$f not found (apt-get install dataset-fashion-mnist)"
    cp "$src/$f" .gpu/fashion-mnist/
  done
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/wheels pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
    captum==0.9.0 dattri==0.3.0 kronfluence==1.0.1 einconv==0.1.0
  du -sh .gpu
}

[ $# -ge 1 ] || usage
cmd=$1; shift
case $cmd in
  prepare) prepare; exit 0 ;;
  run) ;;
  *) usage ;;
esac

out="" small=0 peers=1 n_train=60000 epochs=2 budget=480
while [ $# -gt 0 ]; do
  case $1 in
    --out) out=${2:?--out needs a folder}; shift 2 ;;
    --small) small=1; peers=0; shift ;;
    --skip-peers) peers=0; shift ;;
    --n-train) n_train=${2:?}; shift 2 ;;
    --epochs) epochs=${2:?}; shift 2 ;;
    --budget) budget=${2:?}; shift 2 ;;
    *) die "unknown argument $1 (see: benchmarks/gpu.sh with no arguments)" ;;
  esac
done
[ -n "$out" ] || die "--out: give the folder for the figures (\$OUT on the device machine)"
[[ $n_train =~ ^[0-9]+$ && $epochs =~ ^[0-9]+$ && $budget =~ ^[0-9]+$ ]] || die "--n-train, --epochs, --budget: whole numbers"
mkdir -p "$out"
left() { echo $(( budget - ($(date +%s) - start) )); }

# 1. Python: the machine's, plus the carried wheels when an import is missing
mods="torch, numpy, pandas, sklearn, PIL, yaml, pydantic"
[ $peers = 1 ] && mods="$mods, captum, dattri, kronfluence"
if ! "$py" -c "import $mods" 2>/dev/null; then
  ls .gpu/wheels/*.whl >/dev/null 2>&1 || die "python ($py) cannot import one of $mods and .gpu/wheels is empty: run 'benchmarks/gpu.sh prepare' where the package index is reachable and carry .gpu"
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/tda-gpu-site .gpu/wheels/*.whl
  export PYTHONPATH=/tmp/tda-gpu-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$here${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

# 2. Fashion-MNIST idx files
fashion=""
for d in "${FASHION_MNIST_DIR:-}" /usr/share/datasets/fashion-mnist .gpu/fashion-mnist; do
  if [ -n "$d" ] && [ -f "$d/train-images-idx3-ubyte.gz" ] && [ -f "$d/t10k-labels-idx1-ubyte.gz" ]; then fashion=$d; break; fi
done
[ -n "$fashion" ] || die "Fashion-MNIST idx files not found (FASHION_MNIST_DIR, /usr/share/datasets/fashion-mnist, .gpu/fashion-mnist): run 'benchmarks/gpu.sh prepare' and carry .gpu"

"$py" -c "import torch, json; print(json.dumps({'torch': torch.__version__, 'cuda': torch.cuda.is_available(), 'device': torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}))" > "$out/device.json"
cat "$out/device.json"

# 3. the workload
wl=(--n-train "$n_train" --epochs "$epochs" --fashion "$fashion" --cache "${TMPDIR:-/tmp}/tda-gpu-png"
    --run-dir "${TMPDIR:-/tmp}/tda-gpu-run-$n_train" --json "$out/workload.json" --fresh)
if [ $small = 1 ]; then
  export WORKLOAD_WIDTH=8
  wl=(--n-train 256 --n-val 128 --n-test 256 --epochs 1 --fashion "$fashion" --cache "$out/png"
      --run-dir "$out/run" --json "$out/workload.json")
fi
t0=$(date +%s)
timeout $(( $(left) > 30 ? $(left) - 20 : 10 )) "$py" benchmarks/workload.py "${wl[@]}" > "$out/workload.log" 2>&1 \
  || echo "workload: failed or out of budget (exit $?), see workload.log" >&2
workload_s=$(( $(date +%s) - t0 ))

# 4. the peer comparison (small CNN on digits; same weights, same queries), while the budget allows
peers_s=0
if [ $peers = 1 ] && [ "$(left)" -ge 150 ]; then
  t0=$(date +%s)
  PY=$py THREADS=$(nproc) timeout $(( $(left) - 15 )) bash -c '
    "$PY" -c "import sys; sys.path.insert(0, \".\"); from benchmarks.lds import full_model; from benchmarks.common import load_data; full_model(\"cnn\", *load_data())" &&
    "$PY" benchmarks/ours_matching.py --model cnn --threads "$THREADS" &&
    "$PY" benchmarks/peers.py --model cnn --threads "$THREADS" &&
    "$PY" benchmarks/compare.py --model cnn' > "$out/peers.log" 2>&1 \
    || echo "peers: failed or out of budget (exit $?), see peers.log" >&2
  peers_s=$(( $(date +%s) - t0 ))
  cp benchmarks/results/influence-peers.json "$out/influence-peers.json" 2>/dev/null || true
fi

# 5. one JSON of figures
"$py" - "$out" "$workload_s" "$peers_s" "$(( $(date +%s) - start ))" <<'PY'
import json, sys
from pathlib import Path
out, workload_s, peers_s, total_s = Path(sys.argv[1]), *map(int, sys.argv[2:])
read = lambda name: json.loads((out / name).read_text()) if (out / name).is_file() else None
figures = {"device": read("device.json"), "total_s": total_s, "workload_s": workload_s, "peers_s": peers_s,
           "workload": read("workload.json"), "peers": read("influence-peers.json")}
(out / "gpu.json").write_text(json.dumps(figures, indent=1))
w = figures["workload"]
print("gpu.json:", json.dumps({"device": figures["device"], "total_s": total_s,
      "stages_s": {k: v["seconds"] for k, v in w["stages"].items()} if w else None}))
PY
