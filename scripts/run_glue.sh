#!/usr/bin/env bash
# GLUE fine-tuning / evaluation / test prediction with run_glue.py, with the NVIDIA PyTorch seed's 15 positional
# arguments in the seed's order.
#
# Usage (from anywhere; every argument is optional and positional):
#   bash scripts/run_glue.sh <init_checkpoint>                                   # seed defaults (MRPC, 8 GPUs, fp16)
#   bash scripts/run_glue.sh $(source configs/glue_config.sh && mrpc_dgxa100_8gpu_fp16)    # or _tf32
#   bash scripts/run_glue.sh $(source configs/glue_config.sh && sst-2_dgxa100_8gpu_fp16)   # or _tf32
#   bash scripts/run_glue.sh $(source configs/glue_config.sh && mrpc_cpu)        # real MRPC on CPU (MiniLM)
#   bash scripts/run_glue.sh $(source configs/glue_config.sh && mrpc_cpu_demo)   # CPU, minutes (bert-tiny)
#   DRY_RUN=1 bash scripts/run_glue.sh ...       # print the command instead of running it
#
# Positional arguments (defaults in brackets):
#    1 init_checkpoint [checkpoints/bert-large-uncased]  --from-pretrained-params (train) or --from-checkpoint
#                      (modes without train): our .pdparams / step dir / phase dir, or a Hugging Face model dir
#    2 data_dir [$BERT_PREP_WORKING_DIR/glue/MRPC]   the task's train/dev/test .tsv files
#    3 vocab_file [vocab/bert-large-uncased-vocab.txt]
#    4 config_file [None = bert_configs/<bert_model>.json, or the checkpoint's own config]
#    5 out_dir [<repo>/results]: results go to <out_dir>/<bert_model>/glue/<Task>/
#    6 task_name [mrpc]: cola sst-2 mrpc sts-b qqp mnli qnli rte wnli (any case)
#    7 num_gpus [8]: processes (> 1: paddle.distributed.launch)
#    8 batch_size [16]: per GPU and update, as the seed: each micro-batch is batch_size / grad_accumulation
#    9 gradient_accumulation_steps [1]      10 learning_rate [2.4e-5]      11 warmup_proportion [0.1]
#   12 epochs [3]                           13 precision [fp16]: fp16 (AMP, dynamic loss scaling) | bf16 | fp32 | tf32
#   14 seed [2]
#   15 mode [train eval]: train, eval, prediction or a combination; the words may be separate arguments
#      ("train eval" unquoted, as the config functions echo it) or joined with _ (train_eval_prediction)
#
# Environment knobs (not positional, so the 15 stay the seed's):
#   DEVICE=auto|cpu|gpu   --device (default auto); cpu with num_gpus > 1 uses launch --nproc_per_node (gloo)
#   PYTHON                interpreter (default: <repo>/.venv/bin/python if present, else python3)
#   DRY_RUN=1             print the command (shell-quoted, one line) on stdout, list on stderr (`missing:`)
#                         the inputs a real run needs that are absent, and run nothing (the GPU check
#                         below is skipped: a dry run describes the command, not this machine); a real run
#                         checks the GPUs, then lists the same absent inputs and stops (exit 2)
#   REPLACE_MODEL=1       --replace-model: training into an output that holds a fine-tuned model moves the
#                         old directory aside (<dir>.superseded-<time>) instead of being refused
#   BERT_PREP_WORKING_DIR where glue/<Task> lives (default <repo>/data/download)
#   BERT_MODEL            --bert-model (default: the config file's name when it is in bert_configs/, else custom;
#                         without a config file none is passed: run_glue.py names the model after the
#                         checkpoint's own config (custom for a Hugging Face one), else bert-large-uncased)
#   DO_LOWER_CASE=true|false (default: false for *-cased models, else true)
#   MAX_SEQ_LENGTH [128], EVAL_BATCH_SIZE [batch_size], MAX_STEPS [-1 = epochs decide], LOG_FREQ [10]
#
# Differences from the seed's script, on purpose: arguments are checked first (one error line, exit 2), and so
# are the GPUs (DEVICE=gpu, or num_gpus > 1 with DEVICE=auto, needs that many visible GPUs); `prediction`
# writes GLUE's submission file for test.tsv; out_dir defaults to <repo>/results.
set -euo pipefail

PROG=run_glue.sh
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

init_checkpoint=${1:-checkpoints/bert-large-uncased}
data_dir=${2:-$PREP_DIR/glue/MRPC}
vocab_file=${3:-vocab/bert-large-uncased-vocab.txt}
config_file=${4:-None}
out_dir=${5:-$REPO_ROOT/results}
task_name=${6:-mrpc}
num_gpus=${7:-8}
batch_size=${8:-16}
gradient_accumulation_steps=${9:-1}
learning_rate=${10:-2.4e-5}
warmup_proportion=${11:-0.1}
epochs=${12:-3}
precision=${13:-fp16}
seed=${14:-2}
if (( $# >= 15 )); then mode="${*:15}"; else mode="train eval"; fi
DEVICE=${DEVICE:-auto}
DRY_RUN=${DRY_RUN:-0}
REPLACE_MODEL=${REPLACE_MODEL:-0}
MAX_STEPS=${MAX_STEPS:--1}

# ------------------------------------------------------------------------------------------ validation
case ${task_name,,} in cola|sst-2|sst2|mrpc|sts-b|stsb|qqp|mnli|qnli|rte|wnli) ;;
  *) die "<task_name> (argument 6) must be one of cola sst-2 mrpc sts-b qqp mnli qnli rte wnli, got '$task_name'" ;; esac
