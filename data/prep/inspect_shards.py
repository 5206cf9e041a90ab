"""See what a pretraining shard directory holds, and run a few batches of it through the real loader.

Usage (from the repo root):
  python -m data.prep.inspect_shards data/pretrain/phase1 --vocab-file vocab/bert-large-uncased-vocab.txt \\
      [--batch-size 8] [--num-batches 3] [--quick] [--json]

Works on our preprocessor's and balancer's output, on directories written by real LDDL, and on NVIDIA /
Google HDF5 shards. Reports: file and shard count; rows per bin and per shard (from the Parquet footers,
which must agree with `.num_samples.json` where there is one: a listed file that is missing, a data file it
does not list or another row count make the directory damaged, an error; for HDF5 from the file headers); masking kind
(static / dynamic); whether the shards are balanced (rows per shard differ by at most one in every bin);
token-length statistics; one sample decoded, with masked positions shown as `<shown|original>`.

With `--vocab-file`: every file is read with the loader's own reader, which checks every row (tokens in
the vocab, lengths, masked positions) exactly as training will (`--quick` skips this full pass; the
loader still checks the files its batches read); then `--num-batches` batches go through
`data.loader.lddl_loader.get_bert_pretrain_data_loader` (rank 0 of 1, drop_last=False so a tiny directory still
gives batches) and each batch's feed shapes and the loader's samples/s are reported, with the first row
of the first batch decoded (for dynamic masking this shows the loader's masking).

Owns: reading and summarising a directory for a person (or, with `--json`, for a script). Does not own
the format (`data.lddl_format`), the checks a reader makes (`data.loader.lddl_loader`, `data.loader.hdf5_loader`) or
the loader. Bad directory, empty directory, corrupt shard or vocab mismatch: one `error:` line naming the
file, exit status 2 (see `utils.cli`).
"""
import utils.preflight  # noqa: F401  -- zlib before paddle, OMP threads default; must stay first

import itertools
import json
import os
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data import lddl_format as fmt
from data.loader import lddl_loader
from utils.cli import ArgumentParser, run_cli
from utils.logger import progress


# ----------------------------------------------------------------------------------------------------
# What is on disk (no vocab needed)
# ----------------------------------------------------------------------------------------------------

def render_tokens(tokens, labels):
    """One sequence as text, masked positions marked.

    Args:
      tokens: list[str], the sequence as fed (`[CLS] A [SEP] B [SEP]`, masked tokens replaced).
      labels: dict {position int: original token str} of the positions to predict.

    Returns:
      str, tokens joined by spaces; position p in `labels` reads `<shown|original>`.
    """
    return " ".join(f"<{tok}|{labels[p]}>" if p in labels else tok for p, tok in enumerate(tokens))


def _footer(path):
    try:
        return pq.read_metadata(path)
    except (OSError, pa.ArrowException) as exc:
        raise ValueError(f"'{path}' is not a readable Parquet file: {exc}") from None


def _layout_of(path, metadata):
    try:
        return fmt.schema_flags(metadata.schema.to_arrow_schema())
    except ValueError as exc:
        raise ValueError(f"'{path}': {exc}") from None


def _num_tokens(path):
    try:
        return pq.read_table(path, columns=["num_tokens"]).column("num_tokens").to_numpy().astype(np.int64)
    except (OSError, pa.ArrowException) as exc:
        raise ValueError(f"'{path}' is not a readable Parquet file: {exc}") from None


def _counts_source(shards):
    """Which record of the row counts the report shows (`lddl_format.list_shards` made them agree)."""
    listed = set()
    for directory in {os.path.dirname(s.path) for s in shards}:
        cache = fmt.read_num_samples(directory) or {}
        listed |= {os.path.join(directory, name) for name in cache}
    hits = sum(s.path in listed for s in shards)
    if hits == len(shards):
        return fmt.NUM_SAMPLES_FILE
    return "parquet footers" if hits == 0 else f"{fmt.NUM_SAMPLES_FILE} for {hits} files, footers for the rest"


