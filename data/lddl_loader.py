"""The LDDL-format streaming loader for BERT pretraining, with exact resume.

Owns: turning a directory of LDDL-format Parquet shards (see `data.lddl_format`) into numpy feed dicts for
the pretraining program; the split of shards over ranks; the per-epoch shuffle; dynamic masking at load time;
multi-process workers; and the loader position (`state_dict` / `load_state_dict`). The deterministic plan,
the worker pool and the loader class are shared with the legacy HDF5 loader (`data.hdf5_loader`), which
`get_bert_pretrain_data_loader` dispatches to when a directory holds `*.hdf5` / `*.h5` files.
Does not own: the on-disk format (file naming, schema, `.num_samples.json`: `data.lddl_format`), the masking
algorithm (`data.masking`), vocabulary reading (`tokenizer`), feed names (`program.create_feeds`).

Usage (names follow LDDL's `lddl.paddle.get_bert_pretrain_data_loader`, so LDDL users feel at home):

    loader = get_bert_pretrain_data_loader("shards/", vocab_file="vocab/bert-base-uncased-vocab.txt",
                                           batch_size=64, seed=42)
    for epoch in range(2):
        for feed in loader:          # one epoch per iter(); the next iter() is the next epoch
            exe.run(program, feed=feed, fetch_list=...)
    progress.loader_state = loader.state_dict()   # later: loader.load_state_dict(state) and iterate on

Sampling design (a block permutation instead of LDDL's row-by-row shuffle buffer, chosen so that resuming at
batch N costs only integer arithmetic, never a replay of N batches of reading, tokenising or masking):

* Shards: files named alike but for the `_<bin>` suffix are the bins of one shard; in natural name order
  (`shard-2` before `shard-10`) the k-th shard goes, with all of its bins, to rank k % world_size. The
  number of shards must be a multiple of world_size.
* Every rank yields the same number of batches per epoch: per bin, each rank uses the minimum over ranks of
  that bin's rows (balanced shards differ by at most one row per bin, so little is dropped; the count is
  logged). Every rank can compute this because every rank reads all row counts.
* Epoch e on rank r: a seeded permutation of the rank's shards; per bin, the rows of those shards' bin files
  in that order form one stream; the stream is cut into windows of `shuffle_buffer_size` rows and each window
  is permuted by its own seeded RNG; consecutive batch_size slices of the permuted stream are the bin's
  batches. Like a shuffle buffer of that size, rows move at most about one window from their stream place.
* One bin per batch. The order of batches is a seeded uniform permutation of the multiset "bin b repeated
  batches(b) times", which is exactly what drawing each next bin in proportion to the batches left in each
  bin gives. Its seed does not involve the rank, and batches(b) is equal on all ranks, so all ranks process
  the same bin (sequence length) in the same step, as LDDL does.
* Dynamic masking uses an RNG seeded from (seed, epoch, rank, batch index), so batches do not depend on the
  number of workers or on where a run was resumed.
* Each iter() uses a new epoch seed: LDDL with non-persistent workers repeats epoch 0's order every epoch.

Reading: a file is read and tokenised (vectorised, see `VocabIndex`) when a batch first needs it and kept
while its bin's shuffle window needs it; batches are then gathered and padded with numpy offset arithmetic.
Measured with `benchmarks/bench_loader.py` (2 shared cores, batch 128, whole epochs of 200k real rows,
num_workers=0): seq 128 75k samples/s static / 48k dynamic masking, seq 512 36k / 25k, 4-7x a per-sample
Python collate of the same batches; figures moved by up to 2x with other load on the machine. Dynamic
masking (`data.masking.mask_batch`) is about 40% of the time; at seq 512 tokenising dominates.

Workers (num_workers > 0): started from a `forkserver` context (forking a process that has imported paddle
and started OpenMP threads is unsafe); worker w builds batches i = w (mod W) of the same plan and the parent
yields them in index order, so the output equals num_workers=0 exactly. Every worker reads and tokenises
the files of the current windows itself (only collating and masking are split), so workers add little
throughput on a small machine; their use is to overlap loading with the training step. They start at each
iter() (~0.5 s) and stop at the end of the epoch, on close(), when the iterator is dropped, and at
interpreter exit. As with any `spawn`/`forkserver` multiprocessing, a script using workers must guard its
entry point with `if __name__ == "__main__":` (workers import the main module).
"""
import functools
import hashlib
import json
import logging
import multiprocessing
import os
import pickle
import queue as queue_lib
import re
import signal
import weakref
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data import lddl_format
from data.masking import mask_batch

logger = logging.getLogger(__name__)

STATE_FORMAT_VERSION = 1

# Distinct first words for the seed sequences, so the streams of different purposes never coincide.
_TAG_SHARDS, _TAG_BINS, _TAG_WINDOW, _TAG_MASK = 101, 202, 303, 404

_WORKER_POLL_SECONDS = 0.1
_WORKER_JOIN_SECONDS = 10.0
_PREFETCH_PER_WORKER = 2


# ----------------------------------------------------------------------------------------------------
# The deterministic plan: which rows form batch i of epoch e on rank r
# ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DataFile:
    """One data file as the plan sees it: bin `bin_id` of the `shard`-th shard, holding `rows` samples."""
    path: str
    shard: int
    bin_id: int
    rows: int


def dataset_fingerprint(files):
    """A short description of a dataset that changes when any file name or row count changes.

    Args:
      files: iterable of DataFile.

    Returns:
      dict with 'sha256' (hex str over sorted (basename, rows)), 'num_files' (int), 'num_rows' (int).
    """
    items = sorted((os.path.basename(f.path), int(f.rows)) for f in files)
    digest = hashlib.sha256(json.dumps(items).encode("utf-8")).hexdigest()
    return {"sha256": digest, "num_files": len(items), "num_rows": sum(rows for _, rows in items)}


