"""Preprocessing: text corpora -> (optionally masked, binned) LDDL-format Parquet for BERT pretraining.

Usage (from the repo root):
  python -m data.prep.preprocess_bert_pretrain --wikipedia data/download/wikipedia/source \\
      --sink data/pretrain/phase1 --vocab-file vocab/bert-large-uncased-vocab.txt \\
      --target-seq-length 128 --bin-size 64 --masking --num-workers 8
  then: python -m data.prep.balance_dask_output --indir data/pretrain/phase1 --num-shards 256

Owns: finding input files, cutting them into blocks, the per-block pipeline (read -> sentences ->
tokens -> pairs x duplicate_factor -> static masking -> per-bin Parquet files) and running blocks: in this
process (`--num-workers 0`), on a pool of local processes forked from this one, or on Dask (a LocalCluster,
a running scheduler or dask-mpi); `--executor auto` takes the pool for local corpora up to 1 GiB, whose
workers start in milliseconds where a LocalCluster takes seconds (`choose_executor`). Tokenization goes
through `tokenizer.BertTokenizer.encode_ids_batch` (a word cache in front of HF `tokenizers`).
Pair semantics live in `data.prep.pretraining_pairs`, masking in `data.masking`, the file format in
`data.lddl_format`.

Determinism: a block is a byte range of one input file (`--block-size-mb`, cut at record boundaries: a
block owns the lines -- or, for Google's blank-line format, the documents -- that START inside its range),
so blocks do not depend on the number of workers. Block k uses np.random.default_rng([seed, k, d]) for
duplicate d (pairs through a random.Random seeded from it, then masking) and
default_rng([seed, k, duplicate_factor]) to shuffle the block's rows; its files are `part.<k>.parquet[_<bin>]`.
Document sampling (`--sample-ratio`) hashes each document's text with the seed, so a document is kept or
dropped independently of blocks. The output is therefore byte-identical for any number of workers.

Input formats (`--input-format`): `lines` = LDDL's source format, one document per line `<doc_id> <text>`,
split into sentences with blingfire; `bert` = Google's format, one sentence per line, blank line between
documents, each line taken as one sentence (as Google does); `auto` decides per file
(`data.prep.corpus.sniff_format`). Files are found by `data.prep.corpus.list_corpus_files` (`*.txt[.gz|.bz2]` under
directories, recursively); `.gz`/`.bz2` files are one block each (a compressed stream cannot be entered
at an offset).

Differences from LDDL's preprocessor, on purpose: it never reads `--max-predictions-per-seq` (we honour it),
its output is not deterministic, and it needs `nltk` punkt (a download). We write `.num_samples.json`, and
no `_metadata`/`_common_metadata` (LDDL's loaders do not read them). `--schedule` defaults to `local`.
With `--scheduler ADDR` the sink must be on a filesystem every worker can write.
"""
import utils.preflight  # noqa: F401  -- zlib before paddle, OMP threads default; must stay first

import contextlib
import dataclasses
import functools
import hashlib
import importlib
import itertools
import logging
import os
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data.prep import corpus
from data import lddl_format as fmt
from data.masking import mask_batch
from data.prep.pretraining_pairs import create_instances, split_sentences, tokenize_documents
from utils.cli import ArgumentParser, run_cli
from utils.fs import atomic_output_dir, refuse_output_over_inputs
from utils.logger import progress
from utils.workers import process_pool

logger = logging.getLogger(__name__)