def _lddl_files(directory):
    """ShardFiles of `directory`, each checked readable, of one LDDL layout, and counted right.

    Returns:
      (list of lddl_format.ShardFile, masking bool, binned bool, list of int64 num_tokens arrays).
    """
    shards = fmt.list_shards(directory)
    layouts, lengths = {}, []
    for s in progress(shards, desc="shards", unit="file"):
        metadata = _footer(s.path)
        layouts.setdefault(_layout_of(s.path, metadata), s.path)
        if metadata.num_rows != s.num_rows:
            raise ValueError(f"'{s.path}' has {metadata.num_rows} rows but {fmt.NUM_SAMPLES_FILE} says "
                             f"{s.num_rows}; the row-count cache is stale")
        lengths.append(_num_tokens(s.path))
    if len(layouts) > 1:
        raise ValueError(f"'{directory}' mixes LDDL layouts: " + ", ".join(
            f"'{path}' is {'static' if m else 'dynamic'}/{'binned' if b else 'unbinned'}"
            for (m, b), path in layouts.items()))
    (masking, binned), = layouts
    if not any(s.num_rows for s in shards):
        raise ValueError(f"'{directory}': all {len(shards)} data files are empty (0 rows)")
    return shards, masking, binned, lengths


def _bin_table(bin_of_file, shard_of_file, rows_of_file):
    """Per bin: rows, files, and the smallest / largest number of rows a shard holds in it."""
    bins = []
    for b in sorted(set(bin_of_file)):
        per_shard = {}
        for fb, k, rows in zip(bin_of_file, shard_of_file, rows_of_file):
            if fb == b:
                per_shard[k] = per_shard.get(k, 0) + rows
        bins.append({"bin": b, "rows": sum(per_shard.values()), "files": sum(fb == b for fb in bin_of_file),
                     "shard_rows_min": min(per_shard.values()), "shard_rows_max": max(per_shard.values())})
    return bins


def _length_stats(lengths):
    values = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    if not len(values):
        return None
    return {"min": int(values.min()), "p50": float(np.percentile(values, 50)),
            "p95": float(np.percentile(values, 95)), "max": int(values.max()), "mean": float(values.mean())}


def _lddl_sample(shards, masking):
    """The first row of the first non-empty file, decoded."""
    shard = next(s for s in shards if s.num_rows > 0)
    columns = fmt.make_schema(masking, binned=False).names
    row = next(pq.ParquetFile(shard.path).iter_batches(batch_size=1, columns=columns)).to_pylist()[0]
    tokens = ["[CLS]"] + row["A"].split() + ["[SEP]"] + row["B"].split() + ["[SEP]"]
    labels = {}
    if masking:
        positions = fmt.decode_positions(row["masked_lm_positions"]).tolist()
        labels = dict(zip(positions, row["masked_lm_labels"].split()))
    return {"file": shard.path, "row": 0, "is_random_next": bool(row["is_random_next"]),
            "num_tokens": int(row["num_tokens"]), "masked_positions": sorted(labels),
            "text": render_tokens(tokens, labels)}


def describe_lddl(directory):
    """Summary of an LDDL Parquet directory (see module docstring); reads footers and num_tokens only.

    Returns:
      dict (JSON-serialisable): kind, directory, num_files, num_shards, num_rows, row_counts_from, masking
      ('static'/'dynamic'), binned, bins (list of per-bin dicts), balanced, num_tokens (stats), sample.

    Raises:
      ValueError naming the file: missing or empty directory, unreadable/corrupt file, foreign columns,
        mixed layouts, a stale `.num_samples.json`.
    """
    shards, masking, binned, lengths = _lddl_files(directory)
    numbers = fmt.shard_numbers([s.path for s in shards])
    bins = _bin_table([s.bin_id for s in shards], numbers, [s.num_rows for s in shards])
    return {"kind": "lddl", "directory": os.fspath(directory), "num_files": len(shards),
            "num_shards": len(set(numbers)), "num_rows": sum(s.num_rows for s in shards),
            "row_counts_from": _counts_source(shards), "masking": "static" if masking else "dynamic",
            "binned": binned, "bins": bins, "balanced": all(b["shard_rows_max"] - b["shard_rows_min"] <= 1
                                                            for b in bins),
            "num_tokens": _length_stats(lengths), "sample": _lddl_sample(shards, masking)}