class SamplingPlan:
    """Everything that decides which rows go into which batch, computed from row counts only (no reads).

    Args:
      files: list of DataFile for the WHOLE dataset (all ranks).
      rank, world_size: ints, 0 <= rank < world_size.
      batch_size: int >= 1, rows per batch on this rank.
      seed: int, the base seed of every random choice.
      shuffle_buffer_size: int >= 1, rows per shuffle window.
      drop_last: bool, drop each bin's final partial batch.
      where: str, the data directory, for error messages.

    Raises:
      ValueError: shard count not a multiple of world_size, or too little data for one batch.
    """

    def __init__(self, files, *, rank, world_size, batch_size, seed, shuffle_buffer_size, drop_last, where):
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self.seed, self.window, self.drop_last = seed, shuffle_buffer_size, drop_last
        shards = sorted({f.shard for f in files})
        if len(shards) % world_size:
            raise ValueError(
                f"{where}: {len(shards)} shards cannot be split evenly over {world_size} ranks; rebalance with "
                f"`python -m data.balance_dask_output --indir {where} --num-shards N` for N a multiple of "
                f"{world_size}")
        self.bins = sorted({f.bin_id for f in files})
        by_key = {(f.shard, f.bin_id): f for f in files}
        self._rank_files = [[by_key.get((s, b)) for b in self.bins] for s in shards[rank::world_size]]
        self.used_rows, self.bin_batches = self._count_rows(shards, by_key)
        self.num_batches = int(sum(self.bin_batches))
        mine = sum(f.rows for row in self._rank_files for f in row if f is not None)
        if self.num_batches == 0:
            raise ValueError(f"{where}: not enough rows for one batch of {batch_size} per rank "
                             f"({mine} rows on rank {rank} of {world_size}, spread over {len(self.bins)} bins)")
        dropped = mine - int(sum(self.used_rows))
        if dropped:
            logger.info("rank %d uses %d of its %d rows per epoch (equal batches on every rank, drop_last=%s)",
                        rank, mine - dropped, mine, drop_last)

    def _count_rows(self, shards, by_key):
        """Rows used and batches per bin: the same on every rank (the minimum over ranks)."""
        used, batches = [], []
        for b in self.bins:
            per_rank = [sum(by_key[(s, b)].rows for s in shards[r::self.world_size] if (s, b) in by_key)
                        for r in range(self.world_size)]
            rows = min(per_rank)
            if self.drop_last:
                rows -= rows % self.batch_size
            used.append(rows)
            batches.append(-(-rows // self.batch_size))
        return np.asarray(used, np.int64), np.asarray(batches, np.int64)

    def epoch(self, epoch):
        """The plan of one epoch (cheap: a few integer arrays of length num_batches)."""
        return EpochPlan(self, epoch)

    def rank_files(self):
        """[shard][bin] -> DataFile or None, this rank's files in shard order."""
        return self._rank_files


class EpochPlan:
    """Epoch `epoch` of a SamplingPlan: bin of every batch and the rows behind it."""

    def __init__(self, plan, epoch):
        self.plan, self.epoch = plan, epoch
        shard_order = np.random.default_rng([plan.seed, _TAG_SHARDS, epoch, plan.rank]).permutation(
            len(plan.rank_files()))
        self._streams = []
        for j, b in enumerate(plan.bins):
            files = [plan.rank_files()[s][j] for s in shard_order]
            files = [f for f in files if f is not None and f.rows > 0]
            key = [plan.seed, _TAG_WINDOW, epoch, plan.rank, b]
            self._streams.append(_BinStream(files, int(plan.used_rows[j]), plan.window, key))
        bins_rng = np.random.default_rng([plan.seed, _TAG_BINS, epoch])
        self.batch_bin = bins_rng.permutation(np.repeat(np.arange(len(plan.bins)), plan.bin_batches))
        self.batch_k = np.empty_like(self.batch_bin)
        for j in range(len(plan.bins)):
            where = np.flatnonzero(self.batch_bin == j)
            self.batch_k[where] = np.arange(len(where))

    def __len__(self):
        return len(self.batch_bin)

    def batch_rows(self, i):
        """Where the rows of batch i live.

        Returns:
          (bin_index int, groups list of (DataFile, int64 rows [n_f]), order int64 [n], window_paths set):
          concatenating the groups' rows and then taking `order` gives the batch rows in batch order;
          window_paths are the files the current shuffle window(s) of this bin still need.
        """
        j, k = int(self.batch_bin[i]), int(self.batch_k[i])
        stream = self._streams[j]
        positions = np.arange(k * self.plan.batch_size, min((k + 1) * self.plan.batch_size, stream.length))
        file_idx, rows = stream.locate(positions)
        by_file = np.argsort(file_idx, kind="stable")
        groups = []
        for f in np.unique(file_idx):
            sel = by_file[file_idx[by_file] == f]
            groups.append((stream.files[f], rows[sel]))
        order = np.empty(len(positions), np.int64)
        order[by_file] = np.arange(len(positions))
        return j, groups, order, stream.window_paths(positions[0] // self.plan.window)


class _BinStream:
    """One bin's rows on this rank in one epoch: the files in epoch order, permuted window by window."""

    def __init__(self, files, length, window, key):
        self.files, self.length, self.window, self.key = files, length, window, key
        sizes = np.asarray([f.rows for f in files], np.int64)
        self.ends = np.cumsum(sizes)
        self.starts = self.ends - sizes
        self._perms = {}

    def _perm(self, w):
        if w not in self._perms:
            size = min(self.window, self.length - w * self.window)
            if len(self._perms) >= 2:  # batches move forward; keep the current and the next window only
                self._perms.pop(min(self._perms))
            self._perms[w] = np.random.default_rng(self.key + [int(w)]).permutation(size)
        return self._perms[w]

    def locate(self, positions):
        """Stream positions -> (file index int64 [n], row within file int64 [n])."""
        windows = positions // self.window
        stream = np.empty_like(positions)
        for w in np.unique(windows):
            sel = windows == w
            stream[sel] = w * self.window + self._perm(w)[positions[sel] - w * self.window]
        file_idx = np.searchsorted(self.ends, stream, side="right")
        return file_idx, stream - self.starts[file_idx]

    def window_paths(self, w):
        """Paths of the files holding rows of window w."""
        lo, hi = w * self.window, min((w + 1) * self.window, self.length)
        first, last = np.searchsorted(self.ends, lo, side="right"), np.searchsorted(self.starts, hi, side="left")
        return {f.path for f in self.files[first:last]}


class BatchProducer:
    """Builds batch i of an epoch plan with a `reader`, keeping each needed file in memory once per window.

    A reader (see `LddlReader`, `data.hdf5_loader.Hdf5Reader`) offers `read(DataFile)` and
    `make_batch(parts, order, mask_seed)` where parts is a list of (DataFile, loaded data, rows).
    """

    def __init__(self, reader):
        self.reader = reader
        self._cache = {}  # path -> (bin index, loaded data)

    def batch(self, epoch_plan, i):
        j, groups, order, keep = epoch_plan.batch_rows(i)
        for path in [p for p, (bj, _) in self._cache.items() if bj == j and p not in keep]:
            del self._cache[path]
        parts = []
        for f, rows in groups:
            if f.path not in self._cache:
                self._cache[f.path] = (j, self.reader.read(f))
            parts.append((f, self._cache[f.path][1], rows))
        plan = epoch_plan.plan
        mask_seed = [plan.seed, _TAG_MASK, epoch_plan.epoch, plan.rank, int(i)]
        return self.reader.make_batch(parts, order, mask_seed)


# ----------------------------------------------------------------------------------------------------
# LDDL Parquet rows -> feed dict
# ----------------------------------------------------------------------------------------------------

class VocabIndex:
    """A vocabulary for vectorised lookup of space-separated token strings.

    Splitting with pyarrow (`split_pattern`) copies every token and costs more than the lookup itself, so
    tokens are instead views into the column's own bytes: token k runs from its first byte to the first
    byte of the next token, i.e. it keeps its trailing space when it has one. The lookup table therefore
    holds every vocab token twice, bare ("cat", a row's last token) and with one trailing space ("cat ").

    Args:
      vocab_file: path of a BERT vocab (one token per line).

    Raises:
      ValueError: unreadable vocab or missing [PAD]/[UNK]/[CLS]/[SEP]/[MASK] (from `tokenizer`).
    """

    def __init__(self, vocab_file):
        import tokenizer  # the repo's tokenizer module; imported late so loader import stays light

        vocab = tokenizer.load_vocab(vocab_file)
        self.special = tokenizer.special_token_ids(vocab, vocab_file)
        self.path = os.fspath(vocab_file)
        tokens = list(vocab)
        self.value_set = pa.array(tokens + [t + " " for t in tokens], pa.string())
        ids = np.fromiter(vocab.values(), np.int64, len(vocab))
        self.size = int(ids.max()) + 1
        self.ids = np.concatenate([ids, ids]).astype(np.uint16 if self.size <= 65536 else np.int32)

    def split_lookup(self, strings):
        """Space-separated token strings -> ids.

        Args:
          strings: pyarrow string array [n] without nulls.

        Returns:
          (ids [total tokens]: uint16 (int32 for big vocabs), or int32 with -1 where a token is unknown;
          lengths int64 [n]; tokens: pyarrow string array of the tokens as looked up, for error messages).
        """
        strings = strings.cast(pa.string())
        if strings.buffers()[2] is None:  # every string empty: no data buffer at all
            return np.zeros(0, self.ids.dtype), np.zeros(len(strings), np.int64), pa.array([], pa.string())
        offsets = np.frombuffer(strings.buffers()[1], np.int32)[strings.offset:strings.offset + len(strings) + 1]
        lo, hi = int(offsets[0]), int(offsets[-1])
        data = np.frombuffer(strings.buffers()[2], np.uint8)[lo:hi] if hi > lo else np.zeros(0, np.uint8)
        is_start = np.empty(hi - lo + 1, bool)
        is_start[0] = True
        np.equal(data, 32, out=is_start[1:])  # the byte after a space starts a token ...
        is_start[offsets[:-1] - lo] = True     # ... and so does every row
        starts = np.flatnonzero(is_start[:-1]).astype(np.int32)  # a start at the very end has no bytes
        lengths = np.diff(np.searchsorted(starts, offsets - lo)).astype(np.int64)
        token_offsets = np.append(starts, hi - lo).astype(np.int32) + lo
        tokens = pa.StringArray.from_buffers(len(starts), pa.py_buffer(token_offsets), strings.buffers()[2])
        index = pc.index_in(tokens, value_set=self.value_set)
        if index.null_count:
            return np.where(index.is_null().to_numpy(zero_copy_only=False), -1,
                            self.ids[index.fill_null(0).to_numpy()].astype(np.int32)), lengths, tokens
        return self.ids[index.to_numpy()], lengths, tokens


@dataclass(frozen=True)
class Ragged:
    """Variable-length rows stored flat: row r is flat[offsets[r]:offsets[r+1]]."""
    flat: np.ndarray
    offsets: np.ndarray  # int64 [n + 1], offsets[0] == 0

    @property
    def lengths(self):
        return np.diff(self.offsets)

    def take(self, rows):
        """The rows `rows` (int array [m]) as a new Ragged."""
        starts, lengths = self.offsets[rows], self.offsets[np.asarray(rows) + 1] - self.offsets[rows]
        return Ragged(self.flat[_flat_positions(starts, lengths)], _offsets(lengths))

    @staticmethod
    def concat(parts):
        return Ragged(np.concatenate([p.flat for p in parts]),
                      _offsets(np.concatenate([p.lengths for p in parts])))


def _offsets(lengths):
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])


def _flat_positions(starts, lengths):
    """Flat indices start[r] + 0..len[r]-1 for every row r, concatenated."""
    lengths = np.asarray(lengths, np.int64)
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts, np.int64) - offsets, lengths) + np.arange(int(lengths.sum()),
                                                                                 dtype=np.int64)


