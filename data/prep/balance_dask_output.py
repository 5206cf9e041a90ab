"""Load balancing: redistribute an LDDL dataset's rows into K shards of equal size (per bin, +-1 row).

Usage (from the repo root):
  python -m data.prep.balance_dask_output --indir data/pretrain/phase1 --num-shards 256
  python -m data.prep.balance_dask_output --indir raw/ --outdir balanced/ --num-shards 8

Why: LDDL's loader gives every rank whole files and needs every rank to see the same number of samples,
so the preprocessor's uneven `part.*` files are rebalanced into `shard-<k>.parquet[_<bin>]`, with
`.num_samples.json`. Binned datasets are balanced bin by bin.

Owns: the assignment of rows to shards and writing the shards. Row i of a bin (rows numbered through the
input files in `lddl_format.list_shards` order) goes to shard i mod K, so shards differ by at most one row,
every shard mixes rows of every input file, and the result is deterministic.

Streaming: one bin at a time, one input file at a time, rows appended to K open `ParquetWriter`s, flushed
whenever the buffered input exceeds `buffer_mb`. When K exceeds the open-file budget the shards are written
in groups, re-reading the bin's inputs once per group. Nothing is deleted before all outputs are complete:
they are built in a temporary directory; without `--outdir` (in place) that directory then replaces
`--indir` (non-data files of `--indir`, e.g. dask's `_metadata`, are carried over).

Differences from LDDL's `balance_dask_output`: ours terminates when rows divide evenly (LDDL's loops
forever), needs no MPI, and refuses a bin with fewer rows than shards (it would make empty shards, which
a loader cannot split evenly). LDDL's `--bin-ids` and `--keep-orig` are not offered: every bin is
balanced, and originals are kept exactly when `--outdir` is given.
"""
import utils.preflight  # noqa: F401  -- zlib before paddle, OMP threads default; must stay first

import logging
import os
import shutil
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data import lddl_format as fmt
from utils.cli import ArgumentParser, run_cli
from utils.fs import atomic_output_dir, refuse_output_over_inputs
from utils.logger import progress

logger = logging.getLogger(__name__)

_MAX_OPEN_WRITERS = 512


def shard_sizes(total_rows, num_shards):
    """Rows per shard under round-robin assignment: the first total % K shards get one more.

    Args:
      total_rows: int >= 0.
      num_shards: int >= 1.

    Returns:
      list[int] of length num_shards summing to total_rows.
    """
    base, extra = divmod(total_rows, num_shards)
    return [base + (k < extra) for k in range(num_shards)]


def _read_checked(shard, schema):
    try:
        table = pq.read_table(shard.path)
    except (OSError, pa.ArrowException) as exc:
        raise ValueError(f"cannot read '{shard.path}': {exc}") from exc
    if not table.schema.equals(schema, check_metadata=False):
        raise ValueError(f"'{shard.path}' has columns {table.schema.names} ({table.schema.types}), "
                         f"unlike the other files of its bin: {schema.names} ({schema.types})")
    if len(table) != shard.num_rows:
        raise ValueError(f"'{shard.path}' has {len(table)} rows but {fmt.NUM_SAMPLES_FILE} says "
                         f"{shard.num_rows}; the row-count cache is stale")
    return table


