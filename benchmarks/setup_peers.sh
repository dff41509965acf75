#!/usr/bin/env bash
# Create the peer benchmark environment benchmarks/.venv-peers (fresh venv, NOT --system-site-packages).
# torch 2.13.0 (CPU wheel) is installed first, then the peers with torch constrained to 2.13.0.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-peers"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q torch==2.13.0
"$venv/bin/pip" install -q -c "$here/constraints-peers.txt" -r "$here/requirements-peers.txt"
"$venv/bin/python" - <<'PY'
import torch, captum, dattri, sklearn, numpy
print("torch", torch.__version__, "captum", captum.__version__, "numpy", numpy.__version__, "sklearn", sklearn.__version__)
from importlib.metadata import version
for pkg in ("dattri", "kronfluence"):
    try:
        print(pkg, version(pkg))
    except Exception as exc:  # noqa: BLE001
        print(pkg, "missing", exc)
PY