@dataclass(frozen=True)
class LddlRows:
    """Tokenised LDDL rows (one file, or one batch): token ids of A and B, NSP labels, static masks.

    a, b: Ragged token ids (uint16, or int32 for big vocabs); nsp: int64 [n] (1 = B is random);
    positions (Ragged int64), labels (Ragged token ids): static masking only, else None.
    """
    a: Ragged
    b: Ragged
    nsp: np.ndarray
    positions: object = None
    labels: object = None

    def __len__(self):
        return len(self.nsp)

    def take(self, rows):
        masked = self.positions is not None
        return LddlRows(self.a.take(rows), self.b.take(rows), self.nsp[rows],
                        self.positions.take(rows) if masked else None, self.labels.take(rows) if masked else None)

    @staticmethod
    def concat(parts):
        masked = parts[0].positions is not None
        return LddlRows(Ragged.concat([p.a for p in parts]), Ragged.concat([p.b for p in parts]),
                        np.concatenate([p.nsp for p in parts]),
                        Ragged.concat([p.positions for p in parts]) if masked else None,
                        Ragged.concat([p.labels for p in parts]) if masked else None)


class LddlReader:
    """Reads LDDL-format Parquet files into token ids and collates rows into pretraining feeds.

    Token strings become ids once per file, when the file is read: pyarrow's lookup costs ~30 ns a token
    but ~2 ms per call to build its hash table of the vocab, too much to pay per batch. Every row is
    validated then, so a bad row is reported with its file. Resuming reads at most the files of the current
    shuffle windows, never the skipped batches. Memory: the files overlapping each bin's current window,
    as 2-byte ids (4 for vocabs over 65,536 tokens), about 0.4 of the Parquet text size uncompressed.

    Args:
      vocab_file: BERT vocab that the shards' WordPiece tokens come from.
      static_masking: bool, the shards carry masked_lm_positions/masked_lm_labels.
      sequence_length_alignment: int >= 1, L is rounded up to a multiple of it.
      max_seq_length: int or None; a longer sample is an error; also caps the rounded L.
      ignore_index: int written to masked_lm_labels where nothing is predicted.
      masked_lm_ratio, max_predictions_per_seq: dynamic masking knobs (None = no per-row cap).
    """

    def __init__(self, vocab_file, *, static_masking, sequence_length_alignment, max_seq_length, ignore_index,
                 masked_lm_ratio, max_predictions_per_seq):
        self.vocab = VocabIndex(vocab_file)
        self.static_masking = static_masking
        self.align, self.max_seq_length, self.ignore_index = sequence_length_alignment, max_seq_length, ignore_index
        self.masked_lm_ratio, self.max_predictions_per_seq = masked_lm_ratio, max_predictions_per_seq
        self.columns = lddl_format.make_schema(static_masking, binned=False).names

    def read(self, data_file):
        """Load and tokenise one file.

        Args:
          data_file: DataFile.

        Returns:
          LddlRows with data_file.rows rows.

        Raises:
          ValueError naming the file: unreadable, missing columns, row count differing from the listing,
          or a bad row (see `tokenise`).
        """
        table = _read_parquet(data_file.path, self.columns)
        if table.num_rows != data_file.rows:
            raise ValueError(f"{data_file.path}: has {table.num_rows} rows but the shard listing "
                             f"(.num_samples.json) says {data_file.rows}; rebuild .num_samples.json")
        return self.tokenise(table, data_file.path)

    def tokenise(self, table, path):
        """LDDL columns -> LddlRows, checking every row.

        Args:
          table: pyarrow Table with A, B, is_random_next, num_tokens (+ masked_lm_positions,
            masked_lm_labels for static masking).
          path: str, the file, for error messages.

        Raises:
          ValueError naming `path`: nulls, tokens not in the vocab, num_tokens != len(A)+len(B)+3, a sample
          longer than max_seq_length, masked positions/labels that do not pair up or point outside A and B.
        """
        a, b = self._token_ids(table, "A", path), self._token_ids(table, "B", path)
        num_tokens = a.lengths + b.lengths + 3
        self._check_lengths(table, num_tokens, path)
        nsp = _column_numpy(table, "is_random_next", path).astype(np.int64)
        if not self.static_masking:
            return LddlRows(a, b, nsp)
        _column_numpy(table, "masked_lm_positions", path, check_only=True)
        flat, counts = decode_npy_positions(table.column("masked_lm_positions").combine_chunks(), path)
        positions = Ragged(flat, _offsets(counts))
        labels = self._token_ids(table, "masked_lm_labels", path)
        rows = np.repeat(np.arange(len(counts)), counts)
        bad = labels.lengths != counts
        bad |= np.bincount(rows, (flat <= 0) | (flat >= num_tokens[rows] - 1), minlength=len(counts)) > 0
        bad |= np.bincount(rows, flat == (a.lengths + 1)[rows], minlength=len(counts)) > 0
        if bad.any():
            r = int(np.argmax(bad))
            raise ValueError(f"{path}: row {r} has {counts[r]} masked_lm_positions and {labels.lengths[r]} "
                             f"masked_lm_labels, or a position on [CLS]/[SEP] or past the end")
        return LddlRows(a, b, nsp, positions, labels)

    def _token_ids(self, table, column, path):
        """A space-separated token column -> Ragged token ids (every row non-empty, every token known)."""
        _column_numpy(table, column, path, check_only=True)
        ids, lengths, tokens = self.vocab.split_lookup(table.column(column).combine_chunks())
        if len(lengths) and lengths.min() == 0 and column != "masked_lm_labels":
            raise ValueError(f"{path}: row {int(np.argmin(lengths))} has an empty {column}")
        unknown = np.flatnonzero(ids < 0)
        if len(unknown):
            row = int(np.searchsorted(np.cumsum(lengths), unknown[0], side="right"))
            examples = list(dict.fromkeys(tokens.take(pa.array(unknown[:200])).to_pylist()))[:5]
            raise ValueError(
                f"{path}: column {column} (row {row}) holds tokens that are not in the vocab "
                f"{self.vocab.path}, e.g. {examples} ({len(unknown)} unknown); the shards were made with a "
                f"different vocab (or hold empty tokens from double spaces)")
        return Ragged(ids, _offsets(lengths))

    def _check_lengths(self, table, num_tokens, path):
        stored = _column_numpy(table, "num_tokens", path).astype(np.int64)
        wrong = np.flatnonzero(stored != num_tokens)
        if len(wrong):
            r = wrong[0]
            raise ValueError(f"{path}: row {r} has num_tokens={stored[r]} but len(A)+len(B)+3="
                             f"{num_tokens[r]}; the file is not valid LDDL output")
        if self.max_seq_length is not None and len(num_tokens) and num_tokens.max() > self.max_seq_length:
            r = int(np.argmax(num_tokens))
            raise ValueError(f"{path}: row {r} has {num_tokens[r]} tokens, more than max_seq_length="
                             f"{self.max_seq_length}; preprocess with a smaller --target-seq-length or raise "
                             f"max_seq_length")

    def make_batch(self, parts, order, mask_seed):
        """Rows of loaded files -> feed dict (see `collate`).

        Args:
          parts: list of (DataFile, LddlRows of the file, int64 rows [m]).
          order: int64 [n], batch row j is row order[j] of the parts' rows concatenated.
          mask_seed: list of ints seeding the dynamic-masking RNG of this batch.
        """
        rows = LddlRows.concat([data.take(r) for _, data, r in parts]).take(order)
        return self.collate(rows, np.random.default_rng(mask_seed))

    def collate(self, rows, rng):
        """LddlRows -> pretraining feed dict.

        Args:
          rows: LddlRows [n].
          rng: numpy Generator for dynamic masking (unused with static masking).

        Returns:
          dict of int64 arrays: input_ids [n, L], token_type_ids [n, L], attention_mask [n, 1, 1, L],
          next_sentence_labels [n, 1], masked_lm_labels [n, L] (ignore_index where not predicted);
          L = longest num_tokens rounded up to the alignment (capped at max_seq_length).
        """
        a_len, b_len = rows.a.lengths, rows.b.lengths
        num_tokens = a_len + b_len + 3
        seq_len = padded_length(int(num_tokens.max()), self.align, self.max_seq_length)
        feed = _layout(rows.a.flat, a_len, rows.b.flat, b_len, seq_len, self.vocab.special)
        if self.static_masking:
            labels = np.full((len(rows), seq_len), self.ignore_index, np.int64)
            labels[np.repeat(np.arange(len(rows)), rows.positions.lengths), rows.positions.flat] = rows.labels.flat
        else:
            feed["input_ids"], labels = self._dynamic_mask(feed["input_ids"], a_len, num_tokens, rng)
        feed["masked_lm_labels"] = labels
        feed["next_sentence_labels"] = rows.nsp[:, None].copy()
        return feed

    def _dynamic_mask(self, input_ids, a_len, num_tokens, rng):
        pos = np.arange(input_ids.shape[1])[None, :]
        candidates = (pos > 0) & (pos < num_tokens[:, None] - 1) & (pos != a_len[:, None] + 1)
        cap = self.max_predictions_per_seq if self.max_predictions_per_seq is not None else input_ids.shape[1]
        ids, labels = mask_batch(input_ids, candidates, num_tokens, rng, vocab_size=self.vocab.size,
                                 mask_id=self.vocab.special["mask"], masked_lm_prob=self.masked_lm_ratio,
                                 max_predictions_per_seq=cap)
        if self.ignore_index != -1:
            labels[labels == -1] = self.ignore_index
        return ids, labels


