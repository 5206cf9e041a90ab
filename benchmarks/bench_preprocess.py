"""Benchmark: BERT pretraining-data preprocessing, ours (Dask) vs a single-process pure-Python baseline.

Owns: the baseline -- the same algorithm written the straightforward way, as Google's
create_pretraining_data.py does it (pure-Python `tokenizer.FullTokenizer` per sentence, token lists,
`create_instances_from_document` on lists, a per-instance masking loop with `random.Random`), writing the
same LDDL rows to one Parquet file -- and timing it against `data.prep.preprocess_bert_pretrain` on the same
corpus in the same run. Does not own the implementation under test.

Both do: read `<doc_id> <text>` lines, blingfire sentences, WordPiece, pairs x duplicate factor, static
masking (max predictions honoured), Parquet output. Instances differ (different RNG streams; ours draws
random B's within a block) but counts agree to within a few percent.

Default corpus: the embedded stdlib-docstring corpus (`data.prep.sample_corpus`), repeated `--repeat` times
with fresh doc ids so the run is long enough to amortise Dask's start-up (which is included in our time).

Usage (from the repo root):
  python -m benchmarks.bench_preprocess --vocab-file vocab/bert-base-uncased-vocab.txt [--repeat 8]
      [--corpus DIR] [--num-workers 2] [--target-seq-length 128]
"""
import utils.preflight  # noqa: F401  -- zlib before paddle, OMP threads default; must stay first

import logging
import os
import random
import tempfile
import time

import pyarrow as pa

from data.prep import corpus
from data import lddl_format as fmt
from data.prep import preprocess_bert_pretrain as pre
from data.prep.pretraining_pairs import split_sentences
from tokenizer import FullTokenizer
from utils.cli import ArgumentParser
from utils.logger import init_logging

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------- baseline
def _baseline_truncate(tokens_a, tokens_b, max_num_tokens, rng):
    while len(tokens_a) + len(tokens_b) > max_num_tokens:
        longer = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()


def _baseline_pairs(documents, index, rng, max_seq_length, short_seq_prob):
    """Google's create_instances_from_document on lists of token lists (random B from another document)."""
    document, max_num_tokens = documents[index], max_seq_length - 3
    target = rng.randint(2, max_num_tokens) if rng.random() < short_seq_prob else max_num_tokens
    pairs, chunk, length, i = [], [], 0, 0
    while i < len(document):
        chunk.append(document[i])
        length += len(document[i])
        if i == len(document) - 1 or length >= target:
            a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
            tokens_a = [t for sentence in chunk[:a_end] for t in sentence]
            is_random = len(documents) > 1 and (len(chunk) == 1 or rng.random() < 0.5)
            tokens_b = []
            if is_random:
                other = rng.randint(0, len(documents) - 2)
                other_doc = documents[other + (other >= index)]
                for sentence in other_doc[rng.randint(0, len(other_doc) - 1):]:
                    tokens_b.extend(sentence)
                    if len(tokens_b) >= target - len(tokens_a):
                        break
                i -= len(chunk) - a_end
            elif len(chunk) >= 2:
                tokens_b = [t for sentence in chunk[a_end:] for t in sentence]
            if tokens_b:
                _baseline_truncate(tokens_a, tokens_b, max_num_tokens, rng)
                pairs.append((tokens_a, tokens_b, is_random))
            chunk, length = [], 0
        i += 1
    return pairs


def _baseline_mask(tokens_a, tokens_b, rng, vocab_words, ratio, max_predictions):
    """Google's create_masked_lm_predictions for one instance: returns (A, B, positions, labels)."""
    tokens = ["[CLS]"] + tokens_a + ["[SEP]"] + tokens_b + ["[SEP]"]
    candidates = [i for i, t in enumerate(tokens) if t not in ("[CLS]", "[SEP]")]
    rng.shuffle(candidates)
    num_to_predict = min(max_predictions, max(1, int(round(len(tokens) * ratio))))
    chosen = sorted(candidates[:num_to_predict])
    output = list(tokens)
    for position in chosen:
        if rng.random() < 0.8:
            output[position] = "[MASK]"
        elif rng.random() >= 0.5:
            output[position] = vocab_words[rng.randint(0, len(vocab_words) - 1)]
    len_a = len(tokens_a)
    return output[1:1 + len_a], output[2 + len_a:-1], chosen, [tokens[p] for p in chosen]