_MB = 1 << 20
_MASK_CHUNK_ROWS = 4096  # rows masked per mask_batch call: bounds memory at seq 512; fixed for determinism
_COMPRESSED = (".gz", ".bz2")
_MAX_SEQ = 65535  # num_tokens and masked positions are uint16 in the format


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a block task needs; validated on construction. Fields mirror the CLI flags of the same
    names (bin_size None = `--no-bin`; masking True = `--masking`, static masking).

    Raises:
      ValueError: naming the flag and the bad value.
    """
    vocab_file: str
    do_lower_case: bool = True
    target_seq_length: int = 128
    bin_size: Optional[int] = 64
    masking: bool = False
    max_predictions_per_seq: int = 20
    masked_lm_ratio: float = 0.15
    short_seq_prob: float = 0.1
    duplicate_factor: int = 5
    sample_ratio: float = 0.9
    seed: int = 12345
    holdout_fraction: float = 0.0

    def __post_init__(self):
        checks = [
            (16 <= self.target_seq_length <= _MAX_SEQ, "--target-seq-length", "an integer in [16, 65535]"),
            (self.bin_size is None or self.bin_size >= 1, "--bin-size", ">= 1 (or --no-bin)"),
            (self.bin_size is None or self.bin_size < 1 or self.target_seq_length % self.bin_size == 0,
             "--bin-size", f"a divisor of --target-seq-length {self.target_seq_length}"),
            (self.max_predictions_per_seq >= 1, "--max-predictions-per-seq", ">= 1"),
            (0.0 < self.masked_lm_ratio <= 1.0, "--masked-lm-ratio", "in (0, 1]"),
            (0.0 <= self.short_seq_prob <= 1.0, "--short-seq-prob", "in [0, 1]"),
            (self.duplicate_factor >= 1, "--duplicate-factor", ">= 1"),
            (0.0 < self.sample_ratio <= 1.0, "--sample-ratio", "in (0, 1]"),
            (0.0 <= self.holdout_fraction < 1.0, "--holdout-fraction", "in [0, 1)"),
            (self.seed >= 0, "--seed", ">= 0"),
        ]
        for ok, flag, want in checks:
            if not ok:
                value = getattr(self, flag[2:].replace("-", "_"))
                raise ValueError(f"{flag} {value} is invalid: it must be {want}")

    @property
    def nbins(self):
        return 1 if self.bin_size is None else fmt.num_bins(self.target_seq_length, self.bin_size)

    @property
    def schema(self):
        return fmt.make_schema(self.masking, self.bin_size is not None)


@dataclasses.dataclass(frozen=True)
class Block:
    """Records of `path` that start in byte range [start, end); `fmt` is 'lines' or 'bert'."""
    block_id: int
    path: str
    start: int
    end: int
    fmt: str


# ----------------------------------------------------------------------------------------------------
# Inputs and blocks
# ----------------------------------------------------------------------------------------------------

def _file_format(path, input_format):
    if input_format != "auto":
        return input_format
    try:
        return corpus.sniff_format(path)
    except UnicodeDecodeError as exc:
        raise ValueError(f"input file '{path}' is not UTF-8 text ({exc.reason})") from None


def plan_blocks(files, block_size, input_format):
    """Cut input files into blocks of about `block_size` bytes; block ids are global and in file order.

    Args:
      files: list of paths from `data.prep.corpus.list_corpus_files`.
      block_size: int bytes > 0.
      input_format: 'auto', 'lines' or 'bert'.

    Returns:
      list[Block]. Compressed files are one block each.
    """
    blocks = []
    for path in map(str, files):
        file_fmt = _file_format(path, input_format)
        if path.endswith(_COMPRESSED):
            spans = [(0, sys.maxsize)]
        else:
            size = os.path.getsize(path)
            spans = [(s, min(s + block_size, size)) for s in range(0, max(size, 1), block_size)]
        first_id = len(blocks)
        blocks.extend([Block(first_id + i, path, s, e, file_fmt) for i, (s, e) in enumerate(spans)])
    return blocks


def _first_line_at_or_after(f, pos):
    """Offset of the first line that starts at or after `pos`."""
    if pos == 0:
        return 0
    f.seek(pos - 1)
    f.readline()
    return f.tell()


def _previous_line_blank(f, pos):
    """Whether the line ending just before offset `pos` (a line start > 0) is blank (whitespace only)."""
    end = pos - 1  # the newline that ends that line
    while end > 0:
        begin = max(0, end - 4096)
        f.seek(begin)
        tail = f.read(end - begin).rstrip(b" \t\r\f\v")
        if tail:
            return tail.endswith(b"\n")
        end = begin
    return True


def _decode(line, block):
    try:
        return line.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise ValueError(f"input file '{block.path}' is not UTF-8 text ({exc})") from None


def _iter_line_documents(f, block):
    """Lines format: every line starting in the block is `<doc_id> <text>`; yields the text."""
    pos = _first_line_at_or_after(f, block.start)
    f.seek(pos)
    while pos < block.end:
        line = f.readline()
        if not line:
            return
        pos += len(line)
        parts = _decode(line, block).split(None, 1)
        if len(parts) == 2:
            yield parts[1]


def _iter_bert_documents(f, block):
    """Google format: yields each document (list of sentence lines) whose first line starts in the block."""
    pos = _first_line_at_or_after(f, block.start)
    after_blank = pos == 0 or _previous_line_blank(f, pos)
    f.seek(pos)
    doc, owned = [], False
    for line in iter(f.readline, b""):
        line_start, pos = pos, pos + len(line)
        if not line.strip():
            if owned and doc:
                yield doc
            doc, owned, after_blank = [], False, True
            continue
        if after_blank:
            if line_start >= block.end:
                return
            owned, after_blank = True, False
        if owned:
            doc.append(_decode(line, block))
    if owned and doc:
        yield doc


def _keep(text, seed, sample_ratio):
    """Deterministic document sampling: a keyed hash of the text, compared with the ratio."""
    if sample_ratio >= 1.0:
        return True
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=seed.to_bytes(8, "little")).digest()
    return int.from_bytes(digest, "little") < sample_ratio * 2.0**64


# Keys the hold-out hash apart from the sampling hash (same seed), so hold-out and sampling are independent.
_HOLDOUT_KEY = 0x6B6F6C64


def held_out(text, seed, holdout_fraction):
    """Whether a document goes to the evaluation set: a keyed hash of its text (not its position, so the
    choice does not depend on blocks or workers), compared with the fraction."""
    return holdout_fraction > 0 and _keep(text, seed ^ _HOLDOUT_KEY, holdout_fraction)


def read_block_documents(block, seed=12345, sample_ratio=1.0, holdout_fraction=0.0, part="train"):
    """The sampled documents of one block, each as a list of sentences.

    Args:
      block: Block.
      seed: int, keys the sampling and hold-out hashes.
      sample_ratio: float in (0, 1], fraction of documents kept.
      holdout_fraction: float in [0, 1), fraction of the kept documents held out for evaluation.
      part: "train" (the kept documents that are not held out) or "holdout" (the held-out ones): the two
        never share a document.

    Returns:
      list[list[str]].

    Raises:
      ValueError: the file is not UTF-8.
    """
    want_holdout = part == "holdout"
    docs = []
    with corpus.open_binary(block.path) as f:
        if block.fmt == "bert":
            for sentences in _iter_bert_documents(f, block):
                text = "\n".join(sentences)
                if _keep(text, seed, sample_ratio) and held_out(text, seed, holdout_fraction) == want_holdout:
                    docs.append(sentences)
        else:
            for text in _iter_line_documents(f, block):
                if _keep(text, seed, sample_ratio) and held_out(text, seed, holdout_fraction) == want_holdout:
                    docs.append(split_sentences(text))
    return docs


# ----------------------------------------------------------------------------------------------------
# Instances -> LDDL rows
# ----------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=2)
def _tokenizer(vocab_file, do_lower_case):
    """One tokenizer per worker process (built on first use, reused by every block it runs)."""
    from tokenizer import BertTokenizer

    tok = BertTokenizer(vocab_file, do_lower_case=do_lower_case)
    vocab_strings = pa.array([tok.inv_vocab[i] for i in range(tok.vocab_size)], type=pa.string())
    return tok, vocab_strings


def _gather_ranges(values, starts, ends):
    """Concatenate values[starts[i]:ends[i]] for all i (vectorised). Returns (flat, lengths)."""
    lengths = ends - starts
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else lengths
    idx = np.repeat(starts - offsets, lengths) + np.arange(int(lengths.sum()))
    return values[idx], lengths


def _join_tokens(vocab_strings, flat_ids, lengths):
    """Space-joined token strings per row, from concatenated ids and per-row lengths."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    tokens = pc.take(vocab_strings, pa.array(flat_ids, type=pa.int32()))
    return pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), tokens), " ")