def _column_numpy(table, name, path, check_only=False):
    """A column as numpy, after checking it has no nulls (ValueError naming the file and row)."""
    column = table.column(name)
    if column.null_count:
        r = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"{path}: row {r} has a null {name}")
    return None if check_only else column.to_numpy()


def padded_length(longest, align, max_seq_length):
    """Batch length: the longest sample rounded up to the alignment, but never above max_seq_length."""
    length = -(-longest // align) * align
    return min(length, max_seq_length) if max_seq_length is not None else length


def _layout(a_ids, a_len, b_ids, b_len, seq_len, special):
    """Place [CLS] A [SEP] B [SEP] rows into padded arrays with numpy offset arithmetic.

    Returns:
      dict with input_ids, token_type_ids [n, seq_len] and attention_mask [n, 1, 1, seq_len], int64.
    """
    n = len(a_len)
    input_ids = np.full((n, seq_len), special["pad"], np.int64)
    row_base = np.arange(n, dtype=np.int64) * seq_len
    flat = input_ids.reshape(-1)
    flat[row_base] = special["cls"]
    flat[_flat_positions(row_base + 1, a_len)] = a_ids
    flat[row_base + 1 + a_len] = special["sep"]
    flat[_flat_positions(row_base + 2 + a_len, b_len)] = b_ids
    total = a_len + b_len + 3
    flat[row_base + total - 1] = special["sep"]
    pos = np.arange(seq_len)[None, :]
    real = pos < total[:, None]
    token_type = (real & (pos >= (a_len + 2)[:, None])).astype(np.int64)
    return {"input_ids": input_ids, "token_type_ids": token_type,
            "attention_mask": real.astype(np.int64)[:, None, None, :]}


@functools.lru_cache(maxsize=1)
def _npy_fixed_head():
    """The bytes every LDDL positions blob starts with: magic, version 1.0, header length (2 bytes that vary,
    returned as wildcards) and the header dict up to the shape, taken from `lddl_format.encode_positions`
    so the encoding is defined in one place."""
    blob = lddl_format.encode_positions(np.zeros(1, np.uint16))
    head = blob[:blob.index(b"'shape': (") + len(b"'shape': (")]
    wildcard = np.zeros(len(head), bool)
    wildcard[8:10] = True
    return np.frombuffer(head, np.uint8), wildcard


def decode_npy_positions(blobs, path):
    """Decode a column of masked_lm_positions blobs without a Python loop per row.

    Args:
      blobs: pyarrow binary array [n], each `lddl_format.encode_positions` output (np.save of 1-D uint16).
      path: str, the file, for error messages.

    Returns:
      (positions int64 [sum counts], counts int64 [n]).

    Raises:
      ValueError naming the file of a blob that is not a 1-D uint16 .npy array.
    """
    if not len(blobs):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    _, offset_buf, data_buf = blobs.buffers()
    offset_type = np.int64 if pa.types.is_large_binary(blobs.type) else np.int32
    offsets = np.frombuffer(offset_buf, offset_type)[blobs.offset:blobs.offset + len(blobs) + 1].astype(np.int64)
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    starts, ends = offsets[:-1], offsets[1:]
    expected, wildcard = _npy_fixed_head()
    if len(starts) and (ends - starts).min() >= len(expected):
        probe = data[starts[:, None] + np.arange(len(expected))]
        if ((probe == expected) | wildcard).all():
            header_len = probe[:, 8].astype(np.int64) + 256 * probe[:, 9]
            first = starts + 10 + header_len
            counts = (ends - first) // 2
            byte_at = np.repeat(first, counts) + 2 * (np.arange(int(counts.sum())) - np.repeat(
                np.cumsum(counts) - counts, counts))
            return data[byte_at].astype(np.int64) + 256 * data[byte_at + 1].astype(np.int64), counts
    return _decode_npy_slow(blobs, path)


def _decode_npy_slow(blobs, path):
    """Fallback (another .npy version or padding): `lddl_format.decode_positions` per row."""
    arrays = []
    for r, blob in enumerate(blobs.to_pylist()):
        try:
            arrays.append(lddl_format.decode_positions(blob).astype(np.int64))
        except Exception as e:  # noqa: BLE001 -- any decoding failure means a corrupt row
            raise ValueError(f"{path}: row {r} has bad masked_lm_positions ({e})") from None
    counts = np.asarray([len(a) for a in arrays], np.int64)
    return (np.concatenate(arrays) if arrays else np.zeros(0, np.int64)), counts


def _read_parquet(path, columns):
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as e:
        raise ValueError(f"{path}: not a readable Parquet file ({e})") from None
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; LDDL shards have {list(columns)}")
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowException) as e:
        raise ValueError(f"{path}: not a readable Parquet file ({e})") from None


