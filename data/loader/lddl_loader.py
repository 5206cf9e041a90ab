"""The LDDL-format streaming loader for BERT pretraining, with exact resume.

Owns: turning a directory of LDDL-format Parquet shards (see `data.lddl_format`) into numpy feed dicts for
the pretraining program; the split of shards over ranks; the per-epoch shuffle; dynamic masking at load time;
multi-process workers; and the loader position (`state_dict` / `load_state_dict`). The deterministic plan,
the worker pool and the loader class are shared with the legacy HDF5 loader (`data.loader.hdf5_loader`), which
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

The parts: `data.loader.loader_plan` (sampling design: rank split, per-epoch shuffle, bin order, exact resume by
arithmetic), `data.loader.lddl_reader` (reading, tokenising and collating Parquet rows; measured throughput),
`data.loader.loader_workers` (worker processes). This module holds the loader object, its position and the entry
point, and re-exports the names callers used before the split (`DataFile`, `SamplingPlan`, `LddlReader`,
`padded_length`, `decode_npy_positions`, ...).
"""
import logging
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data import lddl_format
from data.loader import hdf5_loader
from data.loader.lddl_reader import LddlReader, decode_npy_positions, padded_length  # noqa: F401 -- re-exported
from data.loader.loader_plan import BatchProducer, DataFile, SamplingPlan, dataset_fingerprint
from data.loader.loader_workers import WorkerPool
from utils.checks import is_int

logger = logging.getLogger(__name__)

STATE_FORMAT_VERSION = 1