def _layout(inst, token_ids, special_ids):
    """Dense `[CLS] A [SEP] B [SEP]` ids for rows of `inst`, plus the A / B position masks.

    Returns:
      ids int64 [N, L], in_a bool [N, L], in_b bool [N, L], num_tokens int64 [N]; L = max num_tokens.
    """
    a_len, b_len = (inst[:, 1] - inst[:, 0])[:, None], (inst[:, 3] - inst[:, 2])[:, None]
    num_tokens = (a_len + b_len + 3)[:, 0]
    col = np.arange(int(num_tokens.max()))[None, :]
    in_a = (col >= 1) & (col <= a_len)
    in_b = (col >= a_len + 2) & (col < a_len + 2 + b_len)
    src = np.where(in_a, inst[:, 0:1] + col - 1, np.where(in_b, inst[:, 2:3] + col - a_len - 2, 0))
    ids = np.where(in_a | in_b, token_ids[src], special_ids["pad"]).astype(np.int64)
    rows = np.arange(len(inst))
    ids[:, 0] = special_ids["cls"]
    ids[rows, a_len[:, 0] + 1] = special_ids["sep"]
    ids[rows, num_tokens - 1] = special_ids["sep"]
    return ids, in_a, in_b, num_tokens


def _masked_columns(inst, token_ids, rng, settings, special_ids, vocab_size):
    """Static masking of instances, chunk by chunk. Returns flat ids / lengths for A, B, positions, labels."""
    parts = {k: [] for k in ("a", "a_len", "b", "b_len", "pos", "n_pred", "labels")}
    for lo in range(0, len(inst), _MASK_CHUNK_ROWS):
        chunk = inst[lo:lo + _MASK_CHUNK_ROWS]
        ids, in_a, in_b, num_tokens = _layout(chunk, token_ids, special_ids)
        masked, labels = mask_batch(ids, in_a | in_b, num_tokens, rng, vocab_size=vocab_size,
                                    mask_id=special_ids["mask"], masked_lm_prob=settings.masked_lm_ratio,
                                    max_predictions_per_seq=settings.max_predictions_per_seq)
        chosen = labels >= 0
        # Boolean indexing walks rows in order and columns ascending, so each row's tokens stay in
        # order and its positions come out sorted, as LDDL/Google store them.
        parts["a"].append(masked[in_a])
        parts["a_len"].append(in_a.sum(axis=1))
        parts["b"].append(masked[in_b])
        parts["b_len"].append(in_b.sum(axis=1))
        parts["pos"].append(np.nonzero(chosen)[1])
        parts["n_pred"].append(chosen.sum(axis=1))
        parts["labels"].append(labels[chosen])
    return {k: np.concatenate(v) for k, v in parts.items()}


def instances_table(inst, token_ids, rng, settings, special_ids, vocab_strings):
    """LDDL rows (without bin_id) for one set of instances.

    Args:
      inst: int64 [N, 5] from `create_instances` (N >= 1).
      token_ids: int32 [T], the block's tokens the instance ranges point into.
      rng: numpy.random.Generator, used for static masking only.
      settings: Settings.
      special_ids: dict pad/unk/cls/sep/mask -> id.
      vocab_strings: pyarrow.StringArray, token of each id.

    Returns:
      pyarrow.Table with the columns of `fmt.make_schema(settings.masking, binned=False)`.
    """
    num_tokens = (inst[:, 1] - inst[:, 0]) + (inst[:, 3] - inst[:, 2]) + 3
    columns = {}
    if settings.masking:
        cols = _masked_columns(inst, token_ids, rng, settings, special_ids, len(vocab_strings))
        columns["A"] = _join_tokens(vocab_strings, cols["a"], cols["a_len"])
        columns["B"] = _join_tokens(vocab_strings, cols["b"], cols["b_len"])
    else:
        columns["A"] = _join_tokens(vocab_strings, *_gather_ranges(token_ids, inst[:, 0], inst[:, 1]))
        columns["B"] = _join_tokens(vocab_strings, *_gather_ranges(token_ids, inst[:, 2], inst[:, 3]))
    columns["is_random_next"] = pa.array(inst[:, 4].astype(bool))
    columns["num_tokens"] = pa.array(num_tokens.astype(np.uint16))
    if settings.masking:
        columns["masked_lm_positions"] = fmt.encode_positions_column(cols["pos"], cols["n_pred"])
        columns["masked_lm_labels"] = _join_tokens(vocab_strings, cols["labels"], cols["n_pred"])
    return pa.table(columns, schema=fmt.make_schema(settings.masking, binned=False))