# ----------------------------------------------------------------------------------------------------
# Worker processes
# ----------------------------------------------------------------------------------------------------

def _worker_main(plan, reader, epoch, start, worker_id, num_workers, out_queue, stop_event):
    """Build batches i >= start with i = worker_id (mod num_workers) and send (i, feed, None)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop (close())
    parent = multiprocessing.parent_process()
    producer, epoch_plan = BatchProducer(reader), plan.epoch(epoch)
    i = start + (worker_id - start) % num_workers
    try:
        for i in range(i, len(epoch_plan), num_workers):
            if not _send(out_queue, (i, producer.batch(epoch_plan, i), None), stop_event, parent):
                return
    except BaseException as exc:  # noqa: BLE001 -- every failure must reach the parent
        _send(out_queue, (i, None, _picklable(exc)), stop_event, parent)


def _send(out_queue, item, stop_event, parent):
    """Put `item`, waiting while the queue is full; False (and no flush at exit) once the parent stops."""
    while not stop_event.is_set():
        try:
            out_queue.put(item, timeout=_WORKER_POLL_SECONDS)
            return True
        except queue_lib.Full:
            if parent is not None and not parent.is_alive():
                break
    out_queue.cancel_join_thread()  # nobody will read what is still buffered: exit without flushing it
    return False


def _picklable(exc):
    try:
        pickle.dumps(exc)
        return exc
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(exc).__name__}: {exc}")


class _WorkerPool:
    """num_workers processes building one epoch's batches from `start`; iterate for (i, feed) in order."""

    def __init__(self, plan, reader, epoch, start, num_batches, num_workers):
        ctx = multiprocessing.get_context(
            "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn")
        self._start, self._num_batches, self._num_workers = start, num_batches, num_workers
        self._stop = ctx.Event()
        self._queues = [ctx.Queue(maxsize=_PREFETCH_PER_WORKER) for _ in range(num_workers)]
        self._procs = [ctx.Process(target=_worker_main, daemon=True, name=f"bert-loader-{w}",
                                   args=(plan, reader, epoch, start, w, num_workers, self._queues[w], self._stop))
                       for w in range(num_workers)]
        for p in self._procs:
            p.start()
        self._finalizer = weakref.finalize(self, _shutdown_workers, self._procs, self._queues, self._stop)

    def __iter__(self):
        for i in range(self._start, self._num_batches):
            w = i % self._num_workers
            got, feed, exc = self._get(w)
            if exc is not None:
                exc.add_note(f"(raised in data loader worker {w} while building batch {got})")
                raise exc
            if got != i:
                raise RuntimeError(f"loader worker {w} sent batch {got} where {i} was due")
            yield i, feed

    def _get(self, w):
        while True:
            try:
                return self._queues[w].get(timeout=_WORKER_POLL_SECONDS)
            except queue_lib.Empty:
                if not self._procs[w].is_alive():
                    break
        try:  # the worker may have flushed its last item just before exiting
            return self._queues[w].get(timeout=_WORKER_POLL_SECONDS)
        except queue_lib.Empty:
            raise RuntimeError(f"data loader worker {w} exited with code {self._procs[w].exitcode} before "
                               f"sending its batches") from None

    def close(self):
        self._finalizer()


