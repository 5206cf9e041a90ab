"""Load balancing: +-1 rows per shard and bin, rows preserved, round-robin order, streaming, fixtures, errors."""
import collections
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import shared_path
from data.prep import balance_dask_output as bal
from data import lddl_format as fmt
from utils.cli import run_cli


def _make_dataset(directory, sizes, binned):
    """part files with rows A='<bin>:<running index>' so each row is unique and its origin known."""
    directory.mkdir(parents=True, exist_ok=True)
    schema = fmt.make_schema(False, binned)
    bins = range(len(sizes[0])) if binned else [None]
    for part, per_bin in enumerate(sizes):
        for b, n in zip(bins, per_bin):
            start = sum(s[b or 0] for s in sizes[:part])
            rows = [{"A": f"{b}:{start + i}", "B": "x", "is_random_next": i % 2 == 0, "num_tokens": 5 + i,
                     **({"bin_id": b} if binned else {})} for i in range(n)]
            fmt.write_table(pa.Table.from_pylist(rows, schema=schema), str(directory / fmt.part_name(part, b)),
                            schema)


def _rows_by_file(directory):
    return {s.name: pq.read_table(s.path).column("A").to_pylist() for s in fmt.list_shards(str(directory))}


def test_shard_sizes_by_hand():
    assert bal.shard_sizes(10, 4) == [3, 3, 2, 2]
    assert bal.shard_sizes(8, 4) == [2, 2, 2, 2]
    assert bal.shard_sizes(3, 3) == [1, 1, 1]


def test_round_robin_binned(tmp_path):
    # bin 0: 5 + 0 + 6 = 11 rows, bin 1: 2 + 7 + 3 = 12 rows (divides evenly: LDDL's balancer loops forever).
    _make_dataset(tmp_path / "in", [(5, 2), (0, 7), (6, 3)], binned=True)
    counts = bal.balance(str(tmp_path / "in"), 4, str(tmp_path / "out"))
    out = _rows_by_file(tmp_path / "out")
    assert counts == {name: len(rows) for name, rows in out.items()}
    assert fmt.read_num_samples(str(tmp_path / "out")) == counts
    for b, total in ((0, 11), (1, 12)):
        # Row i of the bin (input files in order) lands in shard i % 4, in input order.
        for k in range(4):
            assert out[fmt.shard_name(k, b)] == [f"{b}:{i}" for i in range(k, total, 4)]
    assert [counts[fmt.shard_name(k, 1)] for k in range(4)] == [3, 3, 3, 3]
    assert [counts[fmt.shard_name(k, 0)] for k in range(4)] == [3, 3, 3, 2]
    assert sorted(os.listdir(tmp_path / "in")) != sorted(os.listdir(tmp_path / "out"))  # inputs kept


def test_unbinned_and_schema_preserved(tmp_path):
    _make_dataset(tmp_path / "in", [(4,), (3,)], binned=False)
    bal.balance(str(tmp_path / "in"), 3, str(tmp_path / "out"))
    out = _rows_by_file(tmp_path / "out")
    assert out == {"shard-0.parquet": ["None:0", "None:3", "None:6"], "shard-1.parquet": ["None:1", "None:4"],
                   "shard-2.parquet": ["None:2", "None:5"]}
    schema = pq.read_schema(tmp_path / "out" / "shard-0.parquet")
    assert schema.equals(fmt.make_schema(False, False), check_metadata=True)


def test_groups_and_small_buffers_give_identical_shards(tmp_path):
    _make_dataset(tmp_path / "in", [(7,), (9,), (4,)], binned=False)
    files = fmt.list_shards(str(tmp_path / "in"))
    for label, kwargs in (("one", {}), ("groups", {"max_open_writers": 2}), ("flushy", {"buffer_mb": 1e-9})):
        (tmp_path / label).mkdir()
        bal.balance_bin(files, 5, str(tmp_path / label), **kwargs)
    one = _rows_by_file(tmp_path / "one")
    assert one == _rows_by_file(tmp_path / "groups") == _rows_by_file(tmp_path / "flushy")
    # Flushing after every input file writes one row group per file that fed the shard: shard 1 holds
    # rows 1, 6 (file 0), 11 (file 1) and 16 (file 2); shard 0 holds 0, 5, 10, 15 (files 0 and 1).
    assert pq.ParquetFile(tmp_path / "flushy" / "shard-1.parquet").num_row_groups == 3
    assert pq.ParquetFile(tmp_path / "flushy" / "shard-0.parquet").num_row_groups == 2
    assert pq.ParquetFile(tmp_path / "one" / "shard-1.parquet").num_row_groups == 1