def describe_hdf5(directory, inv_vocab=None):
    """Summary of a directory of NVIDIA / Google HDF5 shards, in the same shape as `describe_lddl`.

    Args:
      directory: path holding *.hdf5 / *.h5 files.
      inv_vocab: list[str] id -> token for the decoded sample, or None to show ids.

    Raises:
      ValueError naming the file (see `data.loader.hdf5_loader.list_hdf5_files`).
    """
    import h5py

    from data.loader import hdf5_loader

    files = hdf5_loader.list_hdf5_files(directory)
    lengths = []
    for f in progress(files, desc="shards", unit="file"):
        try:
            with h5py.File(f.path, "r") as h5:
                lengths.append(np.asarray(h5["input_mask"][...]).sum(axis=1).astype(np.int64))
        except OSError as exc:  # a damaged data chunk; the header was read fine by list_hdf5_files
            raise ValueError(f"'{f.path}' is not a readable HDF5 file: {exc}") from None
    bins = _bin_table([0] * len(files), [f.shard for f in files], [f.rows for f in files])
    return {"kind": "hdf5", "directory": os.fspath(directory), "num_files": len(files), "num_shards": len(files),
            "num_rows": sum(f.rows for f in files), "row_counts_from": "hdf5 headers", "masking": "static",
            "binned": False, "bins": bins, "balanced": bins[0]["shard_rows_max"] - bins[0]["shard_rows_min"] <= 1,
            "num_tokens": _length_stats(lengths), "sample": _hdf5_sample(files[0], inv_vocab)}


def _hdf5_sample(data_file, inv_vocab):
    import h5py

    with h5py.File(data_file.path, "r") as h5:
        row = {key: np.asarray(h5[key][0]) for key in ("input_ids", "input_mask", "masked_lm_positions",
                                                        "masked_lm_ids", "next_sentence_labels")}
    n = int(row["input_mask"].sum())
    name = (lambda i: inv_vocab[i] if 0 <= i < len(inv_vocab) else f"#{i}") if inv_vocab else str
    labels = {int(p): name(int(t)) for p, t in zip(row["masked_lm_positions"], row["masked_lm_ids"]) if p != 0}
    return {"file": data_file.path, "row": 0, "is_random_next": bool(np.asarray(row["next_sentence_labels"]).item()),
            "num_tokens": n, "masked_positions": sorted(labels),
            "text": render_tokens([name(int(i)) for i in row["input_ids"][:n]], labels)}


# ----------------------------------------------------------------------------------------------------
# Through the loader (vocab needed)
# ----------------------------------------------------------------------------------------------------

def check_vocab(directory, vocab_file):
    """Read every file with the loader's reader, which checks every row against `vocab_file`.

    Returns:
      dict: vocab_file, files_checked, rows_checked.

    Raises:
      ValueError naming the file: a token not in the vocab (ids out of range for HDF5), or any other bad row.
    """
    files, reader, _ = lddl_loader.open_dataset(directory, vocab_file=vocab_file)
    for f in progress(files, desc="vocab check", unit="file"):
        reader.read(f)
    return {"vocab_file": os.fspath(vocab_file), "files_checked": len(files),
            "rows_checked": int(sum(f.rows for f in files))}


