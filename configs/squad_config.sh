# Preset argument lists for scripts/run_squad.sh: each function echoes its 18 positional values.
#
#   bash scripts/run_squad.sh $(source configs/squad_config.sh && dgxa100-80g_8gpu_amp)
#   bash scripts/run_squad.sh $(source configs/squad_config.sh && dgxa100-80g_8gpu_tf32)
#   bash scripts/run_squad.sh $(source configs/squad_config.sh && cpu_demo)
#
# The dgxa100 presets carry the NVIDIA reference's numbers (BERT-large from phase 2's final step 1563,
# 8x A100 80GB, AdamW, 2 epochs, batch 32 per GPU, lr 4.6e-5, 20 % warm-up). The reference's tf32 preset
# said precision "amp" (so it ran fp16); ours says fp32, which runs TF32 matmuls on A100.
# Paths follow BERT_PREP_WORKING_DIR (default <repo>/data/download) and <repo>/results. The values are
# echoed unquoted and split by the caller's shell: paths must not contain spaces.
# Only functions are defined here: sourcing this file has no other effect.

_squad_config_repo() {
  (cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
}

# <precision>: the DGX A100 recipe.
_squad_config_dgxa100() {
  local repo prep
  repo=$(_squad_config_repo)
  prep=${BERT_PREP_WORKING_DIR:-$repo/data/download}
  local init_checkpoint=$repo/results/bert-large-uncased/phase2/1563 epochs=2 batch_size=32
  local learning_rate=4.6e-5 warmup_proportion=0.2 precision=$1 num_gpus=8 seed=1
  local squad_dir=$prep/squad/v1.1 vocab_file=$repo/vocab/bert-large-uncased-vocab.txt
  local out_dir=$repo/results mode=train_eval config_file=$repo/bert_configs/bert-large-uncased.json
  local max_steps=-1 enable_benchmark=false benchmark_steps=100 benchmark_warmup_steps=100 fuse_mha=true
  echo "$init_checkpoint" "$epochs" "$batch_size" "$learning_rate" "$warmup_proportion" "$precision" \
       "$num_gpus" "$seed" "$squad_dir" "$vocab_file" "$out_dir" "$mode" "$config_file" "$max_steps" \
       "$enable_benchmark" "$benchmark_steps" "$benchmark_warmup_steps" "$fuse_mha"
}

# Mixed precision: fp16 with dynamic loss scaling, fused attention.
dgxa100-80g_8gpu_amp() {
  _squad_config_dgxa100 amp
}

# Full precision (TF32 tensor cores on A100); fused attention is only used under amp, as the reference.
dgxa100-80g_8gpu_tf32() {
  _squad_config_dgxa100 fp32
}

# A CPU run of a few minutes: fine-tunes bert-tiny from the CPU pre-training demo (configs/pretrain_config.sh
# cpu_demo: results/bert-tiny/phase2/30, vocab demo_output/vocab.txt) for up to 100 updates of 8 windows of
# 384 tokens, one process, fp32, then predicts and scores the dev set. On the downloaded SQuAD v1.1 when it
# is in $BERT_PREP_WORKING_DIR/squad/v1.1, else on the embedded sample data/samples/squad (10 epochs).
# RESULTS_DIR and DEMO_DIR move results/ and demo_output/ (scripts/demo.sh OUTPUT_DIR sets both).
cpu_demo() {
  local repo prep
  repo=$(_squad_config_repo)
  prep=${BERT_PREP_WORKING_DIR:-$repo/data/download}
  local results=${RESULTS_DIR:-$repo/results} demo=${DEMO_DIR:-$repo/demo_output}
  local init_checkpoint=$results/bert-tiny/phase2/30 epochs=1 batch_size=8
  local learning_rate=5e-4 warmup_proportion=0.1 precision=fp32 num_gpus=1 seed=1
  local squad_dir=$prep/squad/v1.1 vocab_file=$demo/vocab.txt
  if [[ ! -f $squad_dir/train-v1.1.json ]]; then
    # No downloaded SQuAD: the embedded sample (27 training questions make 4 updates per epoch).
    squad_dir=$repo/data/samples/squad epochs=10
  fi
  local out_dir=$results mode=train_eval config_file=$repo/bert_configs/bert-tiny.json
  local max_steps=100 enable_benchmark=false benchmark_steps=100 benchmark_warmup_steps=100 fuse_mha=false
  echo "$init_checkpoint" "$epochs" "$batch_size" "$learning_rate" "$warmup_proportion" "$precision" \
       "$num_gpus" "$seed" "$squad_dir" "$vocab_file" "$out_dir" "$mode" "$config_file" "$max_steps" \
       "$enable_benchmark" "$benchmark_steps" "$benchmark_warmup_steps" "$fuse_mha"
}
