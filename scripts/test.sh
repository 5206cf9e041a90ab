#!/usr/bin/env bash
# Set up the environment and run the whole test suite (what CI runs). Extra arguments go to pytest.
# --durations=15: the 15 slowest tests are listed at the end of every run, so a test that grows slow is seen.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
exec .venv/bin/python -m pytest -q --durations=15 tests "$@"