def _decode_feed_row(feed, inv_vocab, row=0):
    n = int(feed["attention_mask"][row, 0, 0].sum())
    ids, labels = feed["input_ids"][row, :n].tolist(), feed["masked_lm_labels"][row, :n]
    marked = {int(p): inv_vocab[int(labels[p])] for p in np.flatnonzero(labels != -1)}
    return render_tokens([inv_vocab[i] for i in ids], marked)


def run_loader(directory, vocab_file, batch_size=8, num_batches=3, seed=42):
    """Take `num_batches` batches from the real pretraining loader and time them.

    Returns:
      dict: batch_size, batches_per_epoch, build_seconds, batches (list of {shapes: {feed: [dims]},
      dtypes: {feed: str}, masked_tokens: int, seconds: float}), samples, seconds, samples_per_second
      (the first batch includes reading its files), sample (str, the
      first row of the first batch with its masked positions marked).

    Raises:
      ValueError: from `get_bert_pretrain_data_loader` (bad directory, shards, or vocab).
    """
    import tokenizer

    start = time.perf_counter()
    loader = lddl_loader.get_bert_pretrain_data_loader(directory, vocab_file=vocab_file, batch_size=batch_size,
                                                       rank=0, world_size=1, seed=seed, drop_last=False)
    built = time.perf_counter()
    batches, samples, sample, last = [], 0, None, built
    try:
        for feed in itertools.islice(iter(loader), num_batches):
            now = time.perf_counter()
            batches.append({"shapes": {k: list(v.shape) for k, v in feed.items()},
                            "dtypes": {k: str(v.dtype) for k, v in feed.items()},
                            "masked_tokens": int((feed["masked_lm_labels"] != -1).sum()), "seconds": now - last})
            samples, last = samples + len(feed["input_ids"]), now
            if sample is None:
                sample = feed
    finally:
        loader.close()
    seconds = last - built
    inv_vocab = list(tokenizer.load_vocab(vocab_file))
    return {"batch_size": batch_size, "batches_per_epoch": len(loader), "build_seconds": built - start,
            "batches": batches, "samples": samples, "seconds": seconds,
            "samples_per_second": samples / seconds if seconds > 0 else None,
            "sample": _decode_feed_row(sample, inv_vocab) if sample is not None else None}


def inspect_directory(directory, vocab_file=None, batch_size=8, num_batches=3, seed=42, full_check=True):
    """The whole report: `describe_*`, then (with a vocab) `check_vocab` and `run_loader`.

    Args:
      directory: shard directory (LDDL Parquet or HDF5).
      vocab_file: path or None; without it the vocab check and the loader batches are skipped.
      batch_size: int >= 1; num_batches: int >= 0; seed: int >= 0 (loader arguments).
      full_check: bool, read every file with the loader's reader (else only the loader's own checks).

    Returns:
      dict, see `describe_lddl`, plus vocab_check and loader (None when skipped).

    Raises:
      ValueError: bad arguments, or see `describe_lddl`, `check_vocab`, `run_loader`.
    """
    for flag, value, low in (("--batch-size", batch_size, 1), ("--num-batches", num_batches, 0), ("--seed", seed, 0)):
        if value < low:
            raise ValueError(f"{flag} must be >= {low}, got {value}")
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise ValueError(f"shard directory '{directory}' does not exist or is not a directory")
    inv_vocab = None
    if vocab_file is not None:
        import tokenizer

        inv_vocab = list(tokenizer.load_vocab(vocab_file))
    if lddl_loader.is_hdf5_dir(directory):
        report = describe_hdf5(directory, inv_vocab)
    else:
        report = describe_lddl(directory)
    report["vocab_check"] = report["loader"] = None
    if vocab_file is not None:
        if full_check:
            report["vocab_check"] = check_vocab(directory, vocab_file)
        if num_batches:
            report["loader"] = run_loader(directory, vocab_file, batch_size, num_batches, seed)
    return report


# ----------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------