def block_rows(docs, block_id, settings, special_ids, vocab_strings):
    """All rows of one block: instances for every duplicate, masked if asked, and the block's shuffle.

    Args:
      docs: TokenizedDocuments of the block.
      block_id: int, part of every RNG seed.
      settings, special_ids, vocab_strings: see `instances_table`.

    Returns:
      (table, order): pyarrow.Table (unbinned schema, duplicates one after another, possibly empty) and
      int64 [len(table)], the permutation in which rows are written. The permutation is applied while
      writing each bin, so the block is never copied whole just to shuffle it.
    """
    tables = []
    for dup in range(settings.duplicate_factor):
        rng = np.random.default_rng([settings.seed, block_id, dup])
        pair_rng = random.Random(int(rng.integers(0, 2**63)))
        inst = create_instances(docs, pair_rng, settings.target_seq_length, settings.short_seq_prob)
        if len(inst):
            tables.append(instances_table(inst, docs.token_ids, rng, settings, special_ids, vocab_strings))
    if not tables:
        return fmt.make_schema(settings.masking, binned=False).empty_table(), np.zeros(0, dtype=np.int64)
    table = pa.concat_tables(tables)
    order = np.random.default_rng([settings.seed, block_id, settings.duplicate_factor]).permutation(len(table))
    return table, order


def _write_block(table, order, block_id, settings, out_dir):
    """Write shuffled rows as `part.<block_id>.parquet` or one file per bin; returns {basename: rows}."""
    if settings.bin_size is None:
        name = fmt.part_name(block_id)
        fmt.write_table(table.take(pa.array(order)), os.path.join(out_dir, name), settings.schema)
        return {name: len(order)}
    bins = fmt.bin_ids(table.column("num_tokens").to_numpy(), settings.bin_size, settings.nbins)
    counts = {}
    for b in range(settings.nbins):  # every bin, even empty: LDDL readers expect bins 0..n-1
        rows = order[bins[order] == b]
        piece = table.take(pa.array(rows)).append_column("bin_id", pa.array(np.full(len(rows), b, np.int64)))
        name = fmt.part_name(block_id, b)
        fmt.write_table(piece, os.path.join(out_dir, name), settings.schema)
        counts[name] = len(rows)
    return counts


def process_block(block, settings, out_dir, holdout_dir=None):
    """The Dask task: one block end to end, written as `part.<block_id>.parquet[_<bin>]` into `out_dir`.

    Args:
      block: Block.
      settings: Settings.
      out_dir: directory to write into (the sink's temporary directory).
      holdout_dir: with `settings.holdout_fraction` > 0, where the held-out documents' rows go (the hold-out
        sink's temporary directory), in files of the same names.

    Returns:
      dict: 'files' {basename: rows} (empty when the block yields no rows), 'documents' (kept, non-empty),
      'text_chars' (characters of their sentences), 'tokens' and 'unk_tokens' (WordPiece tokens of those
      documents, and how many of them are [UNK]), 'random_next' (rows whose B is a random next sentence)
      and 'lone_documents' (1 when the block's rows all come from one document, so none can have a random
      B; else 0); with a hold-out also 'holdout' (the same dict for the held-out documents).
    """
    stats = _process_part(block, settings, out_dir, "train")
    if holdout_dir is not None and settings.holdout_fraction > 0:
        stats["holdout"] = _process_part(block, settings, holdout_dir, "holdout")
    return stats


def _process_part(block, settings, out_dir, part):
    tok, vocab_strings = _tokenizer(settings.vocab_file, settings.do_lower_case)
    docs_text = read_block_documents(block, settings.seed, settings.sample_ratio, settings.holdout_fraction, part)
    docs = tokenize_documents(docs_text, encode_ids_batch=tok.encode_ids_batch)
    table, order = block_rows(docs, block.block_id, settings, tok.special_ids, vocab_strings)
    files = _write_block(table, order, block.block_id, settings, out_dir) if len(order) else {}
    return {"files": files, "documents": docs.num_documents,
            "text_chars": sum(len(s) for d in docs_text for s in d), "tokens": int(len(docs.token_ids)),
            "unk_tokens": int(np.count_nonzero(docs.token_ids == tok.special_ids["unk"])),
            "random_next": int(np.count_nonzero(table.column("is_random_next").to_numpy(zero_copy_only=False))),
            "lone_documents": int(docs.num_documents == 1 and len(order) > 0)}


# ----------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------

EXECUTORS = ("auto", "pool", "dask")
# `--executor auto` runs a local corpus up to this size on a forked process pool, larger ones on Dask's
# LocalCluster. The pool starts in milliseconds (workers are forked with the tokenizer already built and its
# word cache warm from the probe) where a LocalCluster takes seconds (see README, preprocessing benchmark);
# past this size those seconds are noise and Dask's memory limits, spilling and worker restarts matter more.
_POOL_MAX_BYTES = 1 << 30


