#!/usr/bin/env bash
# Two-phase BERT pre-training on one node: data preparation when the shards are missing, phase 1
# (sequence length 128), then phase 2 (sequence length 512) started from phase 1's final step.
#
# Usage (from the repo root; every argument is optional and positional, in the NVIDIA reference's order):
#   bash scripts/run_pretraining.sh                                       # reference defaults (8 GPUs, amp)
#   bash scripts/run_pretraining.sh $(source configs/pretrain_config.sh && dgxa100-80g_8gpu_amp)
#   bash scripts/run_pretraining.sh $(source configs/pretrain_config.sh && cpu_demo)   # CPU, minutes
#   DRY_RUN=1 bash scripts/run_pretraining.sh ...     # print every command instead of running it
#
# Positional arguments (defaults in brackets):
#    1 train_batch_size [256]            per-process micro-batch, phase 1
#    2 learning_rate [6e-3]              3 precision [amp]: amp | fp32 | tf32 | bf16
#    4 num_gpus [8]                      processes on this node (> 1: paddle.distributed.launch)
#    5 warmup_proportion [0.2843]        6 train_steps [7038]        7 save_checkpoint_steps [200]
#    8 create_logfile [false]            tee each phase's output to results/<job_name>.<tag>.<date>.log
#    9 gradient_accumulation_steps [32]  10 seed [12439]             11 job_name [bert_lamb_pretraining]
#   12 train_batch_size_phase2 [32]      13 learning_rate_phase2 [4e-3]
#   14 warmup_proportion_phase2 [0.128]  15 train_steps_phase2 [1563]
#   16 gradient_accumulation_steps_phase2 [128]
#   17 dataset_dir_phase1 [$BERT_PREP_WORKING_DIR/pretrain/phase1/unbinned/parquet]
#   18 dataset_dir_phase2 [$BERT_PREP_WORKING_DIR/pretrain/phase2/bin_size_64/parquet]
#   19 code_dir [this repository]        where run_pretraining.py is; commands run from there
#   20 init_checkpoint [None]            phase-1 checkpoint folder to resume from, default
#                                        <results>/<model>/phase1 (see below)
#   21 wikipedia_source [$BERT_PREP_WORKING_DIR/wikipedia/source]
#                                        a directory of `<doc_id> <text>` files (what data.prep.wikipedia
#                                        and data.prep.sample_corpus write), or `sample:DIR`: the offline
#                                        embedded corpus, created in DIR (and a vocab DIR/../vocab.txt)
#                                        when missing
#   22 num_dask_workers [nproc]          23 num_shards_per_worker [128]    24 num_workers [4] (loader)
#   25 sample_ratio [0.9]                26 phase2_bin_size [64]: none | 32 | 64 | 128 | 256 | 512
#   27 masking [static]: static | dynamic
#   28 bert_config_file [None = bert-large-uncased]
#   29 enable_benchmark [false]          30 benchmark_steps [10]     31 benchmark_warmup_steps [10]
#   32 fuse_mha [true]                   --fuse-mha in both phases
#
# Environment knobs (not positional, so the 32 stay the reference's):
#   DEVICE=auto|cpu|gpu   passed as --device (default auto). With cpu and num_gpus > 1, the processes are
#                         started with `launch --nproc_per_node` (gloo) instead of `launch --gpus`.
#   PYTHON                interpreter (default: <code_dir>/.venv/bin/python if present, else python3)
#   DRY_RUN=1             print each command (one per line, shell-quoted) on stdout; run nothing; then
#                         list on stderr (`missing:` lines) what a real run would need that is absent
#   BERT_PREP_WORKING_DIR where the default data paths live (default: <repo>/data/download)
#   RESULTS_DIR           checkpoints, reports and log files (default: <code_dir>/results)
#   VOCAB_FILE            default <code_dir>/vocab/bert-large-uncased-vocab.txt (sample: DIR/../vocab.txt)
#   BERT_MODEL            --bert-model; default: the config file's name when it is one of
#                         bert_configs/*.json, else custom (bert-large-uncased without a config file)
#   KEEP_CHECKPOINTS, SEQUENCE_LENGTH_ALIGNMENT   passed on as --keep-checkpoints / --sequence-length-
#                         alignment when set (run_pretraining.py's defaults otherwise)
#   STEPS_THIS_RUN        at most this many updates per phase in this invocation (--steps-this-run): the
#                         phase saves a checkpoint and the script exits 0 without starting phase 2 while
#                         phase 1 is unfinished; run the same command again to continue exactly
#   EVAL_DIR_PHASE1, EVAL_DIR_PHASE2   held-out shards for that phase's validation (--eval-dir; e.g. the
#                         preprocessing's --holdout-sink), with NUM_EVAL_BATCHES / EVAL_FREQ when set
#
# Data preparation (only for a phase whose dataset dir is missing or empty): data.prep.preprocess_bert_pretrain
# (phase 1 unbinned at 128 tokens, 20 predictions; phase 2 at 512 tokens, 80 predictions, binned by
# phase2_bin_size) with num_dask_workers local Dask workers, then data.prep.balance_dask_output into
# num_shards_per_worker * max(num_workers, 1) * num_gpus shards.
#
# Resuming: each phase runs with --from-checkpoint <phase dir> --last-step-of-checkpoint auto, so running
# the same command again continues where it stopped; phase 2 starts from
# <results>/<model>/phase1/<train_steps> (--from-phase1-final-params) when it has no checkpoint yet.
# Whether phase 1 holds a checkpoint of its own (then <init_checkpoint> no longer seeds it) or has reached
# <train_steps> (STEPS_THIS_RUN) is asked of `python -m tasks.launch_query latest-step`, which counts a
# checkpoint exactly as run_pretraining.py does; the log files' gbs comes from its `global-batch`.
# Benchmark runs (enable_benchmark=true) neither resume nor load phase 1's weights: they time steps from
# random weights and write no checkpoint.
#
# Differences from the reference script, on purpose: arguments are checked before anything runs (one
# error line, exit 2); phase 2 also gets --fuse-mha and resumes; bf16 is accepted; paths may contain
# spaces; a missing corpus stops the script (the reference's `return -1` outside a function did not).
set -euo pipefail

