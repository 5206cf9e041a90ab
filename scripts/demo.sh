#!/usr/bin/env bash
# The README's main command: set up .venv, then the whole pipeline on the embedded sample, offline, on CPU.
#   bash scripts/demo.sh
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
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python

step() { printf '\n== %s ==\n' "$*"; }

step "1/3 pre-training on the embedded sample (data preparation, phase 1, phase 2)"
# shellcheck disable=SC2046  # the preset's 32 values are meant to be split into arguments
bash scripts/run_pretraining.sh $(source configs/pretrain_config.sh && cpu_demo)

step "2/3 plot of both phases: results/pretraining.png"
$PY -m utils.plot_report results/dllogger_p1.json results/dllogger_p2.json --output results/pretraining.png \
  --title "bert-tiny pre-trained on the embedded sample"

step "3/3 SQuAD fine-tuning and evaluation"
# shellcheck disable=SC2207
squad_args=($(source configs/squad_config.sh && cpu_demo))
if [ ! -f "${squad_args[8]}/train-v1.1.json" ]; then
  echo "(no downloaded SQuAD in ${squad_args[8]}: using the embedded sample data/samples/squad)"
  squad_args[8]=data/samples/squad
  squad_args[1]=10   # epochs: 27 questions make 4 updates per epoch
fi
bash scripts/run_squad.sh "${squad_args[@]}"

printf '\nDone: checkpoints in results/bert-tiny/, reports results/dllogger_*.json, plot results/pretraining.png.\n'
