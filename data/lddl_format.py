"""The LDDL on-disk format for BERT pretraining samples: schema, file names, bins, row counts.

Owns everything that must agree between the writer (`data.prep.preprocess_bert_pretrain`), the balancer
(`data.prep.balance_dask_output`) and the reader (`data.loader.lddl_loader`):

  * columns and Arrow types (`make_schema`), matching files written by real LDDL 0.1.0:
      A, B             string  space-separated WordPiece tokens (already masked under static masking)
      is_random_next   bool    next-sentence label
      num_tokens       uint16  len(A) + len(B) + 3, i.e. the length of `[CLS] A [SEP] B [SEP]`
      masked_lm_positions binary  (static masking only) bytes of a `.npy` uint16 array (`np.save`)
      masked_lm_labels string  (static masking only) space-separated original tokens, one per position
      bin_id           int64   (binned datasets only)
  * file names: `part.<i>.parquet[_<bin>]` (preprocessor), `shard-<k>.parquet[_<bin>]` (balancer); a data
    file is any file whose extension starts with `.parquet`, exactly the rule LDDL's loader uses;
  * which shard and bin a file name stands for (`shard_stem`, `shard_numbers`, `bin_of_name`);
  * the bin rule `bin = min((num_tokens - 1) // bin_size, nbins - 1)`, `nbins = target_seq_length // bin_size`;
  * `.num_samples.json` = {basename: rows}, the row-count cache LDDL's loader reads;
  * `.shard_digests.json` = {basename: {"size", "sha256"}}, written by our writers with the row counts (LDDL
    writes none): the contents a dataset was made with, so an exact resume can prove it reads the same data;
  * listing a dataset directory (`list_shards`) with bin ids and row counts, checked against the cache.

Does not own: how samples are built (`data.prep.pretraining_pairs`), masking (`data.masking`), Dask, balancing
policy, or batching. No `_metadata`/`_common_metadata` files: LDDL's loaders never read them (they list
`*.parquet*` files and use `.num_samples.json` or the files themselves), and in LDDL's binned output they
describe the pre-binning files anyway.
"""
import ast
import concurrent.futures
import dataclasses
import io
import json
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from utils.fs import atomic_write_json, file_digest


NUM_SAMPLES_FILE = ".num_samples.json"
SHARD_DIGESTS_FILE = ".shard_digests.json"
COMPRESSION = "snappy"  # what LDDL asks dask for when snappy is available; readers need nothing extra

_BASE_FIELDS = (("A", pa.string(), "unicode", "object"),
                ("B", pa.string(), "unicode", "object"),
                ("is_random_next", pa.bool_(), "bool", "bool"),
                # LDDL's dask meta declared num_tokens as Python int, hence numpy_type int64 in its files.
                ("num_tokens", pa.uint16(), "uint16", "int64"))
_MASKED_FIELDS = (("masked_lm_positions", pa.binary(), "bytes", "object"),
                  ("masked_lm_labels", pa.string(), "unicode", "object"))
_BIN_FIELD = ("bin_id", pa.int64(), "int64", "int64")

_NAME_RE = re.compile(r"^(?P<stem>.*)\.parquet(?:_(?P<bin>[^_]*))?$")


def make_schema(masking, binned):
    """The Arrow schema of one LDDL file, with the same pandas metadata LDDL's files carry.

    Args:
      masking: bool, True for static masking (adds masked_lm_positions and masked_lm_labels).
      binned: bool, True when sequences are binned by length (adds bin_id).

    Returns:
      pyarrow.Schema.
    """
    fields = list(_BASE_FIELDS) + (list(_MASKED_FIELDS) if masking else []) + ([_BIN_FIELD] if binned else [])
    pandas_meta = {
        "index_columns": [], "column_indexes": [],
        "columns": [{"name": n, "field_name": n, "pandas_type": pt, "numpy_type": nt, "metadata": None}
                    for n, _, pt, nt in fields],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "1.3.5",  # the version LDDL 0.1.0 files declare; we never use pandas
    }
    return pa.schema([pa.field(n, t) for n, t, _, _ in fields],
                     metadata={b"pandas": json.dumps(pandas_meta).encode("utf-8")})


