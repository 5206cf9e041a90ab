#!/usr/bin/env bash
# The README's main command: set up, then run the pipeline end to end on the embedded sample, offline, on CPU.
#   bash scripts/demo.sh [OUTPUT_DIR]      (default: demo_output/)
# Stages (each skipped when its output already exists, so a re-run resumes):
#   1. corpus  : Python standard-library docstrings -> LDDL source text (one document per line)
#   2. vocab   : a WordPiece vocabulary trained on that text
#   3. shards  : Dask preprocessing -> binned, statically masked Parquet shards (seq 128) + balancing
#   4. loader  : stream a few batches through the resumable loader and print their shapes
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
OUT=${1:-demo_output}
WORKERS=${DEMO_WORKERS:-2}
mkdir -p "$OUT"

step() { printf '\n== %s ==\n' "$*"; }

step "1/4 corpus: Python standard-library docstrings -> $OUT/source"
[ -d "$OUT/source" ] || $PY -m data.sample_corpus --output-dir "$OUT/source" --num-files 4 --max-bytes 3000000

step "2/4 vocab: WordPiece vocabulary -> $OUT/vocab.txt"
[ -f "$OUT/vocab.txt" ] || $PY -m data.build_vocab --input "$OUT/source" --output "$OUT/vocab.txt" \
  --vocab-size 8192 --do-lower-case

step "3/4 shards: seq-128 masked, binned Parquet -> $OUT/pretrain_128"
if [ ! -d "$OUT/pretrain_128" ]; then
  $PY -m data.preprocess_bert_pretrain --source "$OUT/source" --sink "$OUT/pretrain_128" \
    --vocab-file "$OUT/vocab.txt" --do-lower-case --target-seq-length 128 --bin-size 32 --masking \
    --max-predictions-per-seq 20 --duplicate-factor 2 --num-workers "$WORKERS" --seed 12345
  $PY -m data.balance_dask_output --indir "$OUT/pretrain_128" --num-shards 4
fi

step "4/4 loader: a few batches from $OUT/pretrain_128"
$PY -m data.lddl_loader --inspect "$OUT/pretrain_128" --vocab-file "$OUT/vocab.txt" --batch-size 32 --num-batches 3

printf '\nDone. Shards in %s/pretrain_128; vocabulary %s/vocab.txt.\n' "$OUT" "$OUT"
