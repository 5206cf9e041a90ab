#!/usr/bin/env bash
# Start the image built by scripts/docker/build.sh with the GPUs and this checkout's data mounted
# (run from anywhere):
#   bash scripts/docker/launch.sh [command, default bash] [GPUs, default all] [docker network, default host]
# Mounts (host -> container): the repo -> /workspace/bert (so edits are live), and over it
#   RESULTS_DIR            [<repo>/results]        -> /workspace/bert/results
#   VOCAB_DIR              [<repo>/vocab]          -> /workspace/bert/vocab
#   BERT_PREP_WORKING_DIR  [<repo>/data/download]  -> /workspace/bert/data/download (Wikipedia, SQuAD, shards)
# (created on the host first, so they belong to you rather than to the Docker daemon).
# PYTHON=python inside: the image's interpreter, never a host .venv that the repo mount brings along.
# IMAGE selects the image (default bert:latest). Inside, e.g.:
#   bash scripts/run_pretraining.sh $(source configs/pretrain_config.sh && dgxa100-80g_8gpu_amp)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cmd=${1:-bash}
gpus=${2:-all}
network=${3:-host}
results=${RESULTS_DIR:-$repo/results}
vocab=${VOCAB_DIR:-$repo/vocab}
data=${BERT_PREP_WORKING_DIR:-$repo/data/download}
mkdir -p "$results" "$vocab" "$data"
if [[ $gpus == all ]]; then gpu_opt=(--gpus all); else gpu_opt=(--gpus "\"device=$gpus\""); fi
tty=(); [[ -t 0 && -t 1 ]] && tty=(-it)
# shellcheck disable=SC2086  # the command is a word list on purpose (e.g. "bash scripts/run_pretraining.sh")
exec docker run "${tty[@]}" --rm "${gpu_opt[@]}" --net="$network" --shm-size=1g \
  --ulimit memlock=-1 --ulimit stack=67108864 \
  -v "$repo:/workspace/bert" \
  -v "$results:/workspace/bert/results" \
  -v "$vocab:/workspace/bert/vocab" \
  -v "$data:/workspace/bert/data/download" \
  -w /workspace/bert -e PYTHON=python \
  "${IMAGE:-bert:latest}" $cmd
