#!/usr/bin/env bash
# The model service: python -m inference.server on an exported model directory -- a SQuAD export is served
# at /v1/answer, a GLUE export at /v1/classify (the export's settings.json says which).
# scripts/serve_squad.sh is this script under its old name.
#
# Usage (from anywhere):
#   bash scripts/serve.sh <export_dir> [port] [server flags...]
#   bash scripts/serve.sh export/squad 8000 --threads 2 --max-batch-size 8
#   bash scripts/serve.sh export/mrpc 8001
#   DRY_RUN=1 bash scripts/serve.sh export/squad     # print the command instead of running it
#
# Positional arguments:
#   1 export_dir   a directory written by: python -m inference.export --checkpoint <fine-tuned dir> --output-dir <dir>
#   2 port [8000]  TCP port (0 = any free one; the server logs the one it got)
# Anything after them goes to the server unchanged (python -m inference.server --help lists it all:
# --threads, --precision auto|fp32|bf16|int8 (default auto: the fastest one this CPU runs natively whose
# accuracy the export recorded within tolerance of fp32; the server logs which and why), --max-batch-size, --max-wait-ms, --max-queue, --max-context-chars,
# --max-body-bytes, --drain-timeout, --access-log).
#
# Environment knobs:
#   HOST [127.0.0.1]  address to listen on (0.0.0.0: every interface; put a proxy with TLS in front)
#   PYTHON            interpreter (default: <repo>/.venv/bin/python if present, else python3)
#   DRY_RUN=1         print the command (shell-quoted, one line) on stdout and run nothing
#
# The server runs in the foreground (exec): Ctrl-C or SIGTERM stop it after the requests in flight are answered.
set -euo pipefail

PROG=${SERVE_PROG:-serve.sh}  # the name error lines and the usage give (serve_squad.sh sets its own)
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

(( $# >= 1 )) || die "usage: bash scripts/$PROG <export_dir> [port] [server flags...]"
export_dir=$1
port=${2:-8000}
shift $(( $# >= 2 ? 2 : 1 ))
HOST=${HOST:-127.0.0.1}
DRY_RUN=${DRY_RUN:-0}

[[ -d $export_dir ]] || die "<export_dir> (argument 1) '$export_dir' is not a directory; write one with" \
  "python -m inference.export --checkpoint <fine-tuned dir> --output-dir <dir>"
[[ -f $export_dir/manifest.json ]] || die "<export_dir> (argument 1) '$export_dir' has no manifest.json: not an" \
  "exported model (python -m inference.export writes it)"
need_int port 2 "$port" 0
(( 10#$port <= 65535 )) || die "<port> (argument 2) must be at most 65535, got '$port'"

PYTHON=${PYTHON:-$(default_python "$REPO_ROOT")}
cmd=("$PYTHON" -m inference.server "--model-dir=$export_dir" "--host=$HOST" "--port=$((10#$port))" "$@")

if [[ $DRY_RUN == 1 ]]; then
  print_command "${cmd[@]}"
  exit 0
fi
# The server itself logs a curl example (`ask: curl ...`) once it listens and its model is loaded: printed
# here, it showed even when the server then stopped on a busy port.
cd "$REPO_ROOT"
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "${cmd[@]}"