def schema_flags(schema):
    """(masking, binned) of a schema read from a file.

    Raises:
      ValueError: the schema's column names are not one of the four LDDL layouts.
    """
    names = schema.names
    for masking in (False, True):
        for binned in (False, True):
            if names == make_schema(masking, binned).names:
                return masking, binned
    raise ValueError(f"columns {names} are not an LDDL BERT layout")


def check_layout(path, schema, binned):
    """The masking of an LDDL file, or ValueError naming the file and what its columns lack.

    Args:
      path: str, the file (for the message).
      schema: pyarrow.Schema read from it.
      binned: bool, whether its name carries a bin suffix (then `bin_id` is required).

    Returns:
      bool, True for static masking.

    Raises:
      ValueError: a required column is missing (named), or the columns are no LDDL layout at all.
    """
    names = set(schema.names)
    masking = any(n in names for n, *_ in _MASKED_FIELDS)
    wanted = make_schema(masking, binned).names
    missing = [n for n in wanted if n not in names]
    if missing:
        raise ValueError(f"'{path}' is not an LDDL shard: missing column(s) {missing} (it has "
                         f"{sorted(names)}); only data written by data.prep.preprocess_bert_pretrain or LDDL can be "
                         "balanced")
    if schema.names != wanted:
        raise ValueError(f"'{path}': columns {schema.names} are not an LDDL BERT layout (expected {wanted})")
    return masking


def num_bins(target_seq_length, bin_size):
    """nbins = target_seq_length // bin_size (bin_size must divide target_seq_length; checked by callers)."""
    return target_seq_length // bin_size


