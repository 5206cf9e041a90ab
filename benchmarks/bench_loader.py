"""Benchmark: samples/s of the LDDL loader vs a straightforward per-sample Python collate, same run, same rows.

Owns: building benchmark shards from real text, the baseline reader (written here as a second implementation
of the collate: `str.split` and a dict lookup per token, `np.zeros` per batch, `np.load` per row for the
masked positions, the same `data.masking.mask_batch` for dynamic masking), the check that both give
identical feeds, and the timing table. Does not own the loader under test (`data.loader.lddl_loader`).

Fairness: the baseline reader runs behind the SAME sampling plan as ours (`SamplingPlan`,
`BertPretrainLoader`), so both build exactly the same batches from the same rows in the same order and both
pay for their own Parquet reads; only reading rows and collating differ. Their first batches are compared
array by array ("identical"). Ours is timed over a whole epoch by default (file reads and tokenisation
happen when a shuffle window first needs a file, so short runs overstate their share); the baseline over
its first `--baseline-samples` samples (its reads are a few percent of its time).

Data: by default the embedded stdlib-docstring corpus (`data.prep.sample_corpus`) is preprocessed with
`data.prep.preprocess_bert_pretrain` at each sequence length (static and dynamic masking, bins of 64) and its
rows are replicated into 4 balanced shards of `--rows` rows in total, so lengths, bins and tokens are real.
`--data DIR` replicates an existing LDDL directory instead.

Usage (from the repo root):
  python -m benchmarks.bench_loader [--vocab-file vocab/bert-base-uncased-vocab.txt] \
      [--rows 200000] [--batch-size 128] [--baseline-samples 20000] [--workers 2]
"""
import utils.preflight  # noqa: F401  -- zlib before paddle, OMP threads default; must stay first
import io
import itertools
import logging
import os
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.default_inputs import default_vocab
from data import lddl_format
from data.loader import lddl_loader
from data.loader.lddl_loader import get_bert_pretrain_data_loader
from data.masking import mask_batch
from tokenizer import load_vocab, special_token_ids
from utils.cli import ArgumentParser
from utils.logger import init_logging

logger = logging.getLogger(__name__)

NUM_SHARDS = 4


# ------------------------------------------------------------------------------------------ data
def build_source_datasets(workdir, vocab_file, seq_lengths):
    """Preprocess the sample corpus once per (sequence length, masking). Returns {(seq, masking): dir}."""
    from data.prep import preprocess_bert_pretrain, sample_corpus

    source = os.path.join(workdir, "source")
    sample_corpus.build_sample_corpus(source, num_files=4, max_bytes=1_500_000)
    out = {}
    for seq in seq_lengths:
        for masking in ("static", "dynamic"):
            sink = os.path.join(workdir, f"pre-{seq}-{masking}")
            argv = ["--source", source, "--sink", sink, "--vocab-file", vocab_file, "--target-seq-length",
                    str(seq), "--bin-size", "64", "--num-workers", "0"] + (["--masking"] if masking == "static" else [])
            preprocess_bert_pretrain.main(argv)
            out[seq, masking] = sink
    return out