def _shutdown_workers(procs, queues, stop_event):
    stop_event.set()
    for p in procs:
        p.join(timeout=_WORKER_JOIN_SECONDS)
        if p.is_alive():
            logger.warning("loader worker %s did not stop in %.0f s; terminating it", p.name, _WORKER_JOIN_SECONDS)
            p.terminate()
            p.join()
    for q in queues:
        q.close()


# ----------------------------------------------------------------------------------------------------
# The loader
# ----------------------------------------------------------------------------------------------------

class BertPretrainLoader:
    """Iterable over pretraining feed dicts, one epoch per iter(), with an exact, resumable position.

    Built by `get_bert_pretrain_data_loader`; `len()` is the number of batches per epoch (equal on all ranks).
    A new iter() first ends the previous iterator. Breaking out of an epoch and calling iter() again goes on
    with the rest of that epoch; a finished epoch moves on to the next one.

    Args:
      plan: SamplingPlan.
      reader: the reader of the files (LddlReader or data.hdf5_loader.Hdf5Reader).
      fingerprint: dict from `dataset_fingerprint`.
      kind: str, 'lddl' or 'hdf5' (recorded in the state).
      num_workers: int >= 0.
      start_epoch: int >= 0, the epoch of the first iter().
    """

    def __init__(self, plan, reader, *, fingerprint, kind, num_workers=0, start_epoch=0):
        self._plan, self._reader, self._fingerprint, self._kind = plan, reader, fingerprint, kind
        self._num_workers = num_workers
        self._epoch, self._batches_done, self._samples_done = start_epoch, 0, 0
        self._active = None

    def __len__(self):
        return self._plan.num_batches

    @property
    def epoch(self):
        """The epoch the next batch belongs to."""
        self._normalise()
        return self._epoch

    def __iter__(self):
        self._close_active()
        self._active = self._generate()
        return self._active

    def _normalise(self):
        if self._batches_done >= self._plan.num_batches:
            self._epoch, self._batches_done = self._epoch + 1, 0

    def _generate(self):
        self._normalise()
        epoch, start, n = self._epoch, self._batches_done, self._plan.num_batches
        if self._num_workers:
            source = _WorkerPool(self._plan, self._reader, epoch, start, n, self._num_workers)
        else:
            source = _SerialBatches(self._plan, self._reader, epoch, start)
        try:
            for i, feed in source:
                self._batches_done = i + 1
                self._samples_done += len(feed["input_ids"])
                yield feed
            self._normalise()
        finally:
            source.close()

    def _close_active(self):
        if self._active is not None:
            self._active.close()
            self._active = None

    def close(self):
        """Stop any worker processes. The loader can still be iterated afterwards (new workers start)."""
        self._close_active()

    def state_dict(self):
        """The position after the last batch handed out, as a JSON-serialisable dict."""
        self._normalise()
        p = self._plan
        return {"format_version": STATE_FORMAT_VERSION, "kind": self._kind, "epoch": self._epoch,
                "batches_consumed": self._batches_done, "samples_consumed": self._samples_done,
                "batches_per_epoch": p.num_batches, "world_size": p.world_size, "rank": p.rank,
                "batch_size": p.batch_size, "seed": p.seed, "shuffle_buffer_size": p.window,
                "drop_last": p.drop_last, "fingerprint": dict(self._fingerprint)}

    def load_state_dict(self, state):
        """Continue from `state` (from `state_dict()`, possibly of another rank of the same run).

        Raises:
          ValueError: unknown format version, missing keys, or a changed world size, batch size, seed,
            shuffle buffer, drop_last, data kind or dataset (file names / row counts).
        """
        self._check_state(state)
        self._close_active()
        self._epoch, self._batches_done = int(state["epoch"]), int(state["batches_consumed"])
        self._samples_done = int(state["samples_consumed"])
        if self._batches_done > self._plan.num_batches:
            raise ValueError(f"loader state: batches_consumed={self._batches_done} exceeds the "
                             f"{self._plan.num_batches} batches of an epoch")
        self._normalise()

    def _check_state(self, state):
        if not isinstance(state, dict) or state.get("format_version") != STATE_FORMAT_VERSION:
            raise ValueError(f"loader state has format_version "
                             f"{state.get('format_version') if isinstance(state, dict) else type(state)!r}; "
                             f"this loader reads version {STATE_FORMAT_VERSION}")
        current = self.state_dict()
        missing = [k for k in current if k not in state]
        if missing:
            raise ValueError(f"loader state lacks key(s) {missing}")
        changed = [f"{k}: {state[k]!r} in the checkpoint, {current[k]!r} now"
                   for k in ("kind", "world_size", "batch_size", "seed", "shuffle_buffer_size", "drop_last")
                   if state[k] != current[k]]
        old, new = state["fingerprint"] if isinstance(state["fingerprint"], dict) else {}, self._fingerprint
        if old.get("sha256") != new["sha256"]:
            changed.append(f"dataset: {old.get('num_files')} files / {old.get('num_rows')} rows in the "
                           f"checkpoint, {new['num_files']} files / {new['num_rows']} rows now (or renamed)")
        if changed:
            raise ValueError("cannot resume the data loader exactly, the setup changed: " + "; ".join(changed))


