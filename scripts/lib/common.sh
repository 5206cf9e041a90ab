# shellcheck shell=bash
# Shared by the scripts/run_*.sh launchers (sourced; defines functions only, plus REPO_ROOT / PREP_DIR). The caller sets PROG (its name, for error lines) and DRY_RUN before using them.

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PREP_DIR=${BERT_PREP_WORKING_DIR:-$REPO_ROOT/data/download}

die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 2; }

# What a real run would need but is not there. A real run stops at the first one (`die`); a dry run
# collects them all, prints its commands anyway and lists them at the end (`report_missing`), so a
# dry run on a fresh clone shows the whole plan and the whole shopping list, and exits 0.
missing=()
need() {  # <message>: die, or (DRY_RUN=1) remember the message for report_missing
  if [[ ${DRY_RUN:-0} == 1 ]]; then missing+=("$*"); else die "$@"; fi
}
report_missing() {  # on stderr, after a dry run's commands: one `missing:` line per item
  local item
  (( ${#missing[@]} )) || return 0
  printf '%s: missing: %d thing(s) a real run needs:\n' "$PROG" "${#missing[@]}" >&2
  for item in "${missing[@]}"; do printf '%s: missing: %s\n' "$PROG" "$item" >&2; done
}

stop_if_missing() {  # a real run that checked its inputs all at once: list the absent ones, then exit 2
  (( ${#missing[@]} )) || return 0
  report_missing
  die "stopped before launching: ${#missing[@]} input(s) missing (listed above)"
}

need_int() {  # <name> <position> <value> <minimum>
  if ! { [[ $3 =~ ^[0-9]+$ ]] && (( 10#$3 >= $4 )); }; then
    die "<$1> (argument $2) must be an integer >= $4, got '$3'"
  fi
}

need_float() {  # <name> <position> <value> <awk condition on x> <description>
  if ! { [[ $3 =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$ ]] &&
         awk -v v="$3" "BEGIN { x = v + 0; exit !($4) }"; }; then
    die "<$1> (argument $2) must be a number $5, got '$3'"
  fi
}

need_choice() {  # <name> <position> <value> <choice>...
  local name=$1 pos=$2 value=$3 choice
  shift 3
  for choice in "$@"; do [[ $value == "$choice" ]] && return 0; done
  die "<$name> (argument $pos) must be one of: $*; got '$value'"
}

bert_model_for() {  # <config file or None>: the --bert-model to pass, or nothing (the program then names
  # the model after the checkpoint's own config, or the reference's default): BERT_MODEL, else the
  # config file's name when it is one of bert_configs/, else custom.
  local name
  if [[ -n ${BERT_MODEL:-} ]]; then printf '%s' "$BERT_MODEL"; return 0; fi
  [[ $1 == None ]] && return 0
  name=$(basename "$1" .json)
  [[ -f $REPO_ROOT/bert_configs/$name.json ]] || name=custom
  printf '%s' "$name"
}

lower_case_for() {  # <bert model name>: DO_LOWER_CASE when set (true|false), else false for *-cased models
  local value=${DO_LOWER_CASE:-}
  if [[ -z $value ]]; then
    case $1 in *-cased) value=false ;; *) value=true ;; esac
  fi
  [[ $value == true || $value == false ]] || die "DO_LOWER_CASE must be true or false"
  printf '%s' "$value"
}

default_python() {  # <code dir>: its .venv interpreter when present, else python3
  if [[ -x $1/.venv/bin/python ]]; then echo "$1/.venv/bin/python"; else echo python3; fi
}

launcher_for() {  # <python> <processes> <device>: sets the array `launcher`
  launcher=("$1")
  if (( $2 > 1 )); then
    if [[ $3 == cpu ]]; then
      launcher=("$1" -m paddle.distributed.launch "--nproc_per_node=$2")
    else
      launcher=("$1" -m paddle.distributed.launch "--gpus=$(seq -s, 0 $(($2 - 1)))")
    fi
  fi
}

gpu_count() {  # <python>: GPUs its paddle sees; "nocuda" for a CPU-only build, "nopaddle" if it cannot import
  local out
  out=$("$1" -c 'import zlib, paddle  # zlib before paddle, as every entry point
print(paddle.device.cuda.device_count() if paddle.is_compiled_with_cuda() else "nocuda")' 2>/dev/null) ||
    { echo nopaddle; return 0; }
  echo "${out##*$'\n'}"
}

gpus_seen=""  # gpu_count's answer, asked once per script (importing paddle takes seconds)
need_gpus() {  # <python> <processes> <device> <label> <hint> [early]: die before launching when those GPUs are absent
  # <label> names the argument that asked for them (e.g. "<num_gpus> (argument 7)"), <hint> what to run instead.
  # early: called before the data checks, so that a CPU machine hears "no GPU" first; an interpreter that cannot
  # import paddle is then left to the call after them (which data is missing is the more useful news there).
  local python=$1 wanted=$2 device=$3 label=$4 hint=$5 when=${6:-} seen
  [[ $device == gpu || ( $device == auto && $wanted -gt 1 ) ]] || return 0
  [[ -n $gpus_seen ]] || gpus_seen=$(gpu_count "$python")
  seen=$gpus_seen
  case $seen in
    nopaddle) [[ $when == early ]] && return 0
              die "$python cannot import paddle (run: bash scripts/setup.sh, or set PYTHON)" ;;
    nocuda) die "$label asks for $wanted GPU process(es) but no GPU is usable: paddlepaddle-gpu is not" \
                "installed (install paddlepaddle-gpu==2.6.2); on a CPU machine use $hint" ;;
  esac
  [[ $seen =~ ^[0-9]+$ ]] || die "cannot tell how many GPUs $python sees (it printed '$seen')"
  (( seen >= wanted )) ||
    die "$label asks for $wanted GPU process(es) but $seen GPU(s) are visible; give at most $seen, or on a" \
        "CPU machine use $hint"
}

print_command() {  # one shell-quoted line on stdout (what DRY_RUN=1 shows)
  local arg words=()
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_./=:,@%+-]+$ ]]; then words+=("$arg"); else words+=("$(printf '%q' "$arg")"); fi
  done
  printf '%s\n' "${words[*]}"
}

run() {  # print (DRY_RUN=1) or run one command, announcing it on stderr
  if [[ $DRY_RUN == 1 ]]; then
    print_command "$@"
  else
    printf '%s: running:' "$PROG" >&2; printf ' %q' "$@" >&2; printf '\n' >&2
    "$@"
  fi
}

# The named-flag examples (scripts/run_pretraining_p1.sh, _p2.sh): one `launch --gpus=$GPUS` command. A dry run
# prints it and lists what it reads that is absent; a real run first checks the GPUs, as run_pretraining.sh
# does, so a CPU machine gets one line instead of the launcher's traceback (the program checks the data).
launch_phase_on_gpus() {  # <input dir> <vocab file> <command>...: uses GPUS, PYTHON, DRY_RUN
  local input_dir=$1 vocab_file=$2 num_gpus
  shift 2
  if [[ $DRY_RUN == 1 ]]; then
    print_command "$@"
    [[ -d $input_dir ]] || need "input dir '$input_dir' does not exist (build the shards: DRY_RUN=1 bash" \
      "scripts/run_pretraining.sh shows how, or set BERT_PREP_WORKING_DIR)"
    [[ -f $vocab_file ]] || need "vocab file '$vocab_file' does not exist (python -m data.prep.download vocab" \
      "--vocab-dir vocab)"
    report_missing
    return 0
  fi
  num_gpus=$(tr ',' '\n' <<<"$GPUS" | grep -c .)
  need_gpus "$PYTHON" "$num_gpus" gpu "GPUS=$GPUS" \
    'the CPU preset: bash scripts/run_pretraining.sh $(source configs/pretrain_config.sh && cpu_demo)'
  run "$@"
}