def choose_executor(executor, schedule, scheduler, num_workers, input_bytes):
    """Which engine runs the blocks: 'inline' (this process), 'pool' (forked local processes) or 'dask'.

    Args:
      executor: '--executor': 'auto', 'pool' or 'dask'.
      schedule, scheduler, num_workers: the flags of the same names.
      input_bytes: int, size of the input files (compressed files count as their size on disk).

    Returns:
      str.

    Raises:
      ValueError: '--executor pool' with --scheduler or --schedule mpi (a pool is one machine's processes).
    """
    if executor not in EXECUTORS:
        raise ValueError(f"--executor {executor!r} is invalid: it must be one of {', '.join(EXECUTORS)}")
    distributed = bool(scheduler) or schedule != "local"
    if executor == "pool" and distributed:
        raise ValueError("--executor pool runs local processes only; drop it with --scheduler / --schedule mpi")
    if distributed:
        return "dask"
    if num_workers == 0:
        return "inline"
    if executor == "auto":
        return "pool" if input_bytes <= _POOL_MAX_BYTES or not hasattr(os, "fork") else "dask"
    return executor


@contextlib.contextmanager
def _executor(kind, schedule, scheduler, num_workers, threads_per_worker):
    """What `_run_blocks` submits to: None (inline), a ProcessPoolExecutor, or a Dask client (and, for a
    local schedule, its cluster); shut down on exit."""
    if kind == "inline":
        yield None  # decided before importing distributed: that import alone costs about a second
        return
    if kind == "pool":
        # fork: the workers start with this process's modules, tokenizer and warm word cache, no import.
        # They end with this process, even when it is SIGKILLed (utils.workers.exit_with_parent).
        with process_pool(num_workers, "fork") as pool:
            yield pool
        return
    from distributed import Client, LocalCluster

    # Importing distributed applies its own logging config (INFO); keep it as quiet as init_logging asks.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    if scheduler:
        with _connect(Client, scheduler) as client:
            yield client
    elif schedule == "mpi":
        try:
            from dask_mpi import initialize
        except ImportError:
            raise ValueError("--schedule mpi needs dask-mpi and mpi4py (pip install dask-mpi mpi4py); "
                             "use --schedule local or --scheduler ADDR instead") from None
        initialize(nanny=False)
        with Client() as client:
            yield client
    else:
        with LocalCluster(n_workers=num_workers, threads_per_worker=threads_per_worker, processes=True,
                          dashboard_address=":0", scheduler_kwargs={"dashboard": False}) as cluster, \
                Client(cluster) as client:
            yield client


@contextlib.contextmanager
def _tokenizers_single_threaded():
    """TOKENIZERS_PARALLELISM=false (unless the user set it) while a forked pool runs: each worker is one
    process per core already, and HF refuses (with a warning on stderr) to use its thread pool in a
    process forked after the parent used it."""
    if "TOKENIZERS_PARALLELISM" in os.environ:
        yield
        return
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        os.environ.pop("TOKENIZERS_PARALLELISM", None)


def _connect(client_class, scheduler):
    """A client of the running scheduler at `scheduler`, or ValueError naming the address.

    The wait is dask's `distributed.comm.timeouts.connect` (30 s unless configured, e.g. by the environment
    variable DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=10s).
    """
    try:
        return client_class(scheduler)
    except (OSError, ValueError, TypeError) as err:  # refused / timed out / not an address
        raise ValueError(f"--scheduler {scheduler}: no Dask scheduler reachable there ({err}); start one "
                         "(`dask scheduler`) and check the address, or drop --scheduler to run a local "
                         "cluster") from None


UNK_WARN_RATE = 0.05  # above this fraction of [UNK] tokens the vocab most likely does not fit the corpus
_PROBE_DOCUMENTS = 200
_PROBE_CHARS = 1 << 20


def _unk_hint(settings):
    return (f"--vocab-file '{settings.vocab_file}' does not fit this corpus (wrong language or script, or a cased "
            f"vocab with --do-lower-case / an uncased one with --no-lower-case?)")


def _probe_unknown(tok, files, input_format, settings):
    """Refuse now, before any block runs, when the corpus's first documents are nothing but [UNK].

    Looks at the first `_PROBE_DOCUMENTS` documents or `_PROBE_CHARS` characters, whichever comes first: a
    vocab that does not fit shows within a few pages, and a bounded probe keeps small runs' start-up short.
    It goes through the tokenizer's word cache, which it leaves warm for the blocks.
    """
    texts, chars = [], 0
    for _, text in itertools.islice(corpus.iter_documents(files[:1], input_format, unique_ids=False),
                                    _PROBE_DOCUMENTS):
        texts.append(text)
        chars += len(text)
        if chars >= _PROBE_CHARS:
            break
    ids = tok.encode_ids_batch(texts)[0] if texts else np.zeros(0, dtype=np.int32)
    if len(ids) and np.all(ids == tok.special_ids["unk"]):
        raise ValueError(f"all {len(ids)} tokens of the first {len(texts)} documents of '{files[0]}' are "
                         f"[UNK]: {_unk_hint(settings)}")


def _check_unknown(tokens, unk, settings):
    """Refuse a dataset that is all [UNK]; warn, with the rate, when more than UNK_WARN_RATE of it is."""
    if tokens and unk == tokens:
        raise ValueError(f"all {tokens} tokens of the corpus are [UNK]: {_unk_hint(settings)}")
    if tokens and unk / tokens > UNK_WARN_RATE:
        logger.warning("%.1f%% of the corpus's %d tokens are [UNK] (more than %.0f%%): %s", 100 * unk / tokens,
                       tokens, 100 * UNK_WARN_RATE, _unk_hint(settings))