PROG=run_pretraining.sh
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

(( $# <= 32 )) || die "expected at most 32 positional arguments, got $#"

train_batch_size=${1:-256}
learning_rate=${2:-6e-3}
precision=${3:-amp}
num_gpus=${4:-8}
warmup_proportion=${5:-0.2843}
train_steps=${6:-7038}
save_checkpoint_steps=${7:-200}
create_logfile=${8:-false}
gradient_accumulation_steps=${9:-32}
seed=${10:-12439}
job_name=${11:-bert_lamb_pretraining}
train_batch_size_phase2=${12:-32}
learning_rate_phase2=${13:-4e-3}
warmup_proportion_phase2=${14:-0.128}
train_steps_phase2=${15:-1563}
gradient_accumulation_steps_phase2=${16:-128}
data_dir_phase1=${17:-$PREP_DIR/pretrain/phase1/unbinned/parquet}
data_dir_phase2=${18:-$PREP_DIR/pretrain/phase2/bin_size_64/parquet}
code_dir=${19:-$REPO_ROOT}
init_checkpoint=${20:-None}
wikipedia_source=${21:-$PREP_DIR/wikipedia/source}
num_dask_workers=${22:-$(nproc)}
num_shards_per_worker=${23:-128}
num_workers=${24:-4}
sample_ratio=${25:-0.9}
phase2_bin_size=${26:-64}
masking=${27:-static}
bert_config=${28:-None}
enable_benchmark=${29:-false}
benchmark_steps=${30:-10}
benchmark_warmup_steps=${31:-10}
fuse_mha=${32:-true}
DEVICE=${DEVICE:-auto}
DRY_RUN=${DRY_RUN:-0}

# ------------------------------------------------------------------------------------------ validation
need_int train_batch_size 1 "$train_batch_size" 1
need_float learning_rate 2 "$learning_rate" "x > 0" "> 0"
need_choice precision 3 "$precision" amp fp32 tf32 bf16
need_int num_gpus 4 "$num_gpus" 1
need_float warmup_proportion 5 "$warmup_proportion" "x >= 0 && x <= 1" "in [0, 1]"
need_int train_steps 6 "$train_steps" 1
need_int save_checkpoint_steps 7 "$save_checkpoint_steps" 1
need_choice create_logfile 8 "$create_logfile" true false
need_int gradient_accumulation_steps 9 "$gradient_accumulation_steps" 1
need_int seed 10 "$seed" 0
[[ $job_name =~ ^[A-Za-z0-9._-]+$ ]] || die "<job_name> (argument 11) must match [A-Za-z0-9._-]+, got '$job_name'"
need_int train_batch_size_phase2 12 "$train_batch_size_phase2" 1
need_float learning_rate_phase2 13 "$learning_rate_phase2" "x > 0" "> 0"
need_float warmup_proportion_phase2 14 "$warmup_proportion_phase2" "x >= 0 && x <= 1" "in [0, 1]"
need_int train_steps_phase2 15 "$train_steps_phase2" 1
need_int gradient_accumulation_steps_phase2 16 "$gradient_accumulation_steps_phase2" 1
need_int num_dask_workers 22 "$num_dask_workers" 1
need_int num_shards_per_worker 23 "$num_shards_per_worker" 1
need_int num_workers 24 "$num_workers" 0
need_float sample_ratio 25 "$sample_ratio" "x > 0 && x <= 1" "in (0, 1]"
need_choice phase2_bin_size 26 "$phase2_bin_size" none 32 64 128 256 512
need_choice masking 27 "$masking" static dynamic
need_choice enable_benchmark 29 "$enable_benchmark" true false
need_int benchmark_steps 30 "$benchmark_steps" 1
need_int benchmark_warmup_steps 31 "$benchmark_warmup_steps" 0
need_choice fuse_mha 32 "$fuse_mha" true false
[[ $DEVICE == auto || $DEVICE == cpu || $DEVICE == gpu ]] || die "DEVICE must be auto, cpu or gpu, got '$DEVICE'"
[[ -z ${KEEP_CHECKPOINTS:-} || ${KEEP_CHECKPOINTS} =~ ^[0-9]+$ ]] ||
  die "KEEP_CHECKPOINTS must be an integer, got '${KEEP_CHECKPOINTS}'"
[[ -z ${SEQUENCE_LENGTH_ALIGNMENT:-} || ${SEQUENCE_LENGTH_ALIGNMENT} =~ ^[0-9]+$ ]] ||
  die "SEQUENCE_LENGTH_ALIGNMENT must be an integer, got '${SEQUENCE_LENGTH_ALIGNMENT}'"
for knob in STEPS_THIS_RUN NUM_EVAL_BATCHES EVAL_FREQ; do
  [[ -z ${!knob:-} || ${!knob} =~ ^[1-9][0-9]*$ ]] || die "$knob must be an integer > 0, got '${!knob}'"
done

# Absolute paths: every command below runs from code_dir (so `python -m data.*` imports work), and the
# printed commands mean the same wherever they are pasted.
absolute() {
  local p=$1
  [[ $p == /* ]] || p=$PWD/$p
  while [[ $p == */./* ]]; do p=${p//\/.\//\/}; done
  p=${p%/.}
  [[ $p == / ]] || p=${p%/}
  printf '%s' "$p"
}
code_dir=$(absolute "$code_dir")
data_dir_phase1=$(absolute "$data_dir_phase1")
data_dir_phase2=$(absolute "$data_dir_phase2")
[[ -f $code_dir/run_pretraining.py ]] || die "<code_dir> (argument 19) has no run_pretraining.py: '$code_dir'"
[[ $init_checkpoint == None ]] || init_checkpoint=$(absolute "$init_checkpoint")
if [[ $bert_config != None ]]; then
  bert_config=$(absolute "$bert_config")
  [[ -f $bert_config ]] || die "<bert_config_file> (argument 28) does not exist: '$bert_config'"
fi
sample_dir=""
if [[ $wikipedia_source == sample:* ]]; then
  sample_dir=$(absolute "${wikipedia_source#sample:}")
  [[ -n ${wikipedia_source#sample:} ]] || die "<wikipedia_source> (argument 21) 'sample:' needs a directory"
  wikipedia_source=$sample_dir
  default_vocab=$(dirname "$sample_dir")/vocab.txt
else
  wikipedia_source=$(absolute "$wikipedia_source")
  default_vocab=$code_dir/vocab/bert-large-uncased-vocab.txt
fi
VOCAB_FILE=$(absolute "${VOCAB_FILE:-$default_vocab}")
RESULTS_DIR=$(absolute "${RESULTS_DIR:-$code_dir/results}")

if [[ -n ${BERT_MODEL:-} ]]; then
  bert_model=$BERT_MODEL
elif [[ $bert_config == None ]]; then
  bert_model=bert-large-uncased
else
  bert_model=$(basename "$bert_config" .json)
  case $bert_model in
    bert-base-cased|bert-base-uncased|bert-large-cased|bert-large-uncased|bert-mini|bert-tiny) ;;
    *) bert_model=custom ;;
  esac
fi

PYTHON=${PYTHON:-$(default_python "$code_dir")}

# GPUs first: on a machine without them no data would help, and the line names the CPU preset to use instead.
gpu_hint='the CPU preset: bash scripts/run_pretraining.sh $(source configs/pretrain_config.sh && cpu_demo)'\
' (or DEVICE=cpu)'
[[ $DRY_RUN == 1 ]] || need_gpus "$PYTHON" "$num_gpus" "$DEVICE" "<num_gpus> (argument 4)" "$gpu_hint" early

dir_is_empty() { [[ ! -d $1 ]] || [[ -z $(ls -A "$1") ]]; }
needs_prep1=false; needs_prep2=false
dir_is_empty "$data_dir_phase1" && needs_prep1=true
dir_is_empty "$data_dir_phase2" && needs_prep2=true
if [[ -z $sample_dir ]] && { $needs_prep1 || $needs_prep2; } && dir_is_empty "$wikipedia_source"; then
  need "<wikipedia_source> (argument 21) '$wikipedia_source' is missing or empty, and the shards must be" \
      "built because a dataset dir is missing or empty (phase 1: '$data_dir_phase1'," \
      "phase 2: '$data_dir_phase2'); run data/create_datasets_from_start.sh or give sample:DIR"
fi
[[ -f $VOCAB_FILE || -n $sample_dir ]] || need "vocab file '$VOCAB_FILE' does not exist (set VOCAB_FILE" \
  "or run data/create_datasets_from_start.sh)"

# ------------------------------------------------------------------------------------------ commands

# Rules Python owns (the global batch, what counts as a checkpoint) are asked of tasks.launch_query, from
# code_dir so that `-m` finds it; its answer is on stdout, and a status other than 0 means no answer.
query() {  # <verb> <argument>...
  (cd "$code_dir" && "$PYTHON" -m tasks.launch_query "$@")
}

latest_step() {  # <phase dir>: its newest complete checkpoint step, or nothing when it has none
  [[ -d $1 ]] || return 0  # nothing to ask (and a dry run on a fresh clone needs no Python)
  query latest-step "$1"
}

# Logs of a phase go to a file too when create_logfile is true; the exit status is the command's.
run_logged() {  # <phase> <batch size> <gradient-merge steps> <command>...
  local phase=$1 batch_size=$2 merge_steps=$3 gbs logfile
  shift 3
  if [[ $create_logfile != true || $DRY_RUN == 1 ]]; then run "$@"; return; fi
  gbs=$(query global-batch --batch-size "$batch_size" --gradient-merge-steps "$merge_steps" \
        --processes "$num_gpus") || die "cannot name phase $phase's log file: $PYTHON -m tasks.launch_query" \
    "global-batch failed (see above)"
  logfile=$RESULTS_DIR/$job_name.paddle_bert_pretraining_phase${phase}_${precision}_gbs${gbs}.$(date +%y%m%d%H%M%S).log
  printf '%s: logs written to %s\n' "$PROG" "$logfile" >&2
  run "$@" 2>&1 | tee "$logfile"
}

num_blocks=$(( num_shards_per_worker * (num_workers > 0 ? num_workers : 1) * num_gpus ))
masking_flag=(); [[ $masking == static ]] && masking_flag=(--masking)

# The embedded corpus and its vocab, as scripts/demo.sh builds them (the two share demo_output/).
ensure_sample_corpus() {
  [[ -n $sample_dir ]] || return 0
  if dir_is_empty "$sample_dir"; then
    local overwrite=(); [[ -d $sample_dir ]] && overwrite=(--overwrite)
    run "$PYTHON" -m data.prep.sample_corpus --output-dir "$sample_dir" "${overwrite[@]}" --num-files 4 \
      --max-bytes 3000000
  fi
  if [[ ! -f $VOCAB_FILE ]]; then
    run "$PYTHON" -m data.prep.build_vocab --input "$sample_dir" --output "$VOCAB_FILE" --vocab-size 8192 \
      --do-lower-case
  fi
}

prepare() {  # <dataset dir> <preprocess options>...: build and balance the shards of one phase
  local sink=$1
  shift
  local overwrite=(); [[ -d $sink ]] && overwrite=(--overwrite)  # an empty dir: replace it
  run "$PYTHON" -m data.prep.preprocess_bert_pretrain --wikipedia "$wikipedia_source" --sink "$sink" \
    "${overwrite[@]}" --vocab-file "$VOCAB_FILE" "$@" "${masking_flag[@]}" --sample-ratio "$sample_ratio" \
    --seed "$seed" --num-workers "$num_dask_workers"
  run "$PYTHON" -m data.prep.balance_dask_output --indir "$sink" --num-shards "$num_blocks"
}

launcher_for "$PYTHON" "$num_gpus" "$DEVICE"

common_flags=(--vocab-file="$VOCAB_FILE" --output-dir="$RESULTS_DIR" --bert-model="$bert_model")
[[ $bert_config == None ]] || common_flags+=(--config-file="$bert_config")
common_flags+=(--seed="$seed" --log-freq=1 --optimizer=Lamb --num-steps-per-checkpoint="$save_checkpoint_steps"
               --num-workers="$num_workers" --device="$DEVICE")
case $precision in
  amp) common_flags+=(--amp --use-dynamic-loss-scaling --scale-loss=1048576) ;;
  bf16) common_flags+=(--amp --amp-dtype=bfloat16) ;;
  fp32|tf32) ;;  # TF32 is the GPU's default math for fp32 matmuls on Ampere+
esac
[[ $fuse_mha == true ]] && common_flags+=(--fuse-mha)
[[ -n ${KEEP_CHECKPOINTS:-} ]] && common_flags+=(--keep-checkpoints="$KEEP_CHECKPOINTS")
[[ -n ${SEQUENCE_LENGTH_ALIGNMENT:-} ]] && common_flags+=(--sequence-length-alignment="$SEQUENCE_LENGTH_ALIGNMENT")
[[ -n ${STEPS_THIS_RUN:-} && $enable_benchmark != true ]] && common_flags+=(--steps-this-run="$STEPS_THIS_RUN")
eval_flags() {  # <phase>: --eval-dir and its knobs when EVAL_DIR_PHASE<phase> is set
  local dir_var=EVAL_DIR_PHASE$1
  [[ -n ${!dir_var:-} ]] || return 0
  printf '%s\n' "--eval-dir=$(absolute "${!dir_var}")"
  [[ -z ${NUM_EVAL_BATCHES:-} ]] || printf '%s\n' "--num-eval-batches=$NUM_EVAL_BATCHES"
  [[ -z ${EVAL_FREQ:-} ]] || printf '%s\n' "--eval-freq=$EVAL_FREQ"
}
mapfile -t eval1 < <(eval_flags 1)
mapfile -t eval2 < <(eval_flags 2)
bench_flags=()
[[ $enable_benchmark == true ]] &&
  bench_flags=(--benchmark --benchmark-steps="$benchmark_steps" --benchmark-warmup-steps="$benchmark_warmup_steps")

if [[ $DRY_RUN != 1 ]]; then
  need_gpus "$PYTHON" "$num_gpus" "$DEVICE" "<num_gpus> (argument 4)" "$gpu_hint"
  mkdir -p "$RESULTS_DIR"
fi

phase1_ckpt=$RESULTS_DIR/$bert_model/phase1
# <init_checkpoint> seeds phase 1 only until phase 1 has checkpoints of its own: a re-run after a crash
# resumes those (resuming another directory into one that holds checkpoints is refused, runs never mix).
if [[ $init_checkpoint != None ]]; then
  if own_step=$(latest_step "$phase1_ckpt"); then
    [[ -n $own_step ]] || phase1_ckpt=$init_checkpoint
  else  # a dry run lists this and shows the command as if phase 1 had no checkpoint
    need "cannot tell whether '$phase1_ckpt' holds phase-1 checkpoints: $PYTHON -m tasks.launch_query" \
      "latest-step failed (run: bash scripts/setup.sh, or set PYTHON)"
    phase1_ckpt=$init_checkpoint
  fi
fi
resume1=(--from-checkpoint="$phase1_ckpt" --last-step-of-checkpoint=auto)
resume2=(--from-checkpoint="$RESULTS_DIR/$bert_model/phase2" --last-step-of-checkpoint=auto
         --from-phase1-final-params="$RESULTS_DIR/$bert_model/phase1/$train_steps")
if [[ $enable_benchmark == true ]]; then resume1=(); resume2=(); fi
cd "$code_dir"
ensure_sample_corpus

# ------------------------------------------------------------------------------------------ phase 1
if $needs_prep1; then
  printf '%s: %s is missing or empty: building the phase-1 shards\n' "$PROG" "$data_dir_phase1" >&2
  prepare "$data_dir_phase1" --target-seq-length 128 --no-bin --max-predictions-per-seq 20
fi
run_logged 1 "$train_batch_size" "$gradient_accumulation_steps" \
  "${launcher[@]}" "$code_dir/run_pretraining.py" --phase1 --input-dir="$data_dir_phase1" "${common_flags[@]}" \
  --batch-size="$train_batch_size" --max-seq-length=128 --max-predictions-per-seq=20 \
  --max-steps="$train_steps" --warmup-proportion="$warmup_proportion" --learning-rate="$learning_rate" \
  --gradient-merge-steps="$gradient_accumulation_steps" "${resume1[@]}" "${bench_flags[@]}" "${eval1[@]}" \
  --report-file="$RESULTS_DIR/dllogger_p1.json"
if [[ $DRY_RUN != 1 && -n ${STEPS_THIS_RUN:-} && $enable_benchmark != true ]]; then
  phase1_step=$(latest_step "$RESULTS_DIR/$bert_model/phase1") ||
    die "cannot tell whether phase 1 finished: $PYTHON -m tasks.launch_query latest-step failed (see above)"
  if (( ${phase1_step:-0} < 10#$train_steps )); then
    printf '%s: phase 1 stopped after STEPS_THIS_RUN=%s updates; run the same command again to continue\n' \
      "$PROG" "$STEPS_THIS_RUN" >&2
    exit 0
  fi
fi
[[ $DRY_RUN == 1 ]] || printf '%s: finished phase 1\n' "$PROG" >&2

# ------------------------------------------------------------------------------------------ phase 2
if $needs_prep2; then
  printf '%s: %s is missing or empty: building the phase-2 shards\n' "$PROG" "$data_dir_phase2" >&2
  bin_flag=(--no-bin); [[ $phase2_bin_size == none ]] || bin_flag=(--bin-size "$phase2_bin_size")
  prepare "$data_dir_phase2" --target-seq-length 512 "${bin_flag[@]}" --max-predictions-per-seq 80
fi
run_logged 2 "$train_batch_size_phase2" "$gradient_accumulation_steps_phase2" \
  "${launcher[@]}" "$code_dir/run_pretraining.py" --phase2 --input-dir="$data_dir_phase2" "${common_flags[@]}" \
  --batch-size="$train_batch_size_phase2" --max-seq-length=512 --max-predictions-per-seq=80 \
  --max-steps="$train_steps_phase2" --warmup-proportion="$warmup_proportion_phase2" \
  --learning-rate="$learning_rate_phase2" --gradient-merge-steps="$gradient_accumulation_steps_phase2" \
  "${resume2[@]}" "${bench_flags[@]}" "${eval2[@]}" --report-file="$RESULTS_DIR/dllogger_p2.json"
[[ $DRY_RUN == 1 ]] || printf '%s: finished phase 2\n' "$PROG" >&2
report_missing