class _ShardGroup:
    """Open writers for shards [first, stop) of one bin, with buffered pieces."""

    def __init__(self, out_dir, first, stop, bin_id, schema):
        self.first, self.stop = first, stop
        self.names = {k: fmt.shard_name(k, bin_id) for k in range(first, stop)}
        self.writers = {k: pq.ParquetWriter(os.path.join(out_dir, n), schema, compression=fmt.COMPRESSION)
                        for k, n in self.names.items()}
        self.pending = {k: [] for k in self.writers}
        self.rows = dict.fromkeys(self.writers, 0)

    def add(self, sorted_table, shard_of_sorted_row):
        """Queue the rows of a table already sorted by shard (only this group's rows present)."""
        bounds = np.searchsorted(shard_of_sorted_row, np.arange(self.first, self.stop + 1))
        for k, lo, hi in zip(range(self.first, self.stop), bounds[:-1], bounds[1:]):
            if hi > lo:
                self.pending[k].append(sorted_table.slice(int(lo), int(hi - lo)))
                self.rows[k] += int(hi - lo)

    def flush(self):
        for k, pieces in self.pending.items():
            if pieces:
                self.writers[k].write_table(pa.concat_tables(pieces))
                pieces.clear()

    def close(self):
        for writer in self.writers.values():
            writer.close()


def _write_group(files, num_shards, group, schema, buffer_bytes):
    """Stream every input file of a bin once, routing its rows of this group's shards to their writers."""
    first_row, buffered = 0, 0
    try:
        for shard in files:
            table = _read_checked(shard, schema)
            target = (first_row + np.arange(len(table))) % num_shards
            first_row += len(table)
            picked = np.nonzero((target >= group.first) & (target < group.stop))[0]
            order = picked[np.argsort(target[picked], kind="stable")]
            group.add(table.take(pa.array(order)), target[order])
            buffered += table.nbytes
            if buffered > buffer_bytes:
                group.flush()
                buffered = 0
        group.flush()
    finally:
        group.close()
    return {group.names[k]: n for k, n in group.rows.items()}


def balance_bin(files, num_shards, out_dir, bin_id=None, buffer_mb=256, max_open_writers=_MAX_OPEN_WRITERS):
    """Write the rows of one bin's input files round-robin into `num_shards` shard files.

    Args:
      files: list[lddl_format.ShardFile] of one bin, in order.
      num_shards: int >= 1.
      out_dir: directory to write `shard-<k>.parquet[_<bin_id>]` into.
      bin_id: int, or None for unbinned data.
      buffer_mb: float, input data buffered before writers are flushed.
      max_open_writers: int >= 1, shards written per pass over the inputs.

    Returns:
      dict {shard basename: rows}.

    Raises:
      ValueError: fewer rows than shards, inconsistent schemas, unreadable or miscounted files.
    """
    total = sum(f.num_rows for f in files)
    where = "" if bin_id is None else f" in bin {bin_id}"
    if total < num_shards:
        raise ValueError(f"only {total} rows{where}, fewer than --num-shards {num_shards}: "
                         "every shard needs at least one row; use fewer shards")
    schema = pq.read_schema(files[0].path)
    counts = {}
    for first in range(0, num_shards, max_open_writers):
        group = _ShardGroup(out_dir, first, min(first + max_open_writers, num_shards), bin_id, schema)
        counts.update(_write_group(files, num_shards, group, schema, buffer_mb * (1 << 20)))
    return counts


def _check_layouts(shards):
    """Every input must be an LDDL file of one layout, checked from the footers before anything is written.

    Raises:
      ValueError: naming the first file that lacks LDDL columns (and which), or two files of different
        layouts.
    """
    first = None
    for shard in shards:
        try:
            schema = pq.read_schema(shard.path)
        except (OSError, pa.ArrowException) as exc:
            raise ValueError(f"cannot read '{shard.path}': {exc}") from exc
        masking = fmt.check_layout(shard.path, schema, binned=shard.bin_id is not None)
        if first is None:
            first = (shard.path, masking)
        elif masking != first[1]:
            raise ValueError(f"'{shard.path}' is {'static' if masking else 'dynamic'}ally masked but "
                             f"'{first[0]}' is not; balance one dataset at a time")


def _carry_over(indir, out_dir):
    """In-place mode: keep indir's non-data files (except the stale row-count cache and digests)."""
    for name in sorted(os.listdir(indir)):
        path = os.path.join(indir, name)
        if os.path.isdir(path):
            raise ValueError(f"in-place balancing needs a flat --indir, but '{path}' is a directory; "
                             "pass --outdir")
        if not fmt.is_data_file(name) and name not in (fmt.NUM_SAMPLES_FILE, fmt.SHARD_DIGESTS_FILE):
            shutil.copy2(path, os.path.join(out_dir, name))


