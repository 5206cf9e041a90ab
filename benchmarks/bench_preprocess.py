"""Benchmark: BERT pretraining-data preprocessing, ours vs a single-process pure-Python baseline of Google's script.

Owns: the baseline -- the same algorithm written the straightforward way, as Google's
create_pretraining_data.py does it (pure-Python `tokenizer.FullTokenizer` per sentence, token lists,
`create_instances_from_document` on lists, a per-instance masking loop with `random.Random`), writing the
same LDDL rows to one Parquet file -- and timing it against `data.prep.preprocess_bert_pretrain` on the same
corpus in the same run, plus a per-stage profile of ours. Does not own the implementation under test.

Both do: read `<doc_id> <text>` lines, blingfire sentences, WordPiece, pairs x duplicate factor, static
masking (max predictions honoured), Parquet output. Instances differ (different RNG streams; ours draws
random B's within a block) but counts agree to within a few percent.

Ours is timed end to end as a user runs it: `python -m data.prep.preprocess_bert_pretrain ...` in a fresh
process, interpreter start-up, imports, the [UNK] probe and worker start-up included, once per
`--executors` entry (pool = forked process pool, what `--executor auto` picks for local corpora up to 1 GiB;
dask = Dask LocalCluster; inline = `--num-workers 0`). The baseline runs inside this process (no start-up
charged to it). Wall-clock and CPU seconds are both reported: on a machine busy with other work (no idle
core) the CPU-time ratio is the one worker processes cannot improve.

Corpus (`--corpus`): a Wikipedia dump (`*.xml[.bz2|.gz]`, extracted first with `data.prep.wikipedia`, not
timed), LDDL source text (a file or directory of `<doc_id> <text>` lines), or by default the embedded
stdlib-docstring corpus (`data.prep.sample_corpus`); repeated `--repeat` times with fresh doc ids.

Usage (from the repo root), the issue-10 comparison (wiki sample x4, ~10 MB, seq 128, static masking,
duplicate factor 1, 2 workers):
  python -m benchmarks.bench_preprocess --vocab-file vocab/bert-base-uncased-vocab.txt \\
      --corpus enwiki-sample-pages-articles.xml.bz2 --repeat 4 --duplicate-factor 1 --num-workers 2
"""
import zlib  # noqa: F401  -- before paddle: libpaddle's own zlib symbols crash later zlib users
import utils.preflight  # noqa: F401  -- OMP threads default; must stay before paddle

import contextlib
import logging
import os
import random
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa

from benchmarks.default_inputs import default_vocab
from data.prep import corpus
from data import lddl_format as fmt
from data.prep import preprocess_bert_pretrain as pre
from data.prep.pretraining_pairs import split_sentences
from tokenizer import FullTokenizer
from utils.cli import ArgumentParser, run_cli
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
_DUMP_SUFFIXES = (".xml", ".xml.bz2", ".xml.gz")


def _source_text(corpus_arg, tmp):
    """The LDDL source text to benchmark on: extract a dump (untimed), build the sample, or take as given."""
    if corpus_arg is None:
        from data.prep.sample_corpus import build_sample_corpus

        src = os.path.join(tmp, "sample")
        build_sample_corpus(src, num_files=4)
        return src
    if str(corpus_arg).endswith(_DUMP_SUFFIXES):
        from data.prep.wikipedia import extract

        src = os.path.join(tmp, "extracted")
        started = time.perf_counter()
        extract(str(corpus_arg), src, num_files=1, num_workers=os.cpu_count() or 1)
        logger.info("extracted %s in %.1f s (in neither figure below)", corpus_arg, time.perf_counter() - started)
        return src
    return corpus_arg


def _repeat_corpus(src, dst_dir, repeat):
    """Copy every source file `repeat` times with fresh doc ids; returns total bytes."""
    os.makedirs(dst_dir)
    total = 0
    for path in corpus.list_corpus_files([src]):
        with corpus.open_text(path) as f:
            lines = [line.rstrip("\n") for line in f if line.strip()]
        name = os.path.basename(str(path)).split(".txt")[0] + ".txt"
        for r in range(repeat):
            data = "".join(f"r{r}-{line}\n" for line in lines).encode("utf-8")
            with open(os.path.join(dst_dir, f"r{r}-{name}"), "wb") as f:
                f.write(data)
            total += len(data)
    return total