def run_baseline(files, settings, out_path):
    """Single process, pure Python; writes all rows to `out_path`. Returns the number of instances."""
    tok = FullTokenizer(settings.vocab_file, do_lower_case=settings.do_lower_case)
    documents = []
    for _, text in corpus.iter_documents(files, "lines", unique_ids=False):
        doc = [t for t in (tok.tokenize(s) for s in split_sentences(text)) if t]
        if doc:
            documents.append(doc)
    rng, vocab_words = random.Random(settings.seed), list(tok.vocab)
    rows = []
    for _ in range(settings.duplicate_factor):
        for index in range(len(documents)):
            for tokens_a, tokens_b, is_random in _baseline_pairs(
                    documents, index, rng, settings.target_seq_length, settings.short_seq_prob):
                a, b, positions, labels = _baseline_mask(
                    tokens_a, tokens_b, rng, vocab_words, settings.masked_lm_ratio,
                    settings.max_predictions_per_seq)
                rows.append({"A": " ".join(a), "B": " ".join(b), "is_random_next": is_random,
                             "num_tokens": len(a) + len(b) + 3,
                             "masked_lm_positions": fmt.encode_positions(positions),
                             "masked_lm_labels": " ".join(labels)})
    rng.shuffle(rows)
    schema = fmt.make_schema(masking=True, binned=False)
    fmt.write_table(pa.Table.from_pylist(rows, schema=schema), out_path, schema)
    return len(rows)


# ------------------------------------------------------------------------------- harness
def _repeat_corpus(src_dir, dst_dir, repeat):
    """Copy every source file `repeat` times with fresh doc ids; returns total bytes."""
    os.makedirs(dst_dir)
    total = 0
    for path in corpus.list_corpus_files([src_dir]):
        with open(path, encoding="utf-8") as f:
            lines = [line.rstrip("\n") for line in f if line.strip()]
        for r in range(repeat):
            data = "".join(f"r{r}-{line}\n" for line in lines).encode("utf-8")
            with open(os.path.join(dst_dir, f"r{r}-{os.path.basename(path)}"), "wb") as f:
                f.write(data)
            total += len(data)
    return total


def _report(name, seconds, instances, mbytes):
    logger.info("%-32s %8.2f s %9d instances %9.0f inst/s %7.2f MB/s", name, seconds, instances,
                instances / seconds, mbytes / seconds)
    return {"seconds": seconds, "instances": instances, "instances_per_s": instances / seconds,
            "mb_per_s": mbytes / seconds}


def main(argv=None):
    """Run baseline and ours on the same corpus; returns {name: figures} and the speed-up."""
    init_logging()
    p = ArgumentParser(prog="python -m benchmarks.bench_preprocess")
    p.add_argument("--vocab-file", required=True, help="BERT vocab.txt")
    p.add_argument("--corpus", default=None, help="LDDL source dir (default: build the stdlib sample corpus)")
    p.add_argument("--repeat", type=int, default=8, help="copies of the corpus (amortises Dask start-up)")
    p.add_argument("--num-workers", type=int, default=2, help="Dask workers of our preprocessing")
    p.add_argument("--target-seq-length", type=int, default=128, help="max pair length")
    p.add_argument("--duplicate-factor", type=int, default=5, help="passes over the corpus")
    p.add_argument("--block-size-mb", type=float, default=0.5, help="input MB per Dask block")
    args = p.parse_args(argv)
    settings = pre.Settings(vocab_file=args.vocab_file, target_seq_length=args.target_seq_length, bin_size=64,
                            masking=True, duplicate_factor=args.duplicate_factor, sample_ratio=1.0)
    with tempfile.TemporaryDirectory(prefix="bench_preprocess.") as tmp:
        src = args.corpus
        if src is None:
            from data.prep.sample_corpus import build_sample_corpus

            src = os.path.join(tmp, "sample")
            build_sample_corpus(src, num_files=4)
        text_dir = os.path.join(tmp, "text")
        mbytes = _repeat_corpus(src, text_dir, args.repeat) / 1e6
        logger.info("corpus: %.2f MB of text, seq %d, duplicate factor %d, static masking", mbytes,
                    args.target_seq_length, args.duplicate_factor)
        started = time.perf_counter()
        n_base = run_baseline([text_dir], settings, os.path.join(tmp, "baseline.parquet"))
        results = {"baseline": _report("baseline (pure Python, 1 proc)", time.perf_counter() - started,
                                       n_base, mbytes)}
        for label, workers in (("ours (no Dask, 1 proc)", 0), (f"ours (Dask, {args.num_workers} workers)",
                                                               args.num_workers)):
            started = time.perf_counter()
            summary = pre.run(settings, [text_dir], os.path.join(tmp, f"ours{workers}"),
                              block_size_mb=args.block_size_mb, num_workers=workers)
            results[label] = _report(label, time.perf_counter() - started, summary["instances"], mbytes)
    dask_label = f"ours (Dask, {args.num_workers} workers)"
    results["speedup"] = results[dask_label]["instances_per_s"] / results["baseline"]["instances_per_s"]
    logger.info("speed-up, ours (Dask) over baseline: %.1fx instances/s", results["speedup"])
    return results


if __name__ == "__main__":
    main()