class _SerialBatches:
    """num_workers == 0: build the batches in this process (same interface as _WorkerPool)."""

    def __init__(self, plan, reader, epoch, start):
        self._plan, self._producer, self._start = plan.epoch(epoch), BatchProducer(reader), start

    def __iter__(self):
        for i in range(self._start, len(self._plan)):
            yield i, self._producer.batch(self._plan, i)

    def close(self):
        pass


# ----------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------

def get_bert_pretrain_data_loader(path, *, vocab_file, batch_size, rank=None, world_size=None, seed=42,
                                  num_workers=0, shuffle_buffer_size=16384, sequence_length_alignment=64,
                                  ignore_index=-1, max_predictions_per_seq=None, masked_lm_ratio=0.15,
                                  max_seq_length=None, start_epoch=0, drop_last=True):
    """Build the pretraining loader for an LDDL shard directory (or a directory of legacy HDF5 shards).

    Args:
      path: directory of `shard-<k>.parquet[_<bin>]` / `part.<k>.parquet[_<bin>]` files, or of *.hdf5/*.h5.
      vocab_file: the BERT vocab the shards were tokenised with.
      batch_size: int >= 1, samples per batch on this rank.
      rank, world_size: this process's place; default from PADDLE_TRAINER_ID / PADDLE_TRAINERS_NUM, else 0/1.
      seed: int, base of every random choice (shuffle, bin order, dynamic masking).
      num_workers: int >= 0 worker processes (0 = build batches in this process).
      shuffle_buffer_size: int >= 1, rows per shuffle window.
      sequence_length_alignment: int >= 1; L = longest sample in the batch rounded up to a multiple.
      ignore_index: int in masked_lm_labels where nothing is predicted.
      max_predictions_per_seq: int >= 1 or None: dynamic masking's per-row cap (static masking uses the
        stored positions).
      masked_lm_ratio: float in (0, 1], dynamic masking's fraction of tokens to predict.
      max_seq_length: int or None; a longer sample is an error.
      start_epoch: int >= 0, the epoch of the first iter().
      drop_last: bool, drop each bin's final partial batch.

    Returns:
      BertPretrainLoader yielding dicts of int64 arrays: input_ids [B, L], token_type_ids [B, L],
      attention_mask [B, 1, 1, L], next_sentence_labels [B, 1], masked_lm_labels [B, L].

    Raises:
      ValueError: bad arguments, missing directory, no/empty/corrupt shards, missing columns, tokens not in
        the vocab, shard count not divisible by world_size.
    """
    rank, world_size = _resolve_rank(rank, world_size)
    _check_args(batch_size=batch_size, num_workers=num_workers, shuffle_buffer_size=shuffle_buffer_size,
                sequence_length_alignment=sequence_length_alignment, max_predictions_per_seq=max_predictions_per_seq,
                masked_lm_ratio=masked_lm_ratio, max_seq_length=max_seq_length, start_epoch=start_epoch,
                seed=seed, ignore_index=ignore_index)
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"data directory '{path}' does not exist or is not a directory")
    common = dict(rank=rank, world_size=world_size, batch_size=batch_size, seed=seed,
                  shuffle_buffer_size=shuffle_buffer_size, drop_last=drop_last, where=path)
    if _has_hdf5(path):
        from data import hdf5_loader

        files, reader = hdf5_loader.build_reader(path, vocab_file=vocab_file, ignore_index=ignore_index,
                                                 sequence_length_alignment=sequence_length_alignment,
                                                 max_seq_length=max_seq_length)
        kind = "hdf5"
    else:
        files, reader = _build_lddl_reader(path, vocab_file, sequence_length_alignment=sequence_length_alignment,
                                           max_seq_length=max_seq_length, ignore_index=ignore_index,
                                           masked_lm_ratio=masked_lm_ratio,
                                           max_predictions_per_seq=max_predictions_per_seq)
        kind = "lddl"
    plan = SamplingPlan(files, **common)
    logger.info("%s loader: %s, %d files, rank %d/%d, %d batches of %d per epoch", kind, path, len(files),
                rank, world_size, plan.num_batches, batch_size)
    return BertPretrainLoader(plan, reader, fingerprint=dataset_fingerprint(files), kind=kind,
                              num_workers=num_workers, start_epoch=start_epoch)