def _report(name, seconds, cpu_seconds, instances, mbytes):
    logger.info("%-40s %8.2f s (CPU %6.2f s) %9d instances %9.0f inst/s %7.2f MB/s", name, seconds, cpu_seconds,
                instances, instances / seconds, mbytes / seconds)
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "instances": instances,
            "instances_per_s": instances / seconds, "mb_per_s": mbytes / seconds}


def _children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _ours_command(args, text_dir, sink, executor):
    return [sys.executable, "-m", "data.prep.preprocess_bert_pretrain", "--source", text_dir, "--sink", sink,
            "--vocab-file", args.vocab_file, "--target-seq-length", str(args.target_seq_length),
            "--bin-size", "64", "--masking", "--duplicate-factor", str(args.duplicate_factor),
            "--sample-ratio", "1", "--block-size-mb", str(args.block_size_mb),
            "--num-workers", "0" if executor == "inline" else str(args.num_workers),
            "--executor", "auto" if executor == "inline" else executor]


def run_ours(args, text_dir, sink, executor):
    """Our CLI in a fresh process, as a user runs it; returns (wall seconds, CPU seconds of it and its workers,
    instances written)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])))
    cpu = _children_cpu()
    started = time.perf_counter()
    done = subprocess.run(_ours_command(args, text_dir, sink, executor), env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    seconds, cpu = time.perf_counter() - started, _children_cpu() - cpu
    if done.returncode != 0:
        raise RuntimeError(f"preprocess_bert_pretrain --executor {executor} failed (exit {done.returncode}):\n"
                           f"{done.stderr[-2000:]}")
    return seconds, cpu, sum(fmt.read_num_samples(sink).values())


@contextlib.contextmanager
def _timed(times, stage):
    started = time.perf_counter()
    yield
    times[stage] += time.perf_counter() - started


def stage_profile(settings, text_dir, block_size_mb):
    """Seconds per stage of our pipeline over every block, run inline in this process (cold word cache).

    Returns:
      dict stage -> seconds: start-up (tokenizer build), read+sentences, tokenize, pairs, masking+rows
      (masking, LDDL columns), write (binning, shuffle, Parquet).
    """
    from data.prep.pretraining_pairs import create_instances, tokenize_documents

    times = dict.fromkeys(("start-up", "read+sentences", "tokenize", "pairs", "masking+rows", "write"), 0.0)
    pre._tokenizer.cache_clear()
    with _timed(times, "start-up"):
        tok, vocab_strings = pre._tokenizer(settings.vocab_file, settings.do_lower_case)
    blocks = pre.plan_blocks(corpus.list_corpus_files([text_dir]), max(1, int(block_size_mb * (1 << 20))), "lines")
    with tempfile.TemporaryDirectory(prefix="bench_stages.") as out_dir:
        for block in blocks:  # the steps of `pre.block_rows` and `pre._write_block`, timed one by one
            with _timed(times, "read+sentences"):
                docs_text = pre.read_block_documents(block, settings.seed, settings.sample_ratio)
            with _timed(times, "tokenize"):
                docs = tokenize_documents(docs_text, encode_ids_batch=tok.encode_ids_batch)
            tables = []
            for dup in range(settings.duplicate_factor):
                rng = np.random.default_rng([settings.seed, block.block_id, dup])
                with _timed(times, "pairs"):
                    inst = create_instances(docs, random.Random(int(rng.integers(0, 2**63))),
                                            settings.target_seq_length, settings.short_seq_prob)
                with _timed(times, "masking+rows"):
                    if len(inst):
                        tables.append(pre.instances_table(inst, docs.token_ids, rng, settings, tok.special_ids,
                                                          vocab_strings))
            with _timed(times, "write"):
                if tables:
                    table = pa.concat_tables(tables)
                    seed = [settings.seed, block.block_id, settings.duplicate_factor]
                    order = np.random.default_rng(seed).permutation(len(table))
                    pre._write_block(table, order, block.block_id, settings, out_dir)
    pre._tokenizer.cache_clear()
    return times


def main(argv=None):
    """Run baseline and ours on the same corpus; returns {name: figures} and the speed-ups."""
    init_logging()
    p = ArgumentParser(prog="python -m benchmarks.bench_preprocess")
    p.add_argument("--vocab-file", default=None,
                   help="BERT vocab.txt (default: vocab/bert-base-uncased-vocab.txt when downloaded, else a vocab "
                        "built once from the embedded sample corpus)")
    p.add_argument("--corpus", default=None,
                   help="Wikipedia dump (*.xml[.bz2|.gz], extracted first, untimed) or LDDL source text file/dir "
                        "(default: build the stdlib sample corpus)")
    p.add_argument("--repeat", type=int, default=8, help="copies of the corpus, each with fresh doc ids")
    p.add_argument("--num-workers", type=int, default=2, help="worker processes of our preprocessing")
    p.add_argument("--executors", default="pool,inline,dask",
                   help="comma-separated ways to run ours: pool, dask, auto (`--executor` values, with "
                        "--num-workers) or inline (--num-workers 0, this process alone)")
    p.add_argument("--target-seq-length", type=int, default=128, help="max pair length")
    p.add_argument("--duplicate-factor", type=int, default=5, help="passes over the corpus")
    p.add_argument("--block-size-mb", type=float, default=0.5, help="input MB per block (task)")
    p.add_argument("--no-stages", dest="stages", action="store_false",
                   help="skip the per-stage profile of ours (inline, one process)")
    args = p.parse_args(argv)
    args.vocab_file = default_vocab() if args.vocab_file is None else args.vocab_file
    executors = [e.strip() for e in args.executors.split(",") if e.strip()]
    bad = [e for e in executors if e not in pre.EXECUTORS + ("inline",)]
    if bad or not executors:
        raise ValueError(f"--executors {args.executors!r}: each must be one of inline, {', '.join(pre.EXECUTORS)}")
    if args.repeat < 1:
        raise ValueError(f"--repeat {args.repeat} is invalid: it must be >= 1")
    settings = pre.Settings(vocab_file=args.vocab_file, target_seq_length=args.target_seq_length, bin_size=64,
                            masking=True, duplicate_factor=args.duplicate_factor, sample_ratio=1.0)
    with tempfile.TemporaryDirectory(prefix="bench_preprocess.") as tmp:
        src = _source_text(args.corpus, tmp)
        text_dir = os.path.join(tmp, "text")
        mbytes = _repeat_corpus(src, text_dir, args.repeat) / 1e6
        logger.info("corpus: %.2f MB of text (x%d), seq %d, duplicate factor %d, static masking, blocks of %g MB",
                    mbytes, args.repeat, args.target_seq_length, args.duplicate_factor, args.block_size_mb)
        started, cpu = time.perf_counter(), time.process_time()
        n_base = run_baseline([text_dir], settings, os.path.join(tmp, "baseline.parquet"))
        base = _report("baseline (pure Python, 1 proc)", time.perf_counter() - started, time.process_time() - cpu,
                       n_base, mbytes)
        results = {"baseline": base}
        for executor in executors:
            seconds, cpu, instances = run_ours(args, text_dir, os.path.join(tmp, f"ours-{executor}"), executor)
            workers = "1 process" if executor == "inline" else f"{args.num_workers} workers"
            label = f"ours ({executor}, {workers}, end to end)"
            ours = results[label] = _report(label, seconds, cpu, instances, mbytes)
            ours["speedup"] = ours["instances_per_s"] / base["instances_per_s"]
            # CPU seconds per instance: the ratio a machine busy with other work (no idle core) would see.
            ours["cpu_speedup"] = (base["cpu_seconds"] / base["instances"]) / (cpu / instances)
            logger.info("speed-up of ours (%s) over the baseline: %.2fx instances/s, %.2fx MB/s; %.2fx in CPU "
                        "time per instance", executor, ours["speedup"], ours["mb_per_s"] / base["mb_per_s"],
                        ours["cpu_speedup"])
        if args.stages:
            stages = stage_profile(settings, text_dir, args.block_size_mb)
            results["stages"] = stages
            logger.info("ours per stage (inline, 1 process, cold word cache): %s; total %.2f s",
                        ", ".join(f"{k} {v:.2f} s" for k, v in stages.items()), sum(stages.values()))
    return results


if __name__ == "__main__":
    sys.exit(run_cli(main))