def _describe_lines(r):
    bins = r["bins"]
    yield (f"{r['directory']}: {r['kind']}, {r['num_files']} files, {r['num_shards']} shards, {r['num_rows']} rows "
           f"(row counts from {r['row_counts_from']})")
    yield (f"layout: {r['masking']} masking, " + (f"binned ({len(bins)} bins)" if r["binned"] else "unbinned")
           + (", balanced (in every bin, rows per shard differ by at most 1)" if r["balanced"] else
              ", not balanced (in some bin, rows per shard differ by more than 1)"))
    for b in bins:
        yield (f"  {'bin ' + str(b['bin']) if r['binned'] else 'all rows'}: {b['rows']} rows in {b['files']} "
               f"files, {b['shard_rows_min']}..{b['shard_rows_max']} per shard")
    t = r["num_tokens"]
    if t:
        yield (f"num_tokens: min {t['min']}, median {t['p50']:g}, p95 {t['p95']:g}, max {t['max']}, "
               f"mean {t['mean']:.1f}")
    s = r["sample"]
    yield (f"sample ({os.path.basename(s['file'])} row {s['row']}, is_random_next={s['is_random_next']}, "
           f"{s['num_tokens']} tokens, masked <shown|original>):")
    yield f"  {s['text']}"


def _loader_lines(r):
    v = r["vocab_check"]
    if v:
        yield (f"vocab check: {v['files_checked']} files, {v['rows_checked']} rows read by the loader's reader: "
               f"all tokens in {v['vocab_file']}")
    lo = r["loader"]
    if lo is None:
        yield "loader: skipped" + ("" if v else " (pass --vocab-file to run batches through it)")
        return
    yield (f"loader: batch size {lo['batch_size']}, {lo['batches_per_epoch']} batches per epoch "
           f"(rank 0 of 1, drop_last=False), built in {lo['build_seconds']:.2f} s")
    for i, b in enumerate(lo["batches"]):
        shapes = " ".join(f"{k} {v}" for k, v in b["shapes"].items())
        yield f"  batch {i}: {shapes}; {b['masked_tokens']} masked tokens; {b['seconds']:.3f} s"
    rate = lo["samples_per_second"]
    yield (f"  {len(lo['batches'])} batches, {lo['samples']} samples in {lo['seconds']:.3f} s"
           + (f": {rate:,.0f} samples/s" if rate else ""))
    if lo["sample"]:
        yield f"  first row of batch 0: {lo['sample']}"


def format_report(report):
    """The report as human-readable text (str, ending in a newline)."""
    return "\n".join(itertools.chain(_describe_lines(report), _loader_lines(report))) + "\n"


def _parse_args(argv):
    parser = ArgumentParser(prog="python -m data.prep.inspect_shards", description=__doc__.split("\n")[0])
    parser.add_argument("directory", help="shard directory (LDDL Parquet, or *.hdf5 / *.h5)")
    parser.add_argument("--vocab-file", default=None, help="check tokens against it and run loader batches")
    parser.add_argument("--batch-size", type=int, default=8, help="loader batch size (default 8)")
    parser.add_argument("--num-batches", type=int, default=3, help="loader batches to run (default 3; 0: none)")
    parser.add_argument("--seed", type=int, default=42, help="loader seed (default 42)")
    parser.add_argument("--quick", action="store_true",
                        help="skip reading every file with the loader's reader (the vocab check)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser.parse_args(argv)


def main(argv=None):
    """CLI entry point: prints the report on stdout and returns it (dict). Raises ValueError on bad input."""
    args = _parse_args(argv)
    report = inspect_directory(args.directory, args.vocab_file, args.batch_size, args.num_batches, args.seed,
                     full_check=not args.quick)
    sys.stdout.write(json.dumps(report, sort_keys=True) + "\n" if args.json else format_report(report))
    return report


def cli(argv=None):
    """`main` as a command (`utils.cli.run_cli`), also the `inspect_shards` console script: returns the exit
    status, 0 ok or 2 bad input."""
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
