"""The data pipeline end to end, run as a user runs it: `python -m data.prep.<tool>` in a fresh process.

Real input: the enwiki dump excerpt in ../shared (skipped when absent). Chain: data.prep.wikipedia ->
data.prep.build_vocab (a small vocab) -> data.prep.preprocess_bert_pretrain (static masking, binned, seq 128,
with the small vocab; and dynamic masking, unbinned, with bert-base-uncased) -> data.prep.balance_dask_output
-> data.prep.inspect_shards. Checked against the files themselves, read with pyarrow: rows conserved through
balancing (the same multiset of rows), every bin's rows per shard within one of each other, the loader's
batch shapes. Then bad input through the same commands: exit status 2, the last stderr line
`error: ...` naming the file, no traceback, and no output directory (or temporary one) left behind.
"""
import collections
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from data import lddl_format as fmt

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DUMP = SHARED / "data" / "wiki" / "enwiki-sample-pages-articles.xml.bz2"
UNCASED = SHARED / "vocab" / "bert-base-uncased-vocab.txt"

pytestmark = pytest.mark.skipif(not (DUMP.exists() and UNCASED.exists()),
                                reason="../shared enwiki sample or bert-base-uncased vocab not present")


def cli(module, *args, expect=0):
    """Run `python -m data.prep.<module> args...` from the repo root in a fresh environment."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
           "OMP_NUM_THREADS": "1", "LC_ALL": "C.UTF-8"}
    proc = subprocess.run([sys.executable, "-m", f"data.prep.{module}", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == expect, f"{module} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


def error_line(module, *args):
    """Run a command that must fail on its input; return its one `error:` line."""
    proc = cli(module, *args, expect=2)
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.splitlines()[-1]
    assert last.startswith("error: "), proc.stderr
    return last


def nothing_left(path):
    """Neither `path` nor a temporary sibling of it (`<name>.tmp-...`) exists."""
    path = Path(path)
    return not path.exists() and not [p for p in path.parent.iterdir() if p.name.startswith(path.name + ".")]


def rows_of(directory):
    """{basename: list of row dicts} of every data file, read with pyarrow."""
    return {p.name: pq.read_table(p).to_pylist() for p in sorted(Path(directory).iterdir()) if fmt.is_data_file(p.name)}


def row_key(row):
    return tuple(v for k, v in sorted(row.items()) if k != "bin_id")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    out = {"root": root}
    proc = cli("wikipedia", "--dump", DUMP, "--output-dir", root / "wiki", "--num-files", 2, "--num-workers", 2)
    out["articles"] = int(re.search(r"(\d+) articles kept", proc.stderr).group(1))
    cli("build_vocab", "--input", root / "wiki", "--output", root / "small-vocab.txt", "--vocab-size", 2000)
    proc = cli("preprocess_bert_pretrain", "--wikipedia", root / "wiki", "--sink", root / "static_raw",
               "--vocab-file", root / "small-vocab.txt", "--masking", "--target-seq-length", 128, "--bin-size", 64,
               "--duplicate-factor", 1, "--num-workers", 2)
    out["static_instances"] = int(re.search(r"wrote (\d+) instances", proc.stderr).group(1))
    cli("balance_dask_output", "--indir", root / "static_raw", "--outdir", root / "static", "--num-shards", 4)
    out["static"] = json.loads(cli("inspect_shards", root / "static", "--vocab-file", root / "small-vocab.txt",
                                   "--batch-size", 8, "--num-batches", 3, "--json").stdout)
    cli("preprocess_bert_pretrain", "--wikipedia", root / "wiki", "--sink", root / "dynamic", "--vocab-file", UNCASED,
        "--no-bin", "--target-seq-length", 128, "--duplicate-factor", 1, "--sample-ratio", 0.5, "--num-workers", 0)
    out["dynamic_raw_rows"] = rows_of(root / "dynamic")
    cli("balance_dask_output", "--indir", root / "dynamic", "--num-shards", 2)  # in place
    out["dynamic"] = json.loads(cli("inspect_shards", root / "dynamic", "--vocab-file", UNCASED, "--batch-size", 8,
                                    "--num-batches", 2, "--json").stdout)
    return out


def test_wikipedia_and_vocab(run):
    root = run["root"]
    lines = [ln for p in sorted((root / "wiki").iterdir()) for ln in p.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == run["articles"] > 100  # the excerpt holds 106 articles, some may clean to nothing
    assert all(re.fullmatch(r"wiki-\d+ \S.*", ln) for ln in lines)
    vocab = (root / "small-vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert len(vocab) == 2000 and vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _check_balanced(raw_rows, balanced_dir, num_shards):
    got = rows_of(balanced_dir)
    assert collections.Counter(row_key(r) for rows in got.values() for r in rows) == \
        collections.Counter(row_key(r) for rows in raw_rows.values() for r in rows)
    per_bin = collections.defaultdict(list)
    for name, rows in got.items():
        per_bin[fmt.bin_of_name(name)].append(len(rows))
    for sizes in per_bin.values():
        assert len(sizes) == num_shards and max(sizes) - min(sizes) <= 1
    assert fmt.read_num_samples(balanced_dir) == {name: len(rows) for name, rows in got.items()}
    return got


def _check_batches(loader, batch_size):
    assert loader["samples"] > 0 and loader["samples_per_second"] > 0
    for b in loader["batches"]:
        n, seq = b["shapes"]["input_ids"]
        assert n <= batch_size and seq in (64, 128)
        assert b["shapes"] == {"input_ids": [n, seq], "token_type_ids": [n, seq], "attention_mask": [n, 1, 1, seq],
                               "next_sentence_labels": [n, 1], "masked_lm_labels": [n, seq]}
        assert set(b["dtypes"].values()) == {"int64"} and b["masked_tokens"] > 0


def test_static_binned_end_to_end(run):
    root, report = run["root"], run["static"]
    raw = rows_of(root / "static_raw")
    assert sum(len(r) for r in raw.values()) == run["static_instances"] == report["num_rows"]
    got = _check_balanced(raw, root / "static", 4)
    assert (report["masking"], report["binned"], report["balanced"], report["num_shards"]) == ("static", True, True, 4)
    assert [b["rows"] for b in report["bins"]] == [sum(len(rows) for n, rows in got.items()
                                                       if fmt.bin_of_name(n) == b) for b in (0, 1)]
    assert report["vocab_check"]["rows_checked"] == report["num_rows"]
    assert report["loader"]["batches_per_epoch"] == sum(-(-b["rows"] // 8) for b in report["bins"])
    _check_batches(report["loader"], 8)


def test_dynamic_unbinned_in_place_end_to_end(run):
    root, report = run["root"], run["dynamic"]
    _check_balanced(run["dynamic_raw_rows"], root / "dynamic", 2)
    assert sorted(p.name for p in (root / "dynamic").iterdir()) == [fmt.NUM_SAMPLES_FILE, fmt.SHARD_DIGESTS_FILE,
                                                                   "shard-0.parquet", "shard-1.parquet"]
    assert (report["masking"], report["binned"], report["balanced"]) == ("dynamic", False, True)
    assert report["num_rows"] == sum(len(r) for r in run["dynamic_raw_rows"].values())
    _check_batches(report["loader"], 8)


def test_bad_inputs_fail_in_one_line_and_leave_nothing(run, tmp_path):
    missing = tmp_path / "enwiki-missing.xml.bz2"
    assert str(missing) in error_line("wikipedia", "--dump", missing, "--output-dir", tmp_path / "w")
    assert nothing_left(tmp_path / "w")

    (tmp_path / "empty").mkdir()
    line = error_line("preprocess_bert_pretrain", "--wikipedia", tmp_path / "empty", "--sink", tmp_path / "s",
                      "--vocab-file", UNCASED, "--num-workers", 0)
    assert str(tmp_path / "empty") in line and nothing_left(tmp_path / "s")
    assert str(tmp_path / "empty") in error_line("build_vocab", "--input", tmp_path / "empty", "--output",
                                                 tmp_path / "v.txt")
    assert nothing_left(tmp_path / "v.txt")
    assert "holds no LDDL data files" in error_line("inspect_shards", tmp_path / "empty")

    corrupt = tmp_path / "corrupt"
    shutil.copytree(run["root"] / "static", corrupt)
    (corrupt / "shard-2.parquet_1").write_bytes(b"PAR1 truncated")
    assert str(corrupt / "shard-2.parquet_1") in error_line("inspect_shards", corrupt)
    line = error_line("balance_dask_output", "--indir", corrupt, "--outdir", tmp_path / "b", "--num-shards", 2)
    assert str(corrupt / "shard-2.parquet_1") in line and nothing_left(tmp_path / "b")

    line = error_line("inspect_shards", run["root"] / "dynamic", "--vocab-file", run["root"] / "small-vocab.txt")
    assert re.search(r"shard-\d\.parquet: column \S+ \(row \d+\) holds tokens that are not in the vocab", line)
    assert str(run["root"] / "small-vocab.txt") in line
