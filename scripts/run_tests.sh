#!/usr/bin/env bash
# Set up (if needed) and run the default CPU test suite. This is the README's test command
# and exactly what CI runs (.ci/run). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_cpu.sh
exec .venv/bin/python -m pytest -q "$@"