def _block_bytes(block):
    return (os.path.getsize(block.path) if block.end == sys.maxsize else block.end - block.start)


def _run_blocks(client, blocks, settings, out_dir, holdout_dir=None):
    # Submit the task by its importable name: under `python -m` this file is `__main__`, which workers
    # cannot import, so pickling `process_block` from here would fail or copy it by value.
    task = importlib.import_module("data.prep.preprocess_bert_pretrain").process_block
    if client is None:
        yield from (task(b, settings, out_dir, holdout_dir) for b in progress(blocks, desc="blocks", unit="block"))
        return
    if isinstance(client, ProcessPoolExecutor):
        # Largest blocks first, so the last ones to finish are small and no worker idles long at the end
        # (blocks' outputs do not depend on the order they run in).
        ordered = sorted(blocks, key=_block_bytes, reverse=True)
        futures = [client.submit(task, b, settings, out_dir, holdout_dir) for b in ordered]
        try:
            for future in progress(as_completed(futures), total=len(futures), desc="blocks", unit="block"):
                yield future.result()
        except BrokenProcessPool:
            raise RuntimeError("a preprocessing worker process died (killed, or out of memory); rerun with "
                               "fewer --num-workers or a smaller --block-size-mb") from None
        finally:  # on an error (a bad input file, say), do not run the blocks still queued
            for future in futures:
                future.cancel()
        return
    from distributed import as_completed as dask_as_completed

    futures = client.map(task, blocks, settings=settings, out_dir=out_dir, holdout_dir=holdout_dir, pure=False)
    for future in progress(dask_as_completed(futures), total=len(futures), desc="blocks", unit="block"):
        yield future.result()


def run(settings, sources, sink, *, block_size_mb=32.0, input_format="auto", num_workers=0,
        threads_per_worker=1, schedule="local", scheduler=None, overwrite=False, holdout_sink=None,
        executor="auto"):
    """Preprocess `sources` into an LDDL dataset at `sink` (see module docstring).

    Args:
      settings: Settings.
      sources: list of input files / directories.
      sink: output directory; built under a temporary name and renamed when complete.
      block_size_mb: float > 0, input bytes per block.
      input_format: 'auto', 'lines' or 'bert'.
      num_workers: int >= 0 local worker processes; 0 runs blocks in this process.
      threads_per_worker: int >= 1 (Dask workers only).
      schedule: 'local' or 'mpi'.
      scheduler: address of a running Dask scheduler, or None.
      overwrite: replace an existing sink (and hold-out sink).
      holdout_sink: with `settings.holdout_fraction` > 0, the directory of the evaluation set: the held-out
        documents' rows, same settings and layout as the sink, never in the sink (default `<sink>_holdout`).
      executor: 'auto', 'pool' or 'dask': how local workers run (see `choose_executor`); the output is the
        same bytes whichever runs it.

    Returns:
      dict summary: blocks, documents, instances, files, text_chars, seconds, sink, unk_rate (fraction of
      the tokens that are [UNK]; above UNK_WARN_RATE a warning is logged), random_next and random_next_share
      (instances whose B is a random next sentence, and their fraction; a warning says when blocks held a
      single document, which gives none); with a hold-out also holdout_sink, holdout_documents,
      holdout_instances, holdout_random_next_share.

    Raises:
      ValueError: bad sources/vocab/flags, output exists, the corpus yields zero instances (or zero held-out
        ones), or every token is [UNK] (the vocab does not fit the corpus; the first documents are checked
        before any work).
    """
    started = time.perf_counter()
    if block_size_mb <= 0 or num_workers < 0 or threads_per_worker < 1:
        raise ValueError("--block-size-mb must be > 0, --num-workers >= 0, --local-threads-per-worker >= 1")
    holdout_sink = _holdout_sink(settings, sink, holdout_sink)
    inputs = [("--source", path) for path in sources] + [("--vocab-file", settings.vocab_file)]
    for flag, path in (("--sink", sink), ("--holdout-sink", holdout_sink)):
        if path is not None:
            refuse_output_over_inputs(flag, path, inputs)
    for flag, path in (("--sink", sink), ("--holdout-sink", holdout_sink)):
        if path is not None and os.path.exists(path) and not overwrite:
            raise ValueError(f"{flag} '{path}' already exists; remove it or pass --overwrite")
    files = corpus.list_corpus_files(sources)
    kind = choose_executor(executor, schedule, scheduler, num_workers, sum(os.path.getsize(f) for f in files))
    with contextlib.ExitStack() as stack:
        if kind == "pool":
            stack.enter_context(_tokenizers_single_threaded())  # before the probe's first HF call
        return _run(settings, sources, files, sink, holdout_sink, kind, block_size_mb=block_size_mb,
                    input_format=input_format, num_workers=num_workers, threads_per_worker=threads_per_worker,
                    schedule=schedule, scheduler=scheduler, overwrite=overwrite, started=started)