need_int num_gpus 7 "$num_gpus" 1
need_int batch_size 8 "$batch_size" 1
need_int gradient_accumulation_steps 9 "$gradient_accumulation_steps" 1
(( batch_size % gradient_accumulation_steps == 0 )) ||
  die "<batch_size> (argument 8, $batch_size) must be a multiple of <gradient_accumulation_steps> (argument 9," \
      "$gradient_accumulation_steps): each micro-batch is batch_size / gradient_accumulation_steps"
need_float learning_rate 10 "$learning_rate" "x > 0" "> 0"
need_float warmup_proportion 11 "$warmup_proportion" "x >= 0 && x <= 1" "in [0, 1]"
need_int epochs 12 "$epochs" 1
case $precision in fp16|bf16|fp32|tf32) ;; *) die "<precision> (argument 13) must be fp16, bf16, fp32 or tf32, got '$precision'" ;; esac
need_int seed 14 "$seed" 0
mode_words=" ${mode//_/ } "
for word in $mode_words; do
  case $word in train|eval|prediction) ;;
    *) die "<mode> (argument 15) must be train, eval, prediction or a combination (e.g. 'train eval'), got '$mode'" ;;
  esac
done
[[ $MAX_STEPS == -1 ]] || need_int MAX_STEPS env "$MAX_STEPS" 1
case $DEVICE in auto|cpu|gpu) ;; *) die "DEVICE must be auto, cpu or gpu, got '$DEVICE'" ;; esac
need_choice REPLACE_MODEL env "$REPLACE_MODEL" 0 1

bert_model=$(bert_model_for "$config_file")
DO_LOWER_CASE=$(lower_case_for "$bert_model")

PYTHON=${PYTHON:-$(default_python "$REPO_ROOT")}

# ------------------------------------------------------------------------------------------ command
launcher_for "$PYTHON" "$num_gpus" "$DEVICE"
mode_arg=$(echo $mode_words | tr ' ' '_')
# Training starts from a pretrained encoder; eval / prediction alone need a fine-tuned model (with its classifier).
if [[ $mode_words == *" train "* ]]; then init_flag=--from-pretrained-params; else init_flag=--from-checkpoint; fi
cmd=("${launcher[@]}" "$REPO_ROOT/run_glue.py" "--task-name=$task_name" "--data-dir=$data_dir"
     "$init_flag=$init_checkpoint" "--mode=$mode_arg" "--vocab-file=$vocab_file"
     "--output-dir=$out_dir" "--train-batch-size=$((batch_size / gradient_accumulation_steps))"
     "--gradient-merge-steps=$gradient_accumulation_steps" "--eval-batch-size=${EVAL_BATCH_SIZE:-$batch_size}"
     "--learning-rate=$learning_rate" "--warmup-proportion=$warmup_proportion" "--epochs=$epochs"
     "--max-steps=$MAX_STEPS" "--seed=$seed" "--max-seq-length=${MAX_SEQ_LENGTH:-128}"
     "--log-freq=${LOG_FREQ:-10}" --optimizer=AdamW "--device=$DEVICE")
[[ -n $bert_model ]] && cmd+=("--bert-model=$bert_model")
[[ $DO_LOWER_CASE == true ]] && cmd+=(--do-lower-case)
[[ $config_file == None ]] || cmd+=("--config-file=$config_file")
[[ $REPLACE_MODEL == 1 ]] && cmd+=(--replace-model)
case $precision in
  fp16) cmd+=(--amp --use-dynamic-loss-scaling) ;;
  bf16) cmd+=(--amp --amp-dtype=bfloat16) ;;
esac
cmd+=("--report-file=$out_dir/dllogger_glue_${task_name,,}_${num_gpus}_${precision}.json")

# The inputs, all listed at once (a dry run after its command, a real run before stopping): run_glue.py would
# name only the first. A real run says first when the GPUs are missing, as that decides which preset to use.
check_inputs() {
  [[ -e $init_checkpoint ]] || missing+=("<init_checkpoint> (argument 1) '$init_checkpoint' does not exist")
  [[ -d $data_dir ]] ||
    missing+=("<data_dir> (argument 2) '$data_dir' does not exist (python -m data.prep.download glue)")
  [[ -f $vocab_file ]] || missing+=("<vocab_file> (argument 3) '$vocab_file' does not exist")
  [[ $config_file == None || -f $config_file ]] ||
    missing+=("<config_file> (argument 4) '$config_file' does not exist")
}
if [[ $DRY_RUN == 1 ]]; then
  print_command "${cmd[@]}"
  check_inputs
  report_missing
  exit 0
fi
need_gpus "$PYTHON" "$num_gpus" "$DEVICE" "<num_gpus> (argument 7)" \
  'a CPU preset: bash scripts/run_glue.sh $(source configs/glue_config.sh && mrpc_cpu) (or mrpc_cpu_demo, '\
'or DEVICE=cpu)'
check_inputs
stop_if_missing
mkdir -p "$out_dir"
printf '%s: running:' "$PROG" >&2; printf ' %q' "${cmd[@]}" >&2; printf '\n' >&2
"${cmd[@]}" 2>&1 | tee "$out_dir/logfile_glue_${task_name,,}.txt"
