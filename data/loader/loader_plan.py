"""The deterministic sampling plan of the pretraining loader: which rows form batch i of epoch e on rank r.

Owns: `DataFile` (one file as the plan sees it), `dataset_fingerprint`, `SamplingPlan` / `EpochPlan` (rank
split, epoch shuffle, bin order, shuffle windows) and `BatchProducer` (builds batch i with a reader, keeping
the files of the current windows in memory). Computed from row counts only, never from file contents, so
resuming at batch N costs integer arithmetic. Does not own reading files (`data.loader.lddl_reader`,
`data.loader.hdf5_loader`), worker processes (`data.loader.loader_workers`) or the loader and its position
(`data.loader.lddl_loader`).

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
"""
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

logger = logging.getLogger(__name__)

# Distinct first words for the seed sequences, so the streams of different purposes never coincide.
_TAG_SHARDS, _TAG_BINS, _TAG_WINDOW, _TAG_MASK = 101, 202, 303, 404


@dataclass(frozen=True)
class DataFile:
    """One data file as the plan sees it: bin `bin_id` of the `shard`-th shard, holding `rows` samples;
    `sha256` is the digest its directory recorded when it was written (None: not recorded)."""
    path: str
    shard: int
    bin_id: int
    rows: int
    sha256: Optional[str] = None


def dataset_fingerprint(files):
    """A short description of a dataset that changes when any file name or row count changes, and, when
    every file has a recorded digest, when any file's contents change.

    Args:
      files: list of DataFile.

    Returns:
      dict with 'sha256' (hex str over sorted (basename, rows)), 'num_files' (int), 'num_rows' (int) and
      'content_sha256' (hex str over sorted (basename, file SHA-256), or None when a file has no digest).
    """
    items = sorted((os.path.basename(f.path), int(f.rows)) for f in files)
    digest = hashlib.sha256(json.dumps(items).encode("utf-8")).hexdigest()
    content = None
    if files and all(f.sha256 for f in files):
        pairs = sorted((os.path.basename(f.path), f.sha256) for f in files)
        content = hashlib.sha256(json.dumps(pairs).encode("utf-8")).hexdigest()
    return {"sha256": digest, "num_files": len(items), "num_rows": sum(rows for _, rows in items),
            "content_sha256": content}


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
                f"`python -m data.prep.balance_dask_output --indir {where} --num-shards N` for N a multiple of "
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

    A reader (see `LddlReader`, `data.loader.hdf5_loader.Hdf5Reader`) offers `read(DataFile)` and
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
