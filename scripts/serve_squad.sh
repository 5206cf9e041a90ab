#!/usr/bin/env bash
# The old name of scripts/serve.sh (the model service), kept so existing commands work unchanged:
#   bash scripts/serve_squad.sh <export_dir> [port] [server flags...]
# Everything, DRY_RUN=1 included, is serve.sh's; error lines name this script.
SERVE_PROG=serve_squad.sh exec bash "$(dirname "${BASH_SOURCE[0]}")/serve.sh" "$@"
