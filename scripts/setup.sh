#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install the pinned dependencies.
#   bash scripts/setup.sh          # CPU (paddlepaddle==2.6.2)
#   bash scripts/setup.sh --gpu    # GPU (paddlepaddle-gpu==2.6.2, CUDA 11.8 build from PyPI)
#   bash scripts/setup.sh --test   # plus the test runner
# Then the project itself, editable and without dependencies (`pip install --no-deps -e .`), so LDDL's command
# names exist in .venv/bin: preprocess_bert_pretrain, balance_dask_output, download_wikipedia, inspect_shards,
# build_vocab (`python -m data.prep.<tool>` works with or without this).
# Re-running is cheap: pip skips what is already installed. PYTHON selects the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
gpu=0; req=requirements.txt
for arg in "$@"; do
  case "$arg" in
    --gpu) gpu=1 ;;
    --test) req=requirements-test.txt ;;
    *) echo "scripts/setup.sh: unknown option '$arg' (use --gpu and/or --test)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version 2>&1)"
  "$PY" -m venv .venv
fi
# The project's console scripts, from pyproject.toml. Editable: the scripts import the working tree, so
# editing the code needs no re-install. The venv's own setuptools builds it when it is new enough for
# editable installs (>= 64) and `wheel` is installed, so no download is needed; otherwise pip fetches
# setuptools into an isolated build environment.
install_project() {
  local isolation=()
  if .venv/bin/python -c "import setuptools, sys, wheel; sys.exit(int(setuptools.__version__.split('.')[0]) < 64)" \
      2>/dev/null; then
    isolation=(--no-build-isolation)
  fi
  echo "[setup] installing the project (editable, no dependencies): console scripts in .venv/bin"
  .venv/bin/pip install --disable-pip-version-check -q --no-deps "${isolation[@]}" -e .
}
# The fused CPU LAMB kernel (cpu_kernels/) compiles against the installed Paddle once per machine (~20 s);
# doing it here keeps that out of the first training run. Cached builds return in seconds. A machine
# without a C++ compiler still trains, with Paddle's own lamb op (the build's warning says so).
build_cpu_kernels() {
  [ "$gpu" = 1 ] && return 0
  echo "[setup] CPU kernels: $(.venv/bin/python -m cpu_kernels.build 2>/dev/null | tail -1 || true)"
}
stamp=".venv/.installed-$(cat requirements.txt requirements-test.txt pyproject.toml | cksum | cut -d' ' -f1)-$req-$gpu"
if [ -f "$stamp" ]; then
  echo "[setup] .venv is up to date"
  build_cpu_kernels
  exit 0
fi
echo "[setup] installing pinned dependencies from $req (about 1 GB on first run)"
if [ "$gpu" = 1 ]; then
  sed 's/^paddlepaddle==/paddlepaddle-gpu==/' requirements.txt > .venv/requirements-gpu.txt
  .venv/bin/pip install --disable-pip-version-check -q -r .venv/requirements-gpu.txt
  [ "$req" = requirements-test.txt ] && .venv/bin/pip install --disable-pip-version-check -q pytest==9.2.0
else
  .venv/bin/pip install --disable-pip-version-check -q -r "$req"
fi
install_project
rm -f .venv/.installed-*
touch "$stamp"
build_cpu_kernels
echo "[setup] done"
