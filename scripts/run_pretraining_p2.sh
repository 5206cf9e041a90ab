#!/usr/bin/env bash
# Phase 2 of BERT-large pre-training with named flags: the DGX A100 8-GPU amp recipe (sequence length
# 512, 1563 updates of 32 x 128 accumulated x 8 GPUs = 32768 sequences), initialised from phase 1's final
# step (results/bert-large-uncased/phase1/7038, run scripts/run_pretraining_p1.sh first). Run from anywhere:
#   bash scripts/run_pretraining_p2.sh [extra run_pretraining.py flags, which override the ones below]
# Environment: PYTHON, GPUS, BERT_PREP_WORKING_DIR as in run_pretraining_p1.sh; the shards are in
# pretrain/phase2/bin_size_64/parquet. Re-running resumes from results/bert-large-uncased/phase2 (phase 1's
# weights are then not loaded again). The report goes to its own file, dllogger_p2.json (the reference's
# p2 script overwrote phase 1's report).
set -euo pipefail
PROG=run_pretraining_p2.sh
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
cd "$REPO_ROOT"
PYTHON=${PYTHON:-$(default_python .)}
PREP_DIR=${BERT_PREP_WORKING_DIR:-data/download}
GPUS=${GPUS:-0,1,2,3,4,5,6,7}
DRY_RUN=${DRY_RUN:-0}
input_dir=$PREP_DIR/pretrain/phase2/bin_size_64/parquet
vocab_file=vocab/bert-large-uncased-vocab.txt

launch_phase_on_gpus "$input_dir" "$vocab_file" \
  "$PYTHON" -m paddle.distributed.launch --gpus="$GPUS" \
  run_pretraining.py \
  --input-dir="$input_dir" \
  --vocab-file="$vocab_file" \
  --output-dir=results \
  --bert-model=bert-large-uncased \
  --from-checkpoint=results/bert-large-uncased/phase2 \
  --last-step-of-checkpoint=auto \
  --from-phase1-final-params=results/bert-large-uncased/phase1/7038 \
  --batch-size=32 \
  --max-steps=1563 \
  --num-steps-per-checkpoint=200 \
  --log-freq=1 \
  --max-seq-length=512 \
  --max-predictions-per-seq=80 \
  --gradient-merge-steps=128 \
  --amp \
  --use-dynamic-loss-scaling \
  --scale-loss=1048576 \
  --fuse-mha \
  --optimizer=Lamb \
  --phase2 \
  --learning-rate=4e-3 \
  --warmup-proportion=0.128 \
  --report-file=results/dllogger_p2.json \
  "$@"