def test_in_place_replaces_inputs_and_keeps_other_files(tmp_path):
    directory = tmp_path / "data"
    _make_dataset(directory, [(3, 3), (3, 3)], binned=True)
    (directory / "_common_metadata").write_bytes(b"kept")
    before = collections.Counter(a for rows in _rows_by_file(directory).values() for a in rows)
    bal.balance(str(directory), 2)
    names = sorted(os.listdir(directory))
    assert names == sorted([".num_samples.json", ".shard_digests.json", "_common_metadata"] +
                           [fmt.shard_name(k, b) for k in range(2) for b in range(2)])
    assert (directory / "_common_metadata").read_bytes() == b"kept"
    after = collections.Counter(a for rows in _rows_by_file(directory).values() for a in rows)
    assert after == before


def test_in_place_failure_leaves_inputs_untouched(tmp_path, monkeypatch):
    directory = tmp_path / "data"
    _make_dataset(directory, [(3, 3), (3, 3)], binned=True)
    before = {n: (directory / n).read_bytes() for n in os.listdir(directory)}
    # A file of the last bin turns unreadable after the listing, so the failure comes after bin 0's shards
    # were written.
    real_read = bal._read_checked

    def read_checked(shard, schema):
        if shard.name == fmt.part_name(1, 1):
            raise ValueError(f"cannot read '{shard.path}': injected")
        return real_read(shard, schema)

    monkeypatch.setattr(bal, "_read_checked", read_checked)
    with pytest.raises(ValueError, match="injected"):
        bal.balance(str(directory), 2)
    monkeypatch.undo()
    assert {n: (directory / n).read_bytes() for n in os.listdir(directory)} == before
    assert os.listdir(tmp_path) == ["data"]  # no temporary directory left behind
    (directory / "sub").mkdir()
    with pytest.raises(ValueError, match="flat --indir"):
        bal.balance(str(directory), 2)


def test_num_shards_larger_than_rows_is_an_error(tmp_path, capsys):
    _make_dataset(tmp_path / "in", [(2, 5), (1, 4)], binned=True)
    argv = ["--indir", str(tmp_path / "in"), "--num-shards", "4", "--outdir", str(tmp_path / "out")]
    assert run_cli(bal.main, argv) == 2
    assert "only 3 rows in bin 0, fewer than --num-shards 4" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="--num-shards must be >= 1"):
        bal.balance(str(tmp_path / "in"), 0, str(tmp_path / "out"))


def test_stale_cache_and_mixed_schema_are_errors(tmp_path):
    _make_dataset(tmp_path / "in", [(3,), (3,)], binned=False)
    fmt.write_num_samples(str(tmp_path / "in"), {"part.0.parquet": 2, "part.1.parquet": 3})
    with pytest.raises(ValueError, match="stale"):
        bal.balance(str(tmp_path / "in"), 2, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    os.remove(tmp_path / "in" / fmt.NUM_SAMPLES_FILE)
    masked = fmt.make_schema(True, False)
    row = {"A": "a", "B": "b", "is_random_next": True, "num_tokens": 5,
           "masked_lm_positions": fmt.encode_positions([1]), "masked_lm_labels": "a"}
    fmt.write_table(pa.Table.from_pylist([row], schema=masked), str(tmp_path / "in" / "part.2.parquet"), masked)
    with pytest.raises(ValueError, match="part.2.parquet"):
        bal.balance(str(tmp_path / "in"), 2, str(tmp_path / "out"))


def test_existing_outdir_needs_overwrite(tmp_path):
    _make_dataset(tmp_path / "in", [(3,)], binned=False)
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match="already exists"):
        bal.balance(str(tmp_path / "in"), 1, str(tmp_path / "out"))
    assert bal.balance(str(tmp_path / "in"), 1, str(tmp_path / "out"), overwrite=True) == {"shard-0.parquet": 3}


def _row_multiset(directory):
    counter = collections.Counter()
    for shard in fmt.list_shards(str(directory)):
        for row in pq.read_table(shard.path).to_pylist():
            counter[tuple(sorted(row.items()))] += 1
    return counter