def _build_lddl_reader(path, vocab_file, **knobs):
    """List the LDDL files of `path` (via `data.lddl_format`) and build their reader.

    Returns:
      (list of DataFile, LddlReader).

    Raises:
      ValueError: no data files, a shard without rows, an unreadable first file or one that is not an
        LDDL layout, or tokens of its first rows that are not in the vocab.
    """
    files = list_data_files(path)
    first = next(f for f in files if f.rows > 0)
    try:
        masking, _ = lddl_format.schema_flags(pq.read_schema(first.path))
    except (OSError, pa.ArrowException, ValueError) as e:
        raise ValueError(f"{first.path}: not a readable LDDL Parquet file ({e})") from None
    reader = LddlReader(vocab_file, static_masking=masking, **knobs)
    _probe(reader, first)
    return files, reader


def list_data_files(path):
    """The LDDL files of a directory as DataFiles, numbering shards by their name without the bin suffix.

    `shard-3.parquet_0` .. `shard-3.parquet_3` are the bins of one shard; shards are numbered in natural
    name order (`part.2` before `part.10`), which for balanced output is their number k.

    Raises:
      ValueError: from `lddl_format.list_shards`, or a shard whose bins are all empty.
    """
    listed = lddl_format.list_shards(path)
    stems = [f.path[:-len(f"_{f.bin_id}")] if f.bin_id is not None else f.path for f in listed]
    order = {stem: k for k, stem in enumerate(sorted(set(stems), key=natural_key))}
    files = [DataFile(path=f.path, shard=order[stem], bin_id=int(f.bin_id or 0), rows=int(f.num_rows))
             for f, stem in zip(listed, stems)]
    rows = np.zeros(len(order), np.int64)
    np.add.at(rows, [f.shard for f in files], [f.rows for f in files])
    if (rows == 0).any():
        empty = [os.path.basename(s) for s, k in order.items() if rows[k] == 0]
        raise ValueError(f"{path}: shard(s) {empty[:5]} have no rows; rebalance with "
                         f"`python -m data.balance_dask_output` or remove them")
    return files


def natural_key(text):
    """Sort key that orders embedded numbers by value: 'part.2' before 'part.10'."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", text)]


def _probe(reader, shard_file, rows=64):
    """Collate the first rows of one file now, so a vocab/shard mismatch fails before training starts."""
    try:
        batch = next(pq.ParquetFile(shard_file.path).iter_batches(batch_size=rows, columns=reader.columns))
    except StopIteration:
        return
    except (OSError, pa.ArrowException) as e:
        raise ValueError(f"{shard_file.path}: not a readable Parquet file ({e})") from None
    reader.collate(reader.tokenise(pa.Table.from_batches([batch]), shard_file.path), np.random.default_rng(0))


def _has_hdf5(path):
    """True for a directory of legacy HDF5 shards; a mix of HDF5 and Parquet files is an error."""
    names = os.listdir(path)
    hdf5 = any(name.endswith((".hdf5", ".h5")) for name in names)
    if hdf5 and any(lddl_format.is_data_file(name) for name in names):
        raise ValueError(f"{path}: holds both HDF5 (*.hdf5/*.h5) and Parquet shards; keep one kind per directory")
    return hdf5


def _resolve_rank(rank, world_size):
    """Fill rank/world size from the Paddle launcher's environment when not given."""
    def from_env(name, default):
        raw = os.environ.get(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None

    rank = from_env("PADDLE_TRAINER_ID", 0) if rank is None else rank
    world_size = from_env("PADDLE_TRAINERS_NUM", 1) if world_size is None else world_size
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an integer >= 1, got {world_size!r}")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an integer in [0, {world_size}), got {rank!r}")
    return rank, world_size


def _check_args(*, batch_size, num_workers, shuffle_buffer_size, sequence_length_alignment,
                max_predictions_per_seq, masked_lm_ratio, max_seq_length, start_epoch, seed, ignore_index):
    def need_int(name, value, low, allow_none=False):
        if value is None and allow_none:
            return
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}{' or None' if allow_none else ''}, got {value!r}")

    need_int("batch_size", batch_size, 1)
    need_int("num_workers", num_workers, 0)
    need_int("shuffle_buffer_size", shuffle_buffer_size, 1)
    need_int("sequence_length_alignment", sequence_length_alignment, 1)
    need_int("max_predictions_per_seq", max_predictions_per_seq, 1, allow_none=True)
    need_int("max_seq_length", max_seq_length, 5, allow_none=True)
    need_int("start_epoch", start_epoch, 0)
    need_int("seed", seed, 0)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
        raise ValueError(f"ignore_index must be an integer, got {ignore_index!r}")
    if not isinstance(masked_lm_ratio, (int, float)) or not 0.0 < masked_lm_ratio <= 1.0:
        raise ValueError(f"masked_lm_ratio must be in (0, 1], got {masked_lm_ratio!r}")