def _run(settings, sources, files, sink, holdout_sink, kind, *, block_size_mb, input_format, num_workers,
         threads_per_worker, schedule, scheduler, overwrite, started):
    """`run` once the inputs and the executor are known."""
    tok, _ = _tokenizer(settings.vocab_file, settings.do_lower_case)  # vocab errors surface here, early
    _probe_unknown(tok, files, input_format, settings)
    blocks = plan_blocks(files, max(1, int(block_size_mb * _MB)), input_format)
    logger.info("%d input files -> %d blocks; vocab %s (%d tokens); %s", len(files), len(blocks),
                settings.vocab_file, tok.vocab_size,
                "in this process" if kind == "inline" else f"{num_workers} {kind} workers" if kind == "pool"
                else "on Dask")
    # The output locations first: an unwritable --sink is reported before a cluster is started. Both are
    # renamed into place only when every block is done: never a training set without its hold-out.
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_output_dir(sink, overwrite=overwrite))
        holdout_tmp = stack.enter_context(atomic_output_dir(holdout_sink, overwrite=overwrite)) if holdout_sink else None
        client = stack.enter_context(_executor(kind, schedule, scheduler, num_workers, threads_per_worker))
        total, held = _tally(_run_blocks(client, blocks, settings, tmp, holdout_tmp))
        _check_unknown(total["tokens"], total["unk_tokens"], settings)  # inside: an all-[UNK] set is never written
        if sum(total["files"].values()) == 0:
            raise ValueError(f"the corpus {', '.join(map(str, sources))} produced zero instances "
                             f"({total['documents']} documents after sampling)")
        if holdout_tmp is not None:
            if sum(held["files"].values()) == 0:
                raise ValueError(f"--holdout-fraction {settings.holdout_fraction} held out {held['documents']} "
                                 f"documents, which gave zero instances; raise it (or give a larger corpus)")
            fmt.write_num_samples(holdout_tmp, held["files"])
            fmt.write_shard_digests(holdout_tmp, held["files"])
        fmt.write_num_samples(tmp, total["files"])
        fmt.write_shard_digests(tmp, total["files"])
    counts, tokens = total["files"], total["tokens"]
    summary = {"blocks": len(blocks), "documents": total["documents"], "instances": sum(counts.values()),
               "files": len(counts), "text_chars": total["text_chars"], "seconds": time.perf_counter() - started,
               "sink": os.path.abspath(sink), "unk_rate": total["unk_tokens"] / tokens if tokens else 0.0,
               "random_next": total["random_next"],
               "random_next_share": _report_random_next(total, len(blocks), "--sink")}
    if holdout_sink:
        summary.update(holdout_sink=os.path.abspath(holdout_sink), holdout_documents=held["documents"],
                       holdout_instances=sum(held["files"].values()),
                       holdout_random_next_share=_report_random_next(held, len(blocks), "--holdout-sink"))
        logger.info("held out %(holdout_instances)d instances from %(holdout_documents)d documents in "
                    "%(holdout_sink)s (never in the training sink)", summary)
    logger.info("wrote %(instances)d instances from %(documents)d documents into %(files)d files in %(sink)s "
                "(%(seconds).1f s)", summary)
    if settings.sample_ratio < 1.0:  # the reference's default 0.9 silently drops a tenth of a corpus
        logger.info("--sample-ratio %g kept about %.0f %% of the documents (each one kept or dropped by a hash "
                    "of its text and --seed); --sample-ratio 1 keeps them all", settings.sample_ratio,
                    100 * settings.sample_ratio)
    return summary


_COUNTERS = ("documents", "text_chars", "tokens", "unk_tokens", "random_next", "lone_documents")


def _tally(block_stats):
    """Sum `process_block` results: (training totals, hold-out totals), each with 'files' {basename: rows} and
    the counters of _COUNTERS."""
    totals = [dict({"files": {}}, **dict.fromkeys(_COUNTERS, 0)) for _ in range(2)]
    for stats in block_stats:
        for total, part in zip(totals, (stats, stats.get("holdout"))):
            if part is None:
                continue
            total["files"].update(part["files"])
            for key in _COUNTERS:
                total[key] += part[key]
    return totals


def _report_random_next(total, blocks, what):
    """Log the share of rows whose B is a random next sentence, and warn when blocks held one document only.

    Why: B is drawn from another document of the same block (as Google draws from another document of the
    same input), so a block holding a single document -- a corpus that is one long line, say -- makes only
    actual next sentences; next-sentence prediction then learns nothing, and nothing else would say so.

    Returns:
      float, the random-next share of `total`'s rows (0.0 without rows).
    """
    rows = sum(total["files"].values())
    share = total["random_next"] / rows if rows else 0.0
    logger.info("%s: %d of %d instances (%.1f %%) have a random next sentence (about half expected)", what,
                total["random_next"], rows, 100 * share)
    if total["lone_documents"]:
        logger.warning("%s: too few documents for random next sentences: %d of %d blocks held a single document "
                       "(B is drawn from another document of the same block), so only %.1f %% of the instances "
                       "have a random next sentence instead of about half; give the corpus as many documents "
                       "(one per line in the lines format, blank-line separated in Google's), or raise "
                       "--block-size-mb if its documents are only spread thin", what, total["lone_documents"],
                       blocks, 100 * share)
    return share


def _holdout_sink(settings, sink, holdout_sink):
    """The hold-out directory to write, or None without --holdout-fraction. Raises ValueError for a hold-out
    sink without a fraction, or one that is the sink itself."""
    if settings.holdout_fraction <= 0:
        if holdout_sink is not None:
            raise ValueError("--holdout-sink needs --holdout-fraction > 0 (the fraction of documents to hold out)")
        return None
    holdout_sink = holdout_sink or os.path.normpath(sink) + "_holdout"
    if os.path.abspath(holdout_sink) == os.path.abspath(sink):
        raise ValueError(f"--holdout-sink '{holdout_sink}' is --sink itself: the evaluation set must be "
                         f"written apart from the training shards")
    return holdout_sink