@pytest.mark.parametrize("raw, balanced", [("bin_masked", "bal_p9_bin_masked"), ("unbin_dyn", "bal_p9_unbin_dyn")])
def test_fixture_balancing_matches_lddl(tmp_path, raw, balanced):
    """LDDL balanced its raw fixture into 4 shards; ours must hold the same rows with the same per-bin totals."""
    src, ref = shared_path("data", "lddl-fixtures", raw), shared_path("data", "lddl-fixtures", balanced)
    counts = bal.balance(str(src), 4, str(tmp_path / "out"))
    ref_counts = fmt.read_num_samples(str(ref))
    assert set(counts) == set(ref_counts)  # same file names: shard-<k>.parquet[_<bin>]

    def per_bin(c):
        totals = collections.defaultdict(list)
        for name, n in c.items():
            totals[fmt.bin_of_name(name)].append(n)
        return {b: (sum(v), max(v) - min(v)) for b, v in totals.items()}

    ours, theirs = per_bin(counts), per_bin(ref_counts)
    assert {b: t for b, (t, _) in ours.items()} == {b: t for b, (t, _) in theirs.items()}
    assert all(spread <= 1 for _, spread in ours.values())
    assert _row_multiset(tmp_path / "out") == _row_multiset(ref) == _row_multiset(src)


def test_fixture_in_place_copy(tmp_path):
    directory = tmp_path / "copy"
    shutil.copytree(shared_path("data", "lddl-fixtures", "unbin_masked"), directory)
    bal.balance(str(directory), 3)
    assert sorted(n for n in os.listdir(directory) if fmt.is_data_file(n)) == \
        ["shard-0.parquet", "shard-1.parquet", "shard-2.parquet"]
    assert sum(fmt.read_num_samples(str(directory)).values()) == 343


def test_in_place_rerun_removes_the_temp_dir_of_a_killed_run(tmp_path, caplog):
    # Issue 8 defect 7: `<indir>.tmp-*` of a killed in-place balancing stayed forever.
    import logging
    import socket
    import subprocess
    import sys

    directory = tmp_path / "data"
    _make_dataset(directory, [(3, 3), (3, 3)], binned=True)
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    stale = tmp_path / f"data.tmp-{dead}@{socket.gethostname()}-abcdefgh"
    stale.mkdir()
    (stale / fmt.shard_name(0, 0)).write_bytes(b"half-written")
    with caplog.at_level(logging.INFO, logger="utils.fs"):
        bal.balance(str(directory), 2)
    assert sorted(os.listdir(tmp_path)) == ["data"]
    assert any(f"removed {stale}" in r.getMessage() for r in caplog.records)


def test_parquet_without_lddl_columns_is_refused_before_writing(tmp_path, capsys):
    # Issue 8 defect 10: any Parquet was accepted and rewritten as "shards".
    indir = tmp_path / "in"
    indir.mkdir()
    pq.write_table(pa.table({"text": ["a b", "c d", "e f"], "label": [0, 1, 0]}), indir / "part.0.parquet")
    pq.write_table(pa.table({"text": ["g h"], "label": [1]}), indir / "part.1.parquet")
    argv = ["--indir", str(indir), "--num-shards", "2", "--outdir", str(tmp_path / "out")]
    assert run_cli(bal.main, argv) == 2
    err = capsys.readouterr().err
    assert f"'{indir / 'part.0.parquet'}' is not an LDDL shard" in err
    assert "missing column(s) ['A', 'B', 'is_random_next', 'num_tokens']" in err
    assert sorted(os.listdir(tmp_path)) == ["in"]
    # A binned file must carry bin_id; in place, nothing of the inputs changes either.
    indir2 = tmp_path / "in2"
    _make_dataset(indir2, [(3,), (3,)], binned=False)
    before = {n: (indir2 / n).read_bytes() for n in os.listdir(indir2)}
    os.rename(indir2 / "part.1.parquet", indir2 / "part.1.parquet_0")
    os.rename(indir2 / "part.0.parquet", indir2 / "part.0.parquet_0")
    assert run_cli(bal.main, ["--indir", str(indir2), "--num-shards", "2"]) == 2
    assert "missing column(s) ['bin_id']" in capsys.readouterr().err
    assert sorted(os.listdir(indir2)) == sorted(n + "_0" for n in before)