def bin_ids(num_tokens, bin_size, nbins):
    """Bin of each sample: min((num_tokens - 1) // bin_size, nbins - 1).

    Args:
      num_tokens: int array [N], each >= 1.
      bin_size, nbins: ints >= 1.

    Returns:
      int64 array [N].
    """
    return np.minimum((np.asarray(num_tokens, dtype=np.int64) - 1) // bin_size, nbins - 1)


def part_name(index, bin_id=None):
    """`part.<index>.parquet` or `part.<index>.parquet_<bin_id>` (preprocessor output)."""
    return f"part.{index}.parquet" + ("" if bin_id is None else f"_{bin_id}")


def shard_name(index, bin_id=None):
    """`shard-<index>.parquet` or `shard-<index>.parquet_<bin_id>` (balancer output)."""
    return f"shard-{index}.parquet" + ("" if bin_id is None else f"_{bin_id}")


def is_data_file(basename):
    """LDDL's rule: a data file's extension (after the last dot) starts with `.parquet`."""
    return os.path.splitext(basename)[1].startswith(".parquet")


def bin_of_name(basename):
    """Bin id encoded in a data file name, or None for an unbinned file.

    Raises:
      ValueError: the suffix after `.parquet_` is not a non-negative integer.
    """
    match = _NAME_RE.match(basename)
    if match is None or match.group("bin") is None:
        return None
    if not match.group("bin").isdigit():
        raise ValueError(f"'{basename}': bin suffix '{match.group('bin')}' is not a non-negative integer")
    return int(match.group("bin"))


def shard_stem(path):
    """The shard a data file belongs to: its path without the `_<bin>` suffix.

    `shard-3.parquet_0` .. `shard-3.parquet_3` are the bins of one shard, `shard-3.parquet`.

    Args:
      path: str, a data file's path or basename.

    Returns:
      str, `path` with any `_<bin>` suffix removed.

    Raises:
      ValueError: the bin suffix is not a non-negative integer (see `bin_of_name`).
    """
    bin_id = bin_of_name(os.path.basename(path))
    return path if bin_id is None else path[:-len(f"_{bin_id}")]


def shard_numbers(paths):
    """Shard index of each data file: shards (see `shard_stem`) numbered in natural order of their paths.

    For balanced output that index is the k of `shard-<k>`; for the preprocessor's output the i of `part.<i>`.

    Args:
      paths: list of str data-file paths.

    Returns:
      list[int], one per path; bins of one shard share the index.
    """
    stems = [shard_stem(p) for p in paths]
    order = {stem: k for k, stem in enumerate(sorted(set(stems), key=natural_key))}
    return [order[stem] for stem in stems]


def natural_key(text):
    """Sort key that orders embedded numbers by value: 'part.2' before 'part.10'."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", text)]


# ----------------------------------------------------------------------------------------------------
# masked_lm_positions: bytes of np.save(uint16 array). We cache the exact header bytes np.save writes for
# each length, so encoding a row is a concatenation instead of a BytesIO round trip per row.
_HEADERS = {}
_PARSED_HEADERS = {}


def _npy_header(n):
    header = _HEADERS.get(n)
    if header is None:
        buf = io.BytesIO()
        np.save(buf, np.zeros(n, dtype="<u2"))
        header = buf.getvalue()[:-2 * n] if n else buf.getvalue()
        _HEADERS[n] = header
    return header


def encode_positions(positions):
    """Serialize masked positions exactly as LDDL does (`np.save` of a uint16 array into bytes).

    Args:
      positions: int array [P], 0 <= value < 65536.

    Returns:
      bytes, identical to what `np.save` writes for `np.asarray(positions, np.uint16)`.
    """
    arr = np.asarray(positions, dtype="<u2")
    return _npy_header(arr.shape[0]) + arr.tobytes()


def encode_positions_column(flat_positions, counts):
    """`encode_positions` over many rows, as an Arrow binary column.

    Args:
      flat_positions: int array [sum(counts)], all rows' positions concatenated (row-major).
      counts: int array [N], positions per row.

    Returns:
      pyarrow.BinaryArray [N]; row i equals `encode_positions(row i's positions)`.
    """
    counts = np.asarray(counts, dtype=np.int64)
    raw = np.ascontiguousarray(flat_positions, dtype="<u2").tobytes()
    ends = np.cumsum(counts)
    starts = ends - counts
    return pa.array([_npy_header(n) + raw[2 * s:2 * e]
                     for n, s, e in zip(counts.tolist(), starts.tolist(), ends.tolist())], type=pa.binary())


def decode_positions(data):
    """Inverse of `encode_positions`: the masked positions of one row.

    Args:
      data: bytes of an `.npy` 1-D uint16 array (any npy version).

    Returns:
      uint16 array [P] (a read-only view of `data`).

    Raises:
      ValueError: `data` is not a 1-D uint16 `.npy` payload.
    """
    if data[:6] != b"\x93NUMPY":
        raise ValueError("masked_lm_positions is not .npy bytes (bad magic)")
    start = 10 if data[6] == 1 else 12
    hlen = int.from_bytes(data[8:start], "little")
    header = bytes(data[start:start + hlen])
    parsed = _PARSED_HEADERS.get(header)
    if parsed is None:
        meta = ast.literal_eval(header.decode("latin1"))
        if np.dtype(meta["descr"]) != np.dtype("<u2") or len(meta["shape"]) != 1 or meta["fortran_order"]:
            raise ValueError(f"masked_lm_positions holds {meta}, expected a 1-D '<u2' array")
        parsed = _PARSED_HEADERS[header] = meta["shape"][0]
    return np.frombuffer(data, dtype="<u2", count=parsed, offset=start + hlen)


# ----------------------------------------------------------------------------------------------------
def write_table(table, path, schema):
    """Write one LDDL file.

    Args:
      table: pyarrow.Table whose columns match `schema` (names and types).
      path: destination file (callers write inside an atomic output directory).
      schema: from `make_schema`; its metadata is attached to the file.

    Raises:
      ValueError: the table's columns do not match the schema.
    """
    if not table.schema.equals(schema, check_metadata=False):
        raise ValueError(f"table columns {table.schema} do not match the LDDL schema {schema}")
    pq.write_table(table.replace_schema_metadata(schema.metadata), path, compression=COMPRESSION)


def _read_listing(directory, name):
    """(path, parsed JSON) of a directory's listing file `name`, or (path, None) when it is absent.

    Raises:
      ValueError: the file exists but is not readable JSON.
    """
    path = os.path.join(directory, name)
    if not os.path.exists(path):
        return path, None
    try:
        with open(path, encoding="utf-8") as f:
            return path, json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"'{path}' is not readable JSON: {exc}") from exc


def read_num_samples(directory):
    """The `.num_samples.json` of a directory as {basename: rows}, or None when absent.

    Raises:
      ValueError: the file exists but is not a JSON object of non-negative integers.
    """
    path, counts = _read_listing(directory, NUM_SAMPLES_FILE)
    if counts is None:
        return None
    if not isinstance(counts, dict) or not all(isinstance(v, int) and v >= 0 for v in counts.values()):
        raise ValueError(f"'{path}' must map file names to non-negative row counts")
    return counts


def write_num_samples(directory, counts):
    """Write `.num_samples.json` ({basename: rows}) atomically."""
    atomic_write_json(os.path.join(directory, NUM_SAMPLES_FILE), {k: int(v) for k, v in counts.items()})


def write_shard_digests(directory, names):
    """Write `.shard_digests.json` ({basename: {"size", "sha256"}}) of the data files `names` of `directory`.

    Why: names and row counts do not tell a dataset from one whose rows were permuted or edited, and a
    resume that reads other rows is not the training it continues. The hashes are computed once here, where
    the shards are written (one more read of data just written), so a reader can check sizes for free and
    each file's SHA-256 as it reads the file anyway.
    """
    digests = {name: file_digest(os.path.join(directory, name)) for name in sorted(names)}
    atomic_write_json(os.path.join(directory, SHARD_DIGESTS_FILE), digests)


def read_shard_digests(directory):
    """The `.shard_digests.json` of a directory as {basename: {"size", "sha256"}}, or None when absent.

    Raises:
      ValueError: the file exists but is not a JSON object of {"size": int, "sha256": str} entries.
    """
    path, digests = _read_listing(directory, SHARD_DIGESTS_FILE)
    if digests is None:
        return None
    if not isinstance(digests, dict) or not all(
            isinstance(d, dict) and isinstance(d.get("size"), int) and isinstance(d.get("sha256"), str)
            for d in digests.values()):
        raise ValueError(f"'{path}' must map file names to {{\"size\": bytes, \"sha256\": hex}}")
    return digests


def _check_sizes(directory, digests):
    """Every data file must have the size `.shard_digests.json` recorded (a stat: free even on a huge set)."""
    for name, digest in sorted(digests.items()):
        size = os.path.getsize(os.path.join(directory, name))
        if size != digest["size"]:
            raise ValueError(f"'{os.path.join(directory, name)}' has {size} bytes but {SHARD_DIGESTS_FILE} "
                             f"recorded {digest['size']} when the shards were written (altered or replaced); "
                             f"restore it from the original, or rebuild the dataset")


@dataclasses.dataclass(frozen=True)
class ShardFile:
    """One data file of a dataset directory; `sha256` is its recorded digest, None without a digest file."""
    path: str
    bin_id: object  # int, or None for unbinned datasets
    num_rows: int
    sha256: object = None

    @property
    def name(self):
        return os.path.basename(self.path)


def _footer_rows(path):
    """Row count from the Parquet footer of `path` (reads a few KB, never the data)."""
    try:
        return pq.read_metadata(path).num_rows
    except (OSError, pa.ArrowException) as exc:
        raise ValueError(f"'{path}' is not a readable Parquet file: {exc}") from exc


def _preview(names, limit=5):
    """At most `limit` names for a message, with a count of the rest."""
    names = sorted(names, key=natural_key)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_listing(directory, names, cache, listing=NUM_SAMPLES_FILE):
    """The data files found in `directory` must be exactly the ones its `.num_samples.json` lists.

    Why: the row-count cache is written last, when a dataset is complete, so it is the record of which
    files belong to it. A listed file that is gone (a failed copy, a deleted shard) would otherwise make
    every rank train on less data than planned without a word; an unlisted one is a leftover of another
    run or a file added by hand, whose rows nobody counted.

    Args:
      directory: str, the directory holding the files (for messages).
      names: iterable of data-file basenames on disk.
      cache: {basename: rows} from `read_num_samples` (or any dict keyed by basename).
      listing: the file `cache` was read from, for the message.

    Raises:
      ValueError: naming the directory and the missing and/or unlisted files.
    """
    names = set(names)
    missing, unlisted = set(cache) - names, names - set(cache)
    problems = []
    if missing:
        problems.append(f"{len(missing)} file(s) listed in {listing} are missing: {_preview(missing)}")
    if unlisted:
        problems.append(f"{len(unlisted)} data file(s) are not listed in {listing}: "
                        f"{_preview(unlisted)}")
    if problems:
        raise ValueError(f"dataset directory '{directory}' is damaged: " + "; ".join(problems)
                         + ". Restore the files from the original, or rebuild the dataset (re-run "
                         "data.prep.preprocess_bert_pretrain / data.prep.balance_dask_output)")


def list_shards(directory):
    """All data files under `directory` (recursively, like LDDL) with their bin ids and row counts.

    Row counts come from the Parquet footers (no data is read; a few KB per file, read by a few threads
    because on network filesystems the cost is latency). Where a directory has a `.num_samples.json` (the
    cache LDDL's loaders trust), it must list exactly the data files present, with the footers' row
    counts: a dataset with a missing, extra or changed file is reported instead of being used in part.
    Order is deterministic: by directory, then bin, then natural order of names (`part.2` before
    `part.10`).

    Args:
      directory: path of a preprocessed or balanced dataset.

    Returns:
      list[ShardFile].

    Raises:
      ValueError: the directory is missing or holds no data files; binned and unbinned files are mixed;
        bin ids are not 0..n-1 (LDDL's rule); a file is unreadable; `.num_samples.json` is malformed,
        lists files that are missing, misses files that are present, or gives another row count than a
        file's footer (a stale cache); `.shard_digests.json` is malformed, lists other files, or records
        another size than a file has.
    """
    if not os.path.isdir(directory):
        raise ValueError(f"dataset directory '{directory}' does not exist")
    found = []  # (path, cache of its directory or None, digests of its directory or None)
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        names = sorted((n for n in files if is_data_file(n)), key=natural_key)
        cache, digests = read_num_samples(root), read_shard_digests(root)
        if cache is not None:
            check_listing(root, names, cache)
        if digests is not None:
            check_listing(root, names, digests, SHARD_DIGESTS_FILE)
            _check_sizes(root, digests)
        found.extend((os.path.join(root, name), cache, digests) for name in names)
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        rows = list(pool.map(_footer_rows, [path for path, _, _ in found]))
    shards = []
    for (path, cache, digests), num_rows in zip(found, rows):
        name = os.path.basename(path)
        if cache is not None and cache[name] != num_rows:
            raise ValueError(f"'{path}' has {num_rows} rows but {NUM_SAMPLES_FILE} says {cache[name]}; the "
                             "row-count cache is stale (the file was replaced?); rebuild the dataset")
        sha256 = digests[name]["sha256"] if digests else None
        shards.append(ShardFile(path, bin_of_name(name), num_rows, sha256))
    if not shards:
        raise ValueError(f"'{directory}' holds no LDDL data files (*.parquet, *.parquet_<bin>)")
    binned = {s.bin_id is not None for s in shards}
    if len(binned) > 1:
        raise ValueError(f"'{directory}' mixes binned (*.parquet_<bin>) and unbinned (*.parquet) files")
    if binned == {True}:
        found = sorted({s.bin_id for s in shards})
        if found != list(range(len(found))):
            raise ValueError(f"'{directory}': bin ids {found} must be contiguous integers starting from 0")
    return sorted(shards, key=lambda s: (natural_key(os.path.dirname(s.path)), s.bin_id or 0,
                                         natural_key(s.name)))
