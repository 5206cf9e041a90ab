#!/usr/bin/env bash
# Download what pretraining and SQuAD fine-tuning need, then extract Wikipedia into LDDL source text.
#
# Usage (from anywhere):  bash data/create_datasets_from_start.sh [wiki_dump_date]
#   wiki_dump_date   YYYYMMDD of the English Wikipedia dump (default: DEFAULT_WIKI_DUMP_DATE in data/prep/download.py).
#                    dumps.wikimedia.org keeps only recent dates; for older ones set
#                    WIKI_MIRROR=https://archive.org/download/enwiki-{date}/
# Environment:
#   WIKI_DUMP=/path/enwiki-YYYYMMDD-pages-articles.xml.bz2   use a local dump instead of downloading one
#   WIKI_MIRROR=<URL template with {date}>                    where to download the dump from
#   NUM_FILES (default 256), NUM_WORKERS (default: all cores)  for the extraction
#
# Produces: vocab/bert-{base,large}-{cased,uncased}-vocab.txt, data/download/squad/v1.1/ and v2.0/,
# data/download/wikipedia/enwiki-<date>-pages-articles.xml.bz2 and data/download/wikipedia/source/
# (one article per line). Every download is checksum-verified and resumes if interrupted; rerunning the
# script skips work that is already complete.
set -euo pipefail
if [[ -n "${WIKI_DUMP:-}" && "$WIKI_DUMP" != /* ]]; then
  WIKI_DUMP="$PWD/$WIKI_DUMP"  # relative to where the user ran the script, not the repo root we cd to
fi
cd "$(dirname "$0")/.."
if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python; fi
OUT=data/download
SOURCE=$OUT/wikipedia/source

"$PY" -m data.prep.download vocab --output-dir "$OUT" --vocab-dir vocab
"$PY" -m data.prep.download squad --output-dir "$OUT"

wiki_args=()
if [[ -n "${WIKI_DUMP:-}" ]]; then
  if [[ $# -ge 1 ]]; then
    echo "give either a dump date argument or WIKI_DUMP, not both" >&2
    exit 2
  fi
  wiki_args+=(--wiki-dump "$WIKI_DUMP")
else
  if [[ $# -ge 1 ]]; then wiki_args+=(--wiki-dump-date "$1"); fi
  if [[ -n "${WIKI_MIRROR:-}" ]]; then wiki_args+=(--wiki-mirror "$WIKI_MIRROR"); fi
fi
# The download CLI prints the path of the dump on stdout (logs go to stderr).
DUMP=$("$PY" -m data.prep.download wikipedia --output-dir "$OUT" "${wiki_args[@]}")

if [[ -d "$SOURCE" && -n "$(ls -A "$SOURCE")" ]]; then
  echo "$SOURCE already exists; skipping the extraction (delete it to extract again)"
else
  extract_args=(--dump "$DUMP" --output-dir "$SOURCE" --num-files "${NUM_FILES:-256}")
  if [[ -n "${NUM_WORKERS:-}" ]]; then extract_args+=(--num-workers "$NUM_WORKERS"); fi
  "$PY" -m data.prep.wikipedia "${extract_args[@]}"
fi

echo "Datasets ready: vocab/, $OUT/squad/, $SOURCE/"
echo "Next step: pre-train. run_pretraining.sh builds the phase-1 and phase-2 shards from $SOURCE itself"
echo "(into $OUT/pretrain/phase1/unbinned/parquet and $OUT/pretrain/phase2/bin_size_64/parquet, static"
echo "masking, balanced), then trains both phases; look at the plan first with a dry run:"
echo "  DRY_RUN=1 bash scripts/run_pretraining.sh \$(source configs/pretrain_config.sh && dgxa100-80g_8gpu_amp)"
echo "  bash scripts/run_pretraining.sh \$(source configs/pretrain_config.sh && dgxa100-80g_8gpu_amp)"
echo "To build the phase-1 shards by hand instead (where run_pretraining.sh looks for them):"
echo "  $PY -m data.prep.preprocess_bert_pretrain --wikipedia $SOURCE --sink $OUT/pretrain/phase1/unbinned/parquet \\"
echo "      --vocab-file vocab/bert-large-uncased-vocab.txt --target-seq-length 128 --no-bin --masking \\"
echo "      --max-predictions-per-seq 20"
echo "  $PY -m data.prep.balance_dask_output --indir $OUT/pretrain/phase1/unbinned/parquet --num-shards 256"
echo "  $PY -m data.prep.inspect_shards $OUT/pretrain/phase1/unbinned/parquet --vocab-file vocab/bert-large-uncased-vocab.txt"
