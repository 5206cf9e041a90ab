#!/usr/bin/env bash
# SQuAD fine-tuning / evaluation / prediction with run_squad.py, with the NVIDIA reference's 18 positional
# arguments in the reference's order.
#
# Usage (from anywhere; every argument is optional and positional):
#   bash scripts/run_squad.sh <init_checkpoint>                           # reference defaults (8 GPUs, amp)
#   bash scripts/run_squad.sh $(source configs/squad_config.sh && dgxa100-80g_8gpu_amp)
#   bash scripts/run_squad.sh $(source configs/squad_config.sh && dgxa100-80g_8gpu_tf32)
#   bash scripts/run_squad.sh $(source configs/squad_config.sh && cpu_demo)
#   DRY_RUN=1 bash scripts/run_squad.sh ...       # print the command instead of running it
#
# Positional arguments (defaults in brackets):
#    1 init_checkpoint [<repo>/checkpoints/squad]  --from-pretrained-params: our .pdparams / step dir, or a Hugging
#                                           Face model.safetensors (dir); for eval/prediction a fine-tuned one
#    2 epochs [2]                           3 batch_size [32]: per process, training and prediction
#    4 learning_rate [4.6e-5]               5 warmup_proportion [0.2]
#    6 precision [amp]: amp (fp16 + dynamic loss scaling) | bf16 | fp32 | tf32 (= fp32 ops)
#    7 num_gpus [8]: processes (> 1: paddle.distributed.launch)
#    8 seed [1]                             9 squad_dir [$BERT_PREP_WORKING_DIR/squad/v1.1]
#   10 vocab_file [<repo>/vocab/bert-large-uncased-vocab.txt] (relative paths: from the current directory)
#   11 out_dir [<repo>/results]: results go to <out_dir>/<bert_model>/squad/
#   12 mode [train_eval]: train | eval | prediction | train_eval
#   13 config_file [None = bert_configs/<bert_model>.json, or the init checkpoint's own config]
#   14 max_steps [-1 = epochs decide]       15 enable_benchmark [false]
#   16 benchmark_steps [100]                17 benchmark_warmup_steps [100]
#   18 fuse_mha [true]: --fuse-mha under amp/bf16 (as the reference)
#
# Environment knobs (not positional, so the 18 stay the reference's):
#   DEVICE=auto|cpu|gpu   --device (default auto); cpu with num_gpus > 1 uses launch --nproc_per_node (gloo)
#   PYTHON                interpreter (default: <repo>/.venv/bin/python if present, else python3)
#   DRY_RUN=1             print the command (shell-quoted, one line) on stdout and run nothing (the GPU
#                         check below is skipped: a dry run describes the command, not this machine); then
#                         list on stderr (`missing:` lines) the inputs a real run needs that are absent
#   REPLACE_MODEL=1       --replace-model: training into an output that holds a fine-tuned model moves the
#                         old directory aside (<dir>.superseded-<time>) instead of being refused
#   BERT_PREP_WORKING_DIR where squad/v1.1 lives (default <repo>/data/download)
#   BERT_MODEL            --bert-model (default: the config file's name when it is in bert_configs/, else
#                         custom; without a config file none is passed: run_squad.py names the model after
#                         the checkpoint's own config, else bert-large-uncased)
#   DO_LOWER_CASE=true|false  (default: false for *-cased models, else true)
#   SQUAD_VERSION=1.1|2.0 train/dev-v<version>.json; 2.0 adds --version-2-with-negative (default 1.1)
#   MAX_SEQ_LENGTH [384], DOC_STRIDE [128], MAX_QUERY_LENGTH [64], LOG_FREQ [100]
#
# Differences from the reference script, on purpose: arguments are checked first (one error line, exit 2),
# and so are the GPUs (DEVICE=gpu, or num_gpus > 1 with DEVICE=auto, needs that many visible GPUs);
# warmup_proportion is passed on (the reference dropped it); num_gpus is not limited to 1..8; EM/F1 are
# computed in-process (no --eval-script); out_dir defaults to <repo>/results instead of /results.
set -euo pipefail

PROG=run_squad.sh
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

(( $# <= 18 )) || die "expected at most 18 positional arguments, got $#"

init_checkpoint=${1:-$REPO_ROOT/checkpoints/squad}
epochs=${2:-2}
batch_size=${3:-32}
learning_rate=${4:-4.6e-5}
warmup_proportion=${5:-0.2}
precision=${6:-amp}
num_gpus=${7:-8}
seed=${8:-1}
squad_dir=${9:-$PREP_DIR/squad/v1.1}
vocab_file=${10:-$REPO_ROOT/vocab/bert-large-uncased-vocab.txt}
out_dir=${11:-$REPO_ROOT/results}
mode=${12:-train_eval}
config_file=${13:-None}
max_steps=${14:--1}
enable_benchmark=${15:-false}
benchmark_steps=${16:-100}
benchmark_warmup_steps=${17:-100}
fuse_mha=${18:-true}
DEVICE=${DEVICE:-auto}
DRY_RUN=${DRY_RUN:-0}
REPLACE_MODEL=${REPLACE_MODEL:-0}
SQUAD_VERSION=${SQUAD_VERSION:-1.1}

# ------------------------------------------------------------------------------------------ validation
need_int epochs 2 "$epochs" 1
need_int batch_size 3 "$batch_size" 1
need_float learning_rate 4 "$learning_rate" "x >= 0" ">= 0"
need_float warmup_proportion 5 "$warmup_proportion" "x >= 0" ">= 0"
case $precision in amp|bf16|fp32|tf32) ;; *) die "<precision> (argument 6) must be amp, bf16, fp32 or tf32, got '$precision'" ;; esac
need_int num_gpus 7 "$num_gpus" 1
need_int seed 8 "$seed" 0
case $mode in train|eval|prediction|train_eval) ;;
  *) die "<mode> (argument 12) must be train, eval, prediction or train_eval, got '$mode'" ;; esac
