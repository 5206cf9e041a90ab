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
# --threads, --precision fp32|bf16|int8, --max-batch-size, --max-wait-ms, --max-queue, --max-context-chars,
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
shown_host=$HOST
[[ $HOST == 0.0.0.0 || $HOST == :: ]] && shown_host=127.0.0.1
[[ $shown_host == *:* ]] && shown_host="[$shown_host]"
shown_port=$((10#$port))
(( shown_port == 0 )) && shown_port='<port from the "serving ... at" log line>'
# The export's task (settings.json, written by inference.export) picks the route and the example body.
task=$(grep -o '"task": *"[^"]*"' "$export_dir/settings.json" 2>/dev/null | sed 's/.*: *"\(.*\)"/\1/' || true)
case ${task:-squad} in
  squad) route=/v1/answer body='{"question": "Who has a red car?", "context": "Tom has a red car."}' ;;
  CoLA|SST-2) route=/v1/classify body='{"text": "Tom has a red car."}' ;;
  *) route=/v1/classify body='{"text_a": "Tom has a red car.", "text_b": "Tom owns a red car."}' ;;
esac
printf '%s: once http://%s:%s/health says {"status":"ready"}, ask:\n' "$PROG" "$shown_host" "$shown_port" >&2
printf "  curl -s http://%s:%s%s -H 'content-type: application/json' \\\\\n" "$shown_host" "$shown_port" "$route" >&2
printf "       -d '%s'\n" "$body" >&2
cd "$REPO_ROOT"
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "${cmd[@]}"