def replicate(src, dst, total_rows):
    """Copy the rows of LDDL dir `src` round and round into NUM_SHARDS balanced shards of total_rows rows."""
    files = lddl_format.list_shards(src)
    binned = files[0].bin_id is not None
    tables = {}
    for f in files:
        tables.setdefault(f.bin_id, []).append(pq.read_table(f.path))
    merged = {b: pa.concat_tables(ts).combine_chunks() for b, ts in tables.items()}
    grand = sum(t.num_rows for t in merged.values())
    os.makedirs(dst)
    counts = {}
    for b, table in merged.items():
        want = max(NUM_SHARDS, round(total_rows * table.num_rows / grand)) // NUM_SHARDS
        reps = -(-want // table.num_rows)
        shard = pa.concat_tables([table] * reps).slice(0, want).combine_chunks()
        schema = lddl_format.make_schema("masked_lm_positions" in table.column_names, binned)
        for k in range(NUM_SHARDS):
            name = lddl_format.shard_name(k, b)
            lddl_format.write_table(shard.select(schema.names), os.path.join(dst, name), schema)
            counts[name] = want
    lddl_format.write_num_samples(dst, counts)
    return sum(counts.values())


# ------------------------------------------------------------------------------------------ baseline
class BaselineReader:
    """The same reader interface as `LddlReader`, written the straightforward way: rows as Python dicts,
    one dict lookup per token, `np.zeros` per batch, `np.load` per row for the masked positions."""

    def __init__(self, vocab_file, align=64):
        self.vocab = load_vocab(vocab_file)
        self.special = special_token_ids(self.vocab, vocab_file)
        self.align = align

    def read(self, data_file):
        return pq.read_table(data_file.path).to_pylist()

    def make_batch(self, parts, order, mask_seed):
        gathered = [rows[int(i)] for _, rows, idx in parts for i in idx]
        return self.collate([gathered[int(j)] for j in order], np.random.default_rng(mask_seed))

    def collate(self, rows, rng):
        longest = max(len(r["A"].split()) + len(r["B"].split()) + 3 for r in rows)
        seq_len = -(-longest // self.align) * self.align
        ids = np.zeros((len(rows), seq_len), np.int64)
        types = np.zeros((len(rows), seq_len), np.int64)
        mask = np.zeros((len(rows), seq_len), np.int64)
        labels = np.full((len(rows), seq_len), -1, np.int64)
        nsp = np.zeros((len(rows), 1), np.int64)
        for r, row in enumerate(rows):
            tokens = ["[CLS]"] + row["A"].split() + ["[SEP]"]
            n_a = len(tokens)
            tokens += row["B"].split() + ["[SEP]"]
            for j, tok in enumerate(tokens):
                ids[r, j] = self.vocab[tok]
                mask[r, j] = 1
                types[r, j] = 0 if j < n_a else 1
            nsp[r, 0] = int(row["is_random_next"])
            if "masked_lm_positions" in row:
                positions = np.load(io.BytesIO(row["masked_lm_positions"]))
                for p, tok in zip(positions, row["masked_lm_labels"].split()):
                    labels[r, p] = self.vocab[tok]
        if "masked_lm_positions" not in rows[0]:
            ids, labels = self._dynamic(ids, mask, rng)
        return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask[:, None, None, :],
                "next_sentence_labels": nsp, "masked_lm_labels": labels}

    def _dynamic(self, ids, mask, rng):
        cand = (mask == 1) & (ids != self.special["cls"]) & (ids != self.special["sep"])
        return mask_batch(ids, cand, mask.sum(1), rng, vocab_size=len(self.vocab), mask_id=self.special["mask"],
                          max_predictions_per_seq=ids.shape[1])


def baseline_loader(directory, vocab_file, batch_size, seed):
    """The baseline reader behind the SAME sampling plan as ours: same batches, same rows, same order."""
    files = lddl_loader.list_data_files(directory)
    plan = lddl_loader.SamplingPlan(files, rank=0, world_size=1, batch_size=batch_size, seed=seed,
                                    shuffle_buffer_size=16384, drop_last=True, where=directory)
    return lddl_loader.BertPretrainLoader(plan, BaselineReader(vocab_file), kind="baseline",
                                          fingerprint=lddl_loader.dataset_fingerprint(files))


def check_identical(directory, vocab_file, batch_size, seq, num_batches=4):
    """The first batches of ours and of the baseline; True when every feed array is equal."""
    ours = get_bert_pretrain_data_loader(directory, vocab_file=vocab_file, batch_size=batch_size,
                                         max_seq_length=seq, seed=1)
    pairs = zip(itertools.islice(ours, num_batches), baseline_loader(directory, vocab_file, batch_size, seed=1))
    return all(a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a) for a, b in pairs)


# ------------------------------------------------------------------------------------------ timing
def samples_per_second(iterable, limit):
    """Iterate feeds until `limit` samples (or the end); returns (samples/s, samples)."""
    start, seen = time.perf_counter(), 0
    for feed in iterable:
        seen += len(feed["input_ids"])
        if seen >= limit:
            break
    return seen / (time.perf_counter() - start), seen