[[ $max_steps == -1 ]] || need_int max_steps 14 "$max_steps" 1
need_choice enable_benchmark 15 "$enable_benchmark" true false
need_int benchmark_steps 16 "$benchmark_steps" 1
need_int benchmark_warmup_steps 17 "$benchmark_warmup_steps" 0
need_choice fuse_mha 18 "$fuse_mha" true false
case $DEVICE in auto|cpu|gpu) ;; *) die "DEVICE must be auto, cpu or gpu, got '$DEVICE'" ;; esac
need_choice REPLACE_MODEL env "$REPLACE_MODEL" 0 1
case $SQUAD_VERSION in 1.1|2.0) ;; *) die "SQUAD_VERSION must be 1.1 or 2.0, got '$SQUAD_VERSION'" ;; esac

bert_model=$(bert_model_for "$config_file")
DO_LOWER_CASE=$(lower_case_for "$bert_model")

PYTHON=${PYTHON:-$(default_python "$REPO_ROOT")}

# ------------------------------------------------------------------------------------------ command
launcher_for "$PYTHON" "$num_gpus" "$DEVICE"
cmd=("${launcher[@]}" "$REPO_ROOT/run_squad.py" "--from-pretrained-params=$init_checkpoint" "--mode=$mode")
train_file=$squad_dir/train-v$SQUAD_VERSION.json
predict_file=$squad_dir/dev-v$SQUAD_VERSION.json
[[ $mode == train || $mode == train_eval ]] && cmd+=("--train-file=$train_file")
[[ $mode == train ]] || cmd+=("--predict-file=$predict_file")
cmd+=("--train-batch-size=$batch_size" "--predict-batch-size=$batch_size")
[[ $SQUAD_VERSION == 2.0 ]] && cmd+=(--version-2-with-negative)
[[ $DO_LOWER_CASE == true ]] && cmd+=(--do-lower-case)
[[ -n $bert_model ]] && cmd+=("--bert-model=$bert_model")
cmd+=("--learning-rate=$learning_rate" "--warmup-proportion=$warmup_proportion"
      "--seed=$seed" "--epochs=$epochs" "--max-seq-length=${MAX_SEQ_LENGTH:-384}"
      "--doc-stride=${DOC_STRIDE:-128}" "--max-query-length=${MAX_QUERY_LENGTH:-64}" "--output-dir=$out_dir" "--vocab-file=$vocab_file")
[[ $config_file == None ]] || cmd+=("--config-file=$config_file")
cmd+=("--max-steps=$max_steps" --optimizer=AdamW "--log-freq=${LOG_FREQ:-100}" "--device=$DEVICE")
[[ $REPLACE_MODEL == 1 ]] && cmd+=(--replace-model)
case $precision in
  amp) cmd+=(--amp --use-dynamic-loss-scaling --scale-loss=128.0) ;;
  bf16) cmd+=(--amp --amp-dtype=bfloat16) ;;
esac
[[ $fuse_mha == true && ( $precision == amp || $precision == bf16 ) ]] && cmd+=(--fuse-mha)
if [[ $enable_benchmark == true ]]; then
  cmd+=(--benchmark "--benchmark-steps=$benchmark_steps" "--benchmark-warmup-steps=$benchmark_warmup_steps")
fi
cmd+=("--report-file=$out_dir/dllogger_${num_gpus}_${precision}.json")

if [[ $DRY_RUN == 1 ]]; then
  print_command "${cmd[@]}"
  # A real run leaves these checks to run_squad.py (its errors name the flag); a dry run lists them all.
  [[ -e $init_checkpoint ]] || need "<init_checkpoint> (argument 1) '$init_checkpoint' does not exist" \
    "(a phase-2 step dir such as results/<model>/phase2/<step>, or a fine-tuned SQuAD dir)"
  if [[ $mode == train || $mode == train_eval ]]; then
    [[ -f $train_file ]] || need "training file '$train_file' does not exist (python -m data.prep.download squad," \
      "or <squad_dir> (argument 9) data/samples/squad for the embedded sample)"
  fi
  if [[ $mode != train ]]; then
    [[ -f $predict_file ]] || need "dev file '$predict_file' does not exist (python -m data.prep.download squad)"
  fi
  [[ -f $vocab_file ]] || need "<vocab_file> (argument 10) '$vocab_file' does not exist" \
    "(python -m data.prep.download vocab --vocab-dir vocab)"
  [[ $config_file == None || -f $config_file ]] || need "<config_file> (argument 13) '$config_file' does not exist"
  report_missing
  exit 0
fi
need_gpus "$PYTHON" "$num_gpus" "$DEVICE" "<num_gpus> (argument 7)" \
  'the CPU preset: bash scripts/run_squad.sh $(source configs/squad_config.sh && cpu_demo) (or DEVICE=cpu)'
mkdir -p "$out_dir"
printf '%s: running:' "$PROG" >&2; printf ' %q' "${cmd[@]}" >&2; printf '\n' >&2
"${cmd[@]}" 2>&1 | tee "$out_dir/logfile.txt"
