#!/usr/bin/env bash
# GPU self-check: every GPU path on real hardware in about 5 minutes on one A100, one table at the end.
#   bash scripts/gpu_selfcheck.sh [--only a,b,...] [--timeout-scale X] [--workdir DIR]
# Checks and statuses: see benchmarks/gpu_selfcheck.py. Exit status: 0 all passed; 1 something FAILED;
# 4 something could not run (no usable GPU: each check says why in one line); 2 bad arguments.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python}
cd "$repo"
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" -m benchmarks.gpu_selfcheck "$@"
