# shellcheck shell=bash
# Preset argument lists for scripts/run_pretraining.sh: each function echoes its 32 positional values.
#
#   bash scripts/run_pretraining.sh $(source configs/pretrain_config.sh && dgxa100-80g_8gpu_amp)
#   bash scripts/run_pretraining.sh $(source configs/pretrain_config.sh && dgxa100-80g_8gpu_tf32)
#   bash scripts/run_pretraining.sh $(source configs/pretrain_config.sh && cpu_demo)
# (scripts/configs/pretrain_config.sh sources this file, for the reference's paths.)
#
# The dgxa100 presets carry the NVIDIA reference's numbers (BERT-large, 8x A100 80GB, LAMB; global batch
# 65536 in phase 1 and 32768 in phase 2). Their data paths follow BERT_PREP_WORKING_DIR (default
# <repo>/data/download, where data/create_datasets_from_start.sh puts the Wikipedia source).
# The values are echoed unquoted and split by the caller's shell: paths must not contain spaces.
# Only functions are defined here: sourcing this file has no other effect.

_pretrain_config_repo() {
  (cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
}

# Echo the 32 positional values, in run_pretraining.sh's order, from the caller's local variables
# (bash functions see their caller's locals).
_pretrain_config_echo() {
  echo "$train_batch_size" "$learning_rate" "$precision" "$num_gpus" "$warmup_proportion" \
       "$train_steps" "$save_checkpoint_steps" "$create_logfile" "$gradient_accumulation_steps" \
       "$seed" "$job_name" "$train_batch_size_phase2" "$learning_rate_phase2" \
       "$warmup_proportion_phase2" "$train_steps_phase2" "$gradient_accumulation_steps_phase2" \
       "$data_dir_phase1" "$data_dir_phase2" "$code_dir" "$init_checkpoint" "$wikipedia_source" \
       "$num_dask_workers" "$num_shards_per_worker" "$num_workers" "$sample_ratio" "$phase2_bin_size" \
       "$masking" "$bert_config" "$enable_benchmark" "$benchmark_steps" "$benchmark_warmup_steps" \
       "$fuse_mha"
}

# <train_batch_size> <gradient_accumulation_steps> <batch_size_phase2> <gradient_accumulation_phase2>
# <precision> <fuse_mha>: the DGX A100 recipe with the per-precision batch split.
_pretrain_config_dgxa100() {
  local repo prep
  repo=$(_pretrain_config_repo)
  prep=${BERT_PREP_WORKING_DIR:-$repo/data/download}
  local train_batch_size=$1 learning_rate=6e-3 precision=$5 num_gpus=8 warmup_proportion=0.2843
  local train_steps=7038 save_checkpoint_steps=200 create_logfile=false gradient_accumulation_steps=$2
  local seed=42 job_name=bert_lamb_pretraining
  local train_batch_size_phase2=$3 learning_rate_phase2=4e-3 warmup_proportion_phase2=0.128
  local train_steps_phase2=1563 gradient_accumulation_steps_phase2=$4
  local data_dir_phase1=$prep/pretrain/phase1/unbinned/parquet
  local data_dir_phase2=$prep/pretrain/phase2/bin_size_64/parquet
  local code_dir=$repo init_checkpoint=None wikipedia_source=$prep/wikipedia/source
  local num_dask_workers=128 num_shards_per_worker=128 num_workers=4 sample_ratio=0.9
  local phase2_bin_size=64 masking=static bert_config=$repo/bert_configs/bert-large-uncased.json
  local enable_benchmark=false benchmark_steps=10 benchmark_warmup_steps=10 fuse_mha=$6
  _pretrain_config_echo
}

# Mixed precision (fp16 + dynamic loss scaling), cuDNN fused attention.
dgxa100-80g_8gpu_amp() {
  _pretrain_config_dgxa100 256 32 32 128 amp true
}

# TF32: half the micro-batch, twice the accumulation (same global batch). The reference enabled fused
# attention only under amp, so it stays off here.
dgxa100-80g_8gpu_tf32() {
  _pretrain_config_dgxa100 128 64 16 256 tf32 false
}

# A few minutes on a 2-core CPU, offline: bert-tiny, fp32, one process, on the embedded sample corpus
# (stdlib docstrings, built with its own 8192-token vocab in demo_output/ on first use, as
# scripts/demo.sh does). Checkpoints and reports go to results/bert-tiny/ (run_pretraining.sh's
# RESULTS_DIR moves them; DEMO_DIR moves demo_output/).
cpu_demo() {
  local repo
  repo=$(_pretrain_config_repo)
  local demo=${DEMO_DIR:-$repo/demo_output}
  local train_batch_size=32 learning_rate=1e-2 precision=fp32 num_gpus=1 warmup_proportion=0.1
  local train_steps=120 save_checkpoint_steps=40 create_logfile=false gradient_accumulation_steps=1
  local seed=42 job_name=bert_cpu_demo
  local train_batch_size_phase2=8 learning_rate_phase2=5e-3 warmup_proportion_phase2=0.1
  local train_steps_phase2=30 gradient_accumulation_steps_phase2=1
  local data_dir_phase1=$demo/pretrain/phase1/unbinned/parquet
  local data_dir_phase2=$demo/pretrain/phase2/bin_size_64/parquet
  local code_dir=$repo init_checkpoint=None wikipedia_source=sample:$demo/source
  local num_dask_workers=2 num_shards_per_worker=4 num_workers=1 sample_ratio=0.9
  local phase2_bin_size=64 masking=static bert_config=$repo/bert_configs/bert-tiny.json
  local enable_benchmark=false benchmark_steps=10 benchmark_warmup_steps=10 fuse_mha=false
  _pretrain_config_echo
}