def _parser():
    p = ArgumentParser(prog="python -m data.prep.preprocess_bert_pretrain",
                                description="Text corpora -> LDDL-format Parquet for BERT pretraining.")
    p.add_argument("--wikipedia", action="append", default=[], help="LDDL Wikipedia 'source' directory")
    p.add_argument("--books", action="append", default=[], help="books 'source' directory")
    p.add_argument("--common-crawl", action="append", default=[], help="common crawl 'source' directory")
    p.add_argument("--source", nargs="+", action="extend", default=[], help="more input files or directories")
    p.add_argument("--sink", required=True, help="output directory (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --sink")
    p.add_argument("--vocab-file", required=True, help="BERT vocab.txt")
    p.add_argument("--do-lower-case", dest="do_lower_case", action="store_true", default=True,
                   help="lower-case the text before WordPiece, for uncased vocabs (on by default, as LDDL)")
    p.add_argument("--no-lower-case", dest="do_lower_case", action="store_false",
                   help="keep the case, for cased vocabs (e.g. bert-base-cased)")
    p.add_argument("--target-seq-length", type=int, default=128, help="max length of [CLS] A [SEP] B [SEP]")
    p.add_argument("--bin-size", type=int, default=64, help="sequence-length bin width (divides target)")
    p.add_argument("--no-bin", action="store_true", help="write unbinned files")
    p.add_argument("--masking", dest="masking", action="store_true", default=False,
                   help="static masking (default: dynamic, masked by the loader)")
    p.add_argument("--no-masking", dest="masking", action="store_false",
                   help="dynamic masking: the loader masks each epoch anew (the default)")
    p.add_argument("--max-predictions-per-seq", type=int, default=20,
                   help="most masked positions per sequence (static masking; 20 at 128 tokens, 80 at 512)")
    p.add_argument("--masked-lm-ratio", type=float, default=0.15, help="fraction of tokens masked")
    p.add_argument("--short-seq-prob", type=float, default=0.1,
                   help="probability of a shorter target length for a pair (as Google's BERT)")
    p.add_argument("--duplicate-factor", type=int, default=5,
                   help="passes over the corpus, each with other pairs and masks (as Google's BERT)")
    p.add_argument("--sample-ratio", type=float, default=0.9,
                   help="fraction of documents kept, chosen by a hash of each document and --seed (LDDL's "
                        "default; 1 keeps all)")
    p.add_argument("--seed", type=int, default=12345, help="seed of sampling, pairing and masking")
    p.add_argument("--holdout-fraction", type=float, default=0.0,
                   help="fraction of the (sampled) documents written to --holdout-sink instead of --sink: an "
                        "evaluation set (run_pretraining.py --eval-dir) that training never sees; chosen by a "
                        "keyed hash of each document (deterministic by --seed)")
    p.add_argument("--holdout-sink", default=None,
                   help="directory of the held-out shards (default: <sink>_holdout)")
    p.add_argument("--num-workers", "--local-n-workers", dest="num_workers", type=int,
                   default=os.cpu_count() or 1, help="local Dask worker processes (0: run in this process)")
    p.add_argument("--local-threads-per-worker", type=int, default=1, help="threads of each local Dask worker")
    p.add_argument("--executor", choices=EXECUTORS, default="auto",
                   help="how local workers run: pool = processes forked from this one (starts in milliseconds), "
                        "dask = Dask LocalCluster (dashboard, memory limits); auto = pool up to 1 GiB of input, "
                        "else dask. --scheduler / --schedule mpi always use Dask. Same output either way")
    p.add_argument("--schedule", choices=["local", "mpi"], default="local",
                   help="local Dask workers, or dask-mpi across the ranks of an MPI job")
    p.add_argument("--scheduler", default=None, help="address of a running Dask scheduler")
    p.add_argument("--block-size-mb", type=float, default=32.0, help="input MB per block (task)")
    p.add_argument("--input-format", choices=["auto", "lines", "bert"], default="auto",
                   help="lines: `<doc_id> <text>` per line (LDDL source); bert: Google's blank-line separated "
                        "documents, one sentence per line; auto: decided per file")
    return p


def main(argv=None):
    """CLI entry point; returns the summary dict. Raises ValueError on bad input (see `utils.cli`)."""
    args = _parser().parse_args(argv)
    sources = args.wikipedia + args.books + args.common_crawl + args.source
    if not sources:
        raise ValueError("give at least one of --wikipedia, --books, --common-crawl, --source")
    settings = Settings(
        vocab_file=args.vocab_file, do_lower_case=args.do_lower_case,
        target_seq_length=args.target_seq_length, bin_size=None if args.no_bin else args.bin_size,
        masking=args.masking, max_predictions_per_seq=args.max_predictions_per_seq,
        masked_lm_ratio=args.masked_lm_ratio, short_seq_prob=args.short_seq_prob,
        duplicate_factor=args.duplicate_factor, sample_ratio=args.sample_ratio, seed=args.seed,
        holdout_fraction=args.holdout_fraction)
    return run(settings, sources, args.sink, block_size_mb=args.block_size_mb,
               input_format=args.input_format, num_workers=args.num_workers,
               threads_per_worker=args.local_threads_per_worker, schedule=args.schedule,
               scheduler=args.scheduler, overwrite=args.overwrite, holdout_sink=args.holdout_sink,
               executor=args.executor)


def cli(argv=None):
    """`main` as a command (`utils.cli.run_cli`), also the `preprocess_bert_pretrain` console script: returns the exit
    status, 0 ok or 2 bad input."""
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