def bench_one(directory, vocab_file, args, seq):
    row = {"identical": check_identical(directory, vocab_file, args.batch_size, seq)}
    loader = get_bert_pretrain_data_loader(directory, vocab_file=vocab_file, batch_size=args.batch_size,
                                           max_seq_length=seq)
    row["ours"], _ = samples_per_second(loader, args.samples)
    if args.workers:
        loader = get_bert_pretrain_data_loader(directory, vocab_file=vocab_file, batch_size=args.batch_size,
                                               max_seq_length=seq, num_workers=args.workers)
        row["workers"], _ = samples_per_second(loader, args.samples)
        loader.close()
    row["baseline"], _ = samples_per_second(baseline_loader(directory, vocab_file, args.batch_size, seed=42),
                                            args.baseline_samples)
    return row


def _parse(argv):
    p = ArgumentParser(prog="python -m benchmarks.bench_loader", description=__doc__.split("\n")[0])
    p.add_argument("--vocab-file", default=None,
                   help="BERT vocab the sample corpus is tokenised with (default: vocab/bert-base-uncased-vocab.txt "
                        "when downloaded, else a vocab built once from the embedded sample corpus)")
    p.add_argument("--data", default=None, help="an LDDL directory to replicate instead of the sample corpus")
    p.add_argument("--seq-lengths", type=int, nargs="+", default=[128, 512], help="sequence lengths to time")
    p.add_argument("--rows", type=int, default=200_000, help="rows in the replicated dataset (default 200000)")
    p.add_argument("--batch-size", type=int, default=128, help="sequences per batch")
    p.add_argument("--samples", type=int, default=10**9, help="samples timed for our loader (default: an epoch)")
    p.add_argument("--baseline-samples", type=int, default=20_000, help="samples timed for the baseline")
    p.add_argument("--workers", type=int, default=0, help="also time our loader with N worker processes")
    args = p.parse_args(argv)
    for name in ("rows", "batch_size", "samples", "baseline_samples"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.vocab_file is None:
        args.vocab_file = default_vocab()
    elif not os.path.isfile(args.vocab_file):
        p.error(f"--vocab-file '{args.vocab_file}' does not exist")
    if args.data is not None and not os.path.isdir(args.data):
        p.error(f"--data '{args.data}' is not a directory")
    return args


def main(argv=None):
    """Run the benchmark; returns {(seq, masking): {'ours', 'baseline', 'identical'[, 'workers']}}."""
    init_logging()
    args = _parse(argv)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_loader-") as work:
        if args.data:
            masking = "static" if "masked_lm_positions" in pq.read_schema(
                lddl_format.list_shards(args.data)[0].path).names else "dynamic"
            sources = {(None, masking): args.data}
        else:
            sources = build_source_datasets(work, args.vocab_file, args.seq_lengths)
        for (seq, masking), src in sources.items():
            dst = os.path.join(work, f"bench-{seq}-{masking}")
            rows = replicate(src, dst, args.rows)
            logger.info("seq %s, %s masking: %d rows in %d shards", seq, masking, rows, NUM_SHARDS)
            results[seq, masking] = bench_one(dst, args.vocab_file, args, seq)
    _print_table(results, args)
    return results


def _print_table(results, args):
    extra = f"{f'{args.workers} workers/s':>14}" if args.workers else ""
    print(f"batch size {args.batch_size}; samples/s including Parquet reads; same rows, identical feeds checked")
    print(f"{'seq':>5} {'masking':<8}{'ours/s':>10}{extra}{'baseline/s':>12}{'ratio':>8}{'identical':>11}")
    for (seq, masking), r in results.items():
        extra = f"{r['workers']:>14.0f}" if args.workers else ""
        print(f"{str(seq or '-'):>5} {masking:<8}{r['ours']:>10.0f}{extra}{r['baseline']:>12.0f}"
              f"{r['ours'] / r['baseline']:>7.1f}x{str(r['identical']):>11}")


if __name__ == "__main__":
    main()
    sys.exit(0)
