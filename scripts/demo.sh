#!/usr/bin/env bash
# The README's main command: set up .venv, then the whole pipeline on the embedded sample, offline, on CPU.
#   bash scripts/demo.sh [OUTPUT_DIR]
# OUTPUT_DIR (default: the repository's demo_output/ for the corpus, vocab and shards, and results/ for
# checkpoints, reports and the plot): when given, all of it goes under it (OUTPUT_DIR/results/ for the
# second part). It must not contain spaces (the presets' values are split by the shell).
# Stages (each one skips what is already done, so a re-run resumes or returns at once):
#   1. pre-training data + phase 1 + phase 2 (bert-tiny):
#        bash scripts/run_pretraining.sh $(source configs/pretrain_config.sh && cpu_demo)
#      builds demo_output/source (docstrings of Python's standard library: real text on every machine),
#      demo_output/vocab.txt (a WordPiece vocab trained on it), seq-128 and seq-512 shards (Dask), then
#      trains phase 1 and phase 2 into results/bert-tiny/phase{1,2}/ with reports results/dllogger_p{1,2}.json
#   2. a plot of both reports: results/pretraining.png
#   3. SQuAD fine-tuning of the phase-2 model, then EM/F1 on the dev file:
#        bash scripts/run_squad.sh $(source configs/squad_config.sh && cpu_demo)
#      on data/download/squad/v1.1 when you downloaded SQuAD (python -m data.prep.download squad), else on the
#      small embedded sample data/samples/squad (27 training / 13 dev questions: a smoke test of the
#      pipeline; its scores say nothing about model quality).
#   4. one question answered by the fine-tuned model (run_squad.py --question), and where to go next.
set -euo pipefail
if (( $# > 1 )); then
  echo "demo.sh: error: expected at most one argument (OUTPUT_DIR), got $#" >&2
  exit 2
fi
if (( $# == 1 )); then
  out=$1
  [[ $out == /* ]] || out=$PWD/$out
  if [[ -z $1 || $out =~ [[:space:]] ]]; then
    echo "demo.sh: error: OUTPUT_DIR must be a non-empty path without spaces, got '$1'" >&2
    exit 2
  fi
  export DEMO_DIR=$out RESULTS_DIR=$out/results
fi
cd "$(dirname "$0")/.."
DEMO_DIR=${DEMO_DIR:-$PWD/demo_output}
RESULTS_DIR=${RESULTS_DIR:-$PWD/results}
export DEMO_DIR RESULTS_DIR
bash scripts/setup.sh
PY=.venv/bin/python

step() { printf '\n== %s ==\n' "$*"; }

step "1/4 pre-training on the embedded sample (data preparation, phase 1, phase 2)"
# shellcheck disable=SC2046  # the preset's 32 values are meant to be split into arguments
bash scripts/run_pretraining.sh $(source configs/pretrain_config.sh && cpu_demo)

step "2/4 plot of both phases: $RESULTS_DIR/pretraining.png"
$PY -m utils.plot_report "$RESULTS_DIR/dllogger_p1.json" "$RESULTS_DIR/dllogger_p2.json" \
  --output "$RESULTS_DIR/pretraining.png" --title "bert-tiny pre-trained on the embedded sample"

step "3/4 SQuAD fine-tuning and evaluation"
# shellcheck disable=SC2207
squad_args=($(source configs/squad_config.sh && cpu_demo))
[[ ${squad_args[8]} == */data/samples/squad ]] &&
  echo "(no downloaded SQuAD in data/download/squad/v1.1: using the embedded sample data/samples/squad)"
# A second demo run keeps the first fine-tuned model: moved aside to bert-tiny/squad.superseded-<time>.
REPLACE_MODEL=1 bash scripts/run_squad.sh "${squad_args[@]}"

step "4/4 a question for the fine-tuned model (one it was fine-tuned on: a tiny model only recalls those)"
$PY run_squad.py --from-checkpoint "$RESULTS_DIR/bert-tiny/squad" --vocab-file "$DEMO_DIR/vocab.txt" \
  --do-lower-case --output-dir "$RESULTS_DIR" --device cpu --show-config false --question "Who created Python?" \
  --context "Python is a high-level programming language created by Guido van Rossum and first released in 1991."

cat <<MSG

Done: checkpoints in $RESULTS_DIR/bert-tiny/, reports $RESULTS_DIR/dllogger_*.json, plot $RESULTS_DIR/pretraining.png.
Why the scores are near zero: bert-tiny (2 layers, 128 wide) pre-trained for minutes on ~3 MB of text knows
almost no English; the demo proves the pipeline, not the model. For real scores on this CPU, fine-tune a
real pretrained encoder (README: "Fine-tuning a real public model offline": MiniLM reaches EM/F1 30/44
after 3 epochs on 1.5k questions), or pre-train BERT-large on Wikipedia on GPUs (README: "The GPU recipe").
MSG
