#!/usr/bin/env bash
# Set up the CPU development environment in .venv (idempotent; safe to re-run).
# torch==2.13.0 (CPU build) goes in first and stays pinned through constraints-cpu.txt,
# so no other package can pull a multi-GB CUDA build of torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
pip_q() { "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@"; }

if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
  pip_q torch==2.13.0
fi
pip_q -c constraints-cpu.txt -e ".[test,dist,trackers]"
"$VENV/bin/python" -c "import torch, transformers, lmm_r1_ascend; print(f'set-up ok: torch {torch.__version__}, transformers {transformers.__version__}, lmm_r1_ascend {lmm_r1_ascend.__version__}')"