def balance(indir, num_shards, outdir=None, overwrite=False, buffer_mb=256):
    """Balance the dataset in `indir` into `num_shards` shards per bin (see module docstring).

    Args:
      indir: dataset directory (`part.*` or `shard-*` files).
      num_shards: int >= 1.
      outdir: output directory, or None to replace `indir` once the new shards are complete.
      overwrite: allow replacing an existing `outdir`.
      buffer_mb: float > 0, see `balance_bin`.

    Returns:
      dict {shard basename: rows}, also written to `.num_samples.json`.

    Raises:
      ValueError: bad arguments or inputs (see `lddl_format.list_shards`, `balance_bin`); Parquet files
        without the LDDL columns are refused before anything is written.
    """
    if num_shards < 1:
        raise ValueError(f"--num-shards must be >= 1, got {num_shards}")
    in_place = outdir is None
    if not in_place:
        # Rewriting --indir is what leaving out --outdir asks for (LDDL's interface): the same rows, moved
        # between files. An --outdir that is, holds or lies in --indir would instead replace or alter it.
        try:
            refuse_output_over_inputs("--outdir", outdir, [("--indir", indir)])
        except ValueError as err:
            raise ValueError(f"{err} (to rebalance --indir in place, leave out --outdir)") from None
    if not in_place and os.path.exists(outdir) and not overwrite:
        raise ValueError(f"--outdir '{outdir}' already exists; remove it or pass --overwrite")
    shards = fmt.list_shards(indir)
    _check_layouts(shards)
    bins = sorted({s.bin_id for s in shards}, key=lambda b: -1 if b is None else b)
    logger.info("balancing %d files (%d rows, %d bin(s)) from %s into %d shards per bin", len(shards),
                sum(s.num_rows for s in shards), len(bins), indir, num_shards)
    counts = {}
    with atomic_output_dir(indir if in_place else outdir, overwrite=True) as tmp:
        if in_place:
            _carry_over(indir, tmp)
        for bin_id in progress(bins, desc="bins", unit="bin"):
            files = [s for s in shards if s.bin_id == bin_id]
            counts.update(balance_bin(files, num_shards, tmp, bin_id, buffer_mb=buffer_mb))
        fmt.write_num_samples(tmp, counts)
        fmt.write_shard_digests(tmp, counts)
    logger.info("wrote %d shard files (%d rows) into %s", len(counts), sum(counts.values()),
                indir if in_place else outdir)
    return counts


def _parse_args(argv):
    parser = ArgumentParser(prog="python -m data.prep.balance_dask_output",
                                     description="Balance LDDL Parquet files into equal shards.")
    parser.add_argument("--indir", required=True, help="dataset written by data.prep.preprocess_bert_pretrain")
    parser.add_argument("--outdir", default=None, help="output directory (default: replace --indir)")
    parser.add_argument("--num-shards", type=int, required=True, help="shards per bin")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --outdir")
    parser.add_argument("--buffer-mb", type=float, default=256.0, help="input MB buffered between flushes")
    return parser.parse_args(argv)


def main(argv=None):
    """CLI entry point; returns {shard: rows}. Raises ValueError on bad input (see `utils.cli`)."""
    args = _parse_args(argv)
    if args.buffer_mb <= 0:
        raise ValueError(f"--buffer-mb must be > 0, got {args.buffer_mb}")
    return balance(args.indir, args.num_shards, args.outdir, args.overwrite, args.buffer_mb)


def cli(argv=None):
    """`main` as a command (`utils.cli.run_cli`), also the `balance_dask_output` console script: returns the exit
    status, 0 ok or 2 bad input."""
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