class BertPretrainLoader:
    """Iterable over pretraining feed dicts, one epoch per iter(), with an exact, resumable position.

    Built by `get_bert_pretrain_data_loader`; `len()` is the number of batches per epoch (equal on all ranks).
    A new iter() first ends the previous iterator. Breaking out of an epoch and calling iter() again goes on
    with the rest of that epoch; a finished epoch moves on to the next one.

    Args:
      plan: SamplingPlan.
      reader: the reader of the files (LddlReader or data.loader.hdf5_loader.Hdf5Reader).
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
            source = WorkerPool(self._plan, self._reader, epoch, start, n, self._num_workers)
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
        else:
            changed += _content_change(old.get("content_sha256"), new["content_sha256"])
        if changed:
            raise ValueError("cannot resume the data loader exactly, the setup changed: " + "; ".join(changed))


def _content_change(old, new):
    """[why the dataset's recorded contents (`dataset_fingerprint`'s content_sha256) rule out a resume], or [].

    A checkpoint that recorded contents needs the same ones, proven by the directory's digest file; one that
    recorded none (written before digests, or on LDDL's shards) is resumed with a warning.
    """
    digests = lddl_format.SHARD_DIGESTS_FILE
    if old and new and old != new:
        return [f"dataset contents: {digests} gives content fingerprint {new[:16]}..., the checkpoint recorded "
                f"{old[:16]}... (same names and row counts, other bytes: rows edited or permuted)"]
    if old and not new:
        return [f"dataset contents: the checkpoint recorded them (content fingerprint {old[:16]}...) but the "
                f"directory has no {digests} to prove they are the same (copy it with the shards)"]
    if new and not old:
        logger.warning("the checkpoint's loader state records no dataset contents (written before %s were "
                       "recorded): the shards' contents could not be verified against it", digests)
    return []


class _SerialBatches:
    """num_workers == 0: build the batches in this process (same interface as WorkerPool)."""

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
    files, reader, kind = open_dataset(path, vocab_file=vocab_file, sequence_length_alignment=sequence_length_alignment,
                                       max_seq_length=max_seq_length, ignore_index=ignore_index,
                                       masked_lm_ratio=masked_lm_ratio, max_predictions_per_seq=max_predictions_per_seq)
    plan = SamplingPlan(files, rank=rank, world_size=world_size, batch_size=batch_size, seed=seed,
                        shuffle_buffer_size=shuffle_buffer_size, drop_last=drop_last, where=path)
    logger.info("%s loader: %s, %d files, rank %d/%d, %d batches of %d per epoch", kind, path, len(files),
                rank, world_size, plan.num_batches, batch_size)
    if kind == "lddl" and not all(f.sha256 for f in files):
        logger.warning("%s has no %s (shards written by LDDL or an older version): their contents cannot be "
                       "verified, so a resume checks file names and row counts only", path,
                       lddl_format.SHARD_DIGESTS_FILE)
    return BertPretrainLoader(plan, reader, fingerprint=dataset_fingerprint(files), kind=kind,
                              num_workers=num_workers, start_epoch=start_epoch)


def open_dataset(path, *, vocab_file, sequence_length_alignment=64, max_seq_length=None, ignore_index=-1,
                 masked_lm_ratio=0.15, max_predictions_per_seq=None):
    """The files of a shard directory and the reader that turns them into feeds (no sampling plan).

    `get_bert_pretrain_data_loader` builds on this; tools that check every file (`data.prep.inspect_shards`) call
    `reader.read(f)` for each file, which validates every row exactly as training would.

    Args:
      path: LDDL shard directory, or a directory of *.hdf5/*.h5 shards.
      vocab_file, sequence_length_alignment, max_seq_length, ignore_index, masked_lm_ratio,
        max_predictions_per_seq: as for `get_bert_pretrain_data_loader` (not re-checked here).

    Returns:
      (list of DataFile, reader (LddlReader or data.loader.hdf5_loader.Hdf5Reader), kind str 'lddl' or 'hdf5').

    Raises:
      ValueError: missing directory, no/empty/corrupt shards, a vocab that does not fit the first rows.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"data directory '{path}' does not exist or is not a directory")
    if is_hdf5_dir(path):
        files, reader = hdf5_loader.build_reader(path, vocab_file=vocab_file, ignore_index=ignore_index,
                                                 sequence_length_alignment=sequence_length_alignment,
                                                 max_seq_length=max_seq_length)
        return files, reader, "hdf5"
    files, reader = _build_lddl_reader(path, vocab_file, sequence_length_alignment=sequence_length_alignment,
                                       max_seq_length=max_seq_length, ignore_index=ignore_index,
                                       masked_lm_ratio=masked_lm_ratio,
                                       max_predictions_per_seq=max_predictions_per_seq)
    return files, reader, "lddl"


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
    """The LDDL files of a directory as DataFiles, shards numbered by `lddl_format.shard_numbers`.

    Raises:
      ValueError: from `lddl_format.list_shards`, or a shard whose bins are all empty.
    """
    listed = lddl_format.list_shards(path)
    numbers = lddl_format.shard_numbers([f.path for f in listed])
    files = [DataFile(path=f.path, shard=k, bin_id=int(f.bin_id or 0), rows=int(f.num_rows), sha256=f.sha256)
             for f, k in zip(listed, numbers)]
    rows = np.zeros(max(numbers) + 1, np.int64)
    np.add.at(rows, numbers, [f.rows for f in files])
    if (rows == 0).any():
        empty = sorted({os.path.basename(lddl_format.shard_stem(f.path)) for f in files if rows[f.shard] == 0},
                       key=lddl_format.natural_key)
        raise ValueError(f"{path}: shard(s) {empty[:5]} have no rows; rebalance with "
                         f"`python -m data.prep.balance_dask_output` or remove them")
    return files


def _probe(reader, shard_file, rows=64):
    """Collate the first rows of one file now, so a vocab/shard mismatch fails before training starts."""
    try:
        batch = next(pq.ParquetFile(shard_file.path).iter_batches(batch_size=rows, columns=reader.columns))
    except StopIteration:
        return
    except (OSError, pa.ArrowException) as e:
        raise ValueError(f"{shard_file.path}: not a readable Parquet file ({e})") from None
    reader.collate(reader.tokenise(pa.Table.from_batches([batch]), shard_file.path), np.random.default_rng(0))


def is_hdf5_dir(path):
    """True for a directory of legacy HDF5 shards; a mix of HDF5 and Parquet files is an error (ValueError)."""
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
        if not is_int(value) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}{' or None' if allow_none else ''}, got {value!r}")

    need_int("batch_size", batch_size, 1)
    need_int("num_workers", num_workers, 0)
    need_int("shuffle_buffer_size", shuffle_buffer_size, 1)
    need_int("sequence_length_alignment", sequence_length_alignment, 1)
    need_int("max_predictions_per_seq", max_predictions_per_seq, 1, allow_none=True)
    need_int("max_seq_length", max_seq_length, 5, allow_none=True)
    need_int("start_epoch", start_epoch, 0)
    need_int("seed", seed, 0)
    if not is_int(ignore_index):
        raise ValueError(f"ignore_index must be an integer, got {ignore_index!r}")
    if not isinstance(masked_lm_ratio, (int, float)) or not 0.0 < masked_lm_ratio <= 1.0:
        raise ValueError(f"masked_lm_ratio must be in (0, 1], got {masked_lm_ratio!r}")
