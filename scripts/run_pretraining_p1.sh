#!/usr/bin/env bash
# Phase 1 of BERT-large pre-training with named flags: the DGX A100 8-GPU amp recipe (sequence length
# 128, 7038 updates of 256 x 32 accumulated x 8 GPUs = 65536 sequences). Run from anywhere:
#   bash scripts/run_pretraining_p1.sh [extra run_pretraining.py flags, which override the ones below]
# Environment: PYTHON (default .venv/bin/python if present, else python3), GPUS (default 0,...,7; checked
# before launching: a CPU machine gets one line naming the CPU preset), DRY_RUN=1 (print the command and list
# the missing inputs, run nothing),
# BERT_PREP_WORKING_DIR (default data/download; the shards are in pretrain/phase1/unbinned/parquet, see
# scripts/run_pretraining.sh for building them). Re-running resumes from results/bert-large-uncased/phase1.
set -euo pipefail
PROG=run_pretraining_p1.sh
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
cd "$REPO_ROOT"
PYTHON=${PYTHON:-$(default_python .)}
PREP_DIR=${BERT_PREP_WORKING_DIR:-data/download}
GPUS=${GPUS:-0,1,2,3,4,5,6,7}
DRY_RUN=${DRY_RUN:-0}
input_dir=$PREP_DIR/pretrain/phase1/unbinned/parquet
vocab_file=vocab/bert-large-uncased-vocab.txt

launch_phase_on_gpus "$input_dir" "$vocab_file" \
  "$PYTHON" -m paddle.distributed.launch --gpus="$GPUS" \
  run_pretraining.py \
  --input-dir="$input_dir" \
  --vocab-file="$vocab_file" \
  --output-dir=results \
  --bert-model=bert-large-uncased \
  --from-checkpoint=results/bert-large-uncased/phase1 \
  --last-step-of-checkpoint=auto \
  --batch-size=256 \
  --max-steps=7038 \
  --num-steps-per-checkpoint=200 \
  --log-freq=1 \
  --max-seq-length=128 \
  --max-predictions-per-seq=20 \
  --gradient-merge-steps=32 \
  --amp \
  --use-dynamic-loss-scaling \
  --scale-loss=1048576 \
  --fuse-mha \
  --optimizer=Lamb \
  --phase1 \
  --learning-rate=6e-3 \
  --warmup-proportion=0.2843 \
  --report-file=results/dllogger_p1.json \
  "$@"
