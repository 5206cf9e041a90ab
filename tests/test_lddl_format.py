"""The LDDL format: our schema and files against real LDDL 0.1.0 fixtures, names, bins, positions, listing."""
import io
import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import shared_path
from data import lddl_format as fmt
from data.prep import preprocess_bert_pretrain as pre

FIXTURE_DIRS = ["bin_dyn", "bin_masked", "unbin_dyn", "unbin_masked",
                "bal_p9_bin_dyn", "bal_p9_bin_masked", "bal_p9_unbin_dyn", "bal_p9_unbin_masked"]
FIXTURE_BIN_SIZE = 32  # the fixtures were written with --target-seq-length 128 --bin-size 32 (4 bins)


def _fixture(name):
    return shared_path("data", "lddl-fixtures", name)


def test_names_and_bins_by_hand():
    assert fmt.part_name(3) == "part.3.parquet"
    assert fmt.part_name(3, 1) == "part.3.parquet_1"
    assert fmt.shard_name(0, 12) == "shard-0.parquet_12"
    assert fmt.bin_of_name("shard-7.parquet") is None
    assert fmt.bin_of_name("part.0.parquet_12") == 12
    with pytest.raises(ValueError, match="bin suffix"):
        fmt.bin_of_name("part.0.parquet_x")
    assert fmt.is_data_file("part.1.parquet_3") and fmt.is_data_file("shard-1.parquet")
    assert not fmt.is_data_file("_metadata") and not fmt.is_data_file(".num_samples.json")
    assert fmt.num_bins(512, 64) == 8
    # bin = min((n - 1) // 64, nbins - 1): 1..64 -> 0, 65..128 -> 1, longer stays in the last bin.
    assert fmt.bin_ids([1, 64, 65, 128, 200], 64, 2).tolist() == [0, 0, 1, 1, 1]


def test_shard_of_a_file_name_by_hand():
    assert fmt.shard_stem("d/shard-3.parquet_2") == "d/shard-3.parquet"
    assert fmt.shard_stem("part.10.parquet") == "part.10.parquet"
    with pytest.raises(ValueError, match="bin suffix"):
        fmt.shard_stem("part.0.parquet_x")
    # Bins of one shard share its number; shards are numbered in natural order (2 before 10).
    paths = ["part.10.parquet_0", "part.2.parquet_1", "part.2.parquet_0", "part.10.parquet_1", "part.0.parquet_0"]
    assert fmt.shard_numbers(paths) == [2, 1, 1, 2, 0]
    assert fmt.shard_numbers(["shard-1.parquet", "shard-0.parquet"]) == [1, 0]
    assert sorted(["a10", "a9", "b1", "a10b2", "a10b10"], key=fmt.natural_key) == ["a9", "a10", "a10b2", "a10b10",
                                                                                    "b1"]


def test_positions_encoding_is_np_save():
    for positions in ([], [1], [5, 15, 17, 24, 29], list(range(1, 300, 3))):
        buf = io.BytesIO()
        np.save(buf, np.asarray(positions, dtype=np.uint16))
        assert fmt.encode_positions(positions) == buf.getvalue()
        assert fmt.decode_positions(buf.getvalue()).tolist() == positions
    rows = [[3, 4], [], [7], [1, 2, 9]]
    flat = np.concatenate([np.asarray(r, int) for r in rows])
    column = fmt.encode_positions_column(flat, [len(r) for r in rows])
    assert column.to_pylist() == [fmt.encode_positions(r) for r in rows]


def test_decode_positions_rejects_other_payloads():
    with pytest.raises(ValueError, match="magic"):
        fmt.decode_positions(b"not an array")
    buf = io.BytesIO()
    np.save(buf, np.arange(3, dtype=np.int64))
    with pytest.raises(ValueError, match="u2"):
        fmt.decode_positions(buf.getvalue())


@pytest.mark.parametrize("name", FIXTURE_DIRS)
def test_schema_matches_fixture(name):
    shard = fmt.list_shards(_fixture(name))[0]
    theirs = pq.read_schema(shard.path)
    masking, binned = "masked" in name, "unbin" not in name
    assert fmt.schema_flags(theirs) == (masking, binned)
    ours = fmt.make_schema(masking, binned)
    assert ours.names == theirs.names and ours.types == theirs.types
    pandas_ours, pandas_theirs = (json.loads(s.metadata[b"pandas"]) for s in (ours, theirs))
    for key in ("index_columns", "column_indexes", "columns"):
        assert pandas_ours[key] == pandas_theirs[key]


@pytest.mark.parametrize("name", FIXTURE_DIRS)
def test_reader_reads_fixture(name):
    directory = _fixture(name)
    shards = fmt.list_shards(directory)
    cache = fmt.read_num_samples(directory)
    assert (cache is not None) == name.startswith("bal_")  # only the balancer writes the cache
    for shard in shards:
        table = pq.read_table(shard.path)
        assert shard.num_rows == len(table) == pq.read_metadata(shard.path).num_rows
        if cache is not None:
            assert cache[shard.name] == len(table)
        _check_rows(table, shard.bin_id, FIXTURE_BIN_SIZE, nbins=4)


def _check_rows(table, file_bin, bin_size, nbins):
    rows = table.to_pylist()
    for row in rows:
        len_a, len_b = len(row["A"].split()), len(row["B"].split())
        assert row["num_tokens"] == len_a + len_b + 3
        if file_bin is not None:
            assert row["bin_id"] == file_bin == min((row["num_tokens"] - 1) // bin_size, nbins - 1)
        if "masked_lm_positions" in row:
            positions = fmt.decode_positions(row["masked_lm_positions"])
            assert positions.dtype == np.uint16
            assert len(positions) == len(row["masked_lm_labels"].split()) >= 1
            assert (np.diff(positions.astype(int)) > 0).all()
            # Never [CLS] (0) nor either [SEP] (len_a + 1, num_tokens - 1), and inside the sequence.
            assert not {0, len_a + 1, row["num_tokens"] - 1} & set(positions.tolist())
            assert positions.max() < row["num_tokens"]


@pytest.fixture(scope="module")
def our_outputs(tmp_path_factory, uncased_vocab_module):
    """Our preprocessor's output for binned/unbinned x static/dynamic on a tiny real-text corpus."""
    root = tmp_path_factory.mktemp("ours")
    source = root / "source"
    source.mkdir()
    text = ("The quick brown fox jumps over the lazy dog. It was a sunny day in the park. "
            "Children played near the fountain while their parents talked. A dog barked twice. ")
    lines = [f"doc{i} " + text * (1 + i % 4) for i in range(24)]
    (source / "a.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    outputs = {}
    for masking in (False, True):
        for binned in (False, True):
            settings = pre.Settings(vocab_file=str(uncased_vocab_module), target_seq_length=128,
                                    bin_size=32 if binned else None, masking=masking, duplicate_factor=2,
                                    sample_ratio=1.0)
            sink = root / f"out_{masking}_{binned}"
            pre.run(settings, [str(source)], str(sink), num_workers=0)
            outputs[(masking, binned)] = sink
    return outputs


@pytest.fixture(scope="module")
def uncased_vocab_module():
    return shared_path("vocab", "bert-base-uncased-vocab.txt")


@pytest.mark.parametrize("masking", [False, True])
@pytest.mark.parametrize("binned", [False, True])
def test_our_output_schema_equals_fixture(our_outputs, masking, binned):
    fixture = {(False, True): "bin_dyn", (True, True): "bin_masked",
               (False, False): "unbin_dyn", (True, False): "unbin_masked"}[(masking, binned)]
    theirs = pq.read_schema(fmt.list_shards(_fixture(fixture))[0].path)
    shards = fmt.list_shards(str(our_outputs[(masking, binned)]))
    for shard in shards:
        ours = pq.read_schema(shard.path)
        assert ours.names == theirs.names and ours.types == theirs.types
        assert json.loads(ours.metadata[b"pandas"])["columns"] == json.loads(theirs.metadata[b"pandas"])["columns"]
        _check_rows(pq.read_table(shard.path), shard.bin_id, 32, nbins=4)
    assert fmt.read_num_samples(str(our_outputs[(masking, binned)])) == {s.name: s.num_rows for s in shards}
    if binned:
        assert sorted({s.bin_id for s in shards}) == [0, 1, 2, 3]


def _write(path, rows, binned=False):
    schema = fmt.make_schema(False, binned)
    fmt.write_table(pa.Table.from_pylist(rows, schema=schema), str(path), schema)


def _row(i, bin_id=None):
    row = {"A": f"a{i}", "B": "b", "is_random_next": False, "num_tokens": 5}
    if bin_id is not None:
        row["bin_id"] = bin_id
    return row


def test_list_shards_order_counts_and_cache(tmp_path):
    for i, n in ((10, 1), (2, 3), (0, 2)):
        _write(tmp_path / fmt.part_name(i), [_row(j) for j in range(n)])
    shards = fmt.list_shards(str(tmp_path))
    assert [s.name for s in shards] == ["part.0.parquet", "part.2.parquet", "part.10.parquet"]
    assert [s.num_rows for s in shards] == [2, 3, 1] and all(s.bin_id is None for s in shards)
    # The row-count cache LDDL readers trust must describe exactly the files present, with their footers'
    # counts; anything else is reported, never silently preferred or ignored.
    fmt.write_num_samples(str(tmp_path), {"part.0.parquet": 2, "part.2.parquet": 3, "part.10.parquet": 1})
    assert [s.num_rows for s in fmt.list_shards(str(tmp_path))] == [2, 3, 1]
    fmt.write_num_samples(str(tmp_path), {"part.0.parquet": 2, "part.2.parquet": 99, "part.10.parquet": 1})
    with pytest.raises(ValueError, match="part.2.parquet' has 3 rows but .num_samples.json says 99.*stale"):
        fmt.list_shards(str(tmp_path))
    fmt.write_num_samples(str(tmp_path), {"part.2.parquet": 3})
    with pytest.raises(ValueError, match="2 data file.s. are not listed .*: part.0.parquet, part.10.parquet"):
        fmt.list_shards(str(tmp_path))
    fmt.write_num_samples(str(tmp_path), {"part.0.parquet": 2, "part.2.parquet": 3, "part.10.parquet": 1,
                                          "part.11.parquet": 5})
    with pytest.raises(ValueError, match="damaged: 1 file.s. listed in .num_samples.json are missing: "
                                         "part.11.parquet"):
        fmt.list_shards(str(tmp_path))


def test_list_shards_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        fmt.list_shards(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no LDDL data files"):
        fmt.list_shards(str(tmp_path))
    _write(tmp_path / fmt.part_name(0, 0), [_row(0, 0)], binned=True)
    _write(tmp_path / fmt.part_name(0, 2), [_row(1, 2)], binned=True)
    with pytest.raises(ValueError, match="contiguous"):
        fmt.list_shards(str(tmp_path))
    _write(tmp_path / fmt.part_name(0, 1), [_row(2, 1)], binned=True)
    assert [s.bin_id for s in fmt.list_shards(str(tmp_path))] == [0, 1, 2]
    _write(tmp_path / fmt.part_name(1), [_row(3)])
    with pytest.raises(ValueError, match="mixes binned"):
        fmt.list_shards(str(tmp_path))
    os.remove(tmp_path / fmt.part_name(1))
    (tmp_path / fmt.part_name(5, 0)).write_bytes(b"garbage")
    with pytest.raises(ValueError, match="part.5.parquet_0"):
        fmt.list_shards(str(tmp_path))
    os.remove(tmp_path / fmt.part_name(5, 0))
    (tmp_path / fmt.NUM_SAMPLES_FILE).write_text('{"part.0.parquet_0": -1}')
    with pytest.raises(ValueError, match="non-negative"):
        fmt.list_shards(str(tmp_path))


def test_write_table_rejects_wrong_columns(tmp_path):
    table = pa.table({"A": ["x"], "B": ["y"]})
    with pytest.raises(ValueError, match="do not match"):
        fmt.write_table(table, str(tmp_path / "x.parquet"), fmt.make_schema(False, False))


def test_fixture_copy_lists_like_original(tmp_path):
    # A copied dataset lists the same files and counts (paths are relative to the directory given).
    src = _fixture("bal_p9_bin_masked")
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    ours = [(s.name, s.bin_id, s.num_rows) for s in fmt.list_shards(str(dst))]
    assert ours == [(s.name, s.bin_id, s.num_rows) for s in fmt.list_shards(str(src))]
    assert [b for _, b, _ in ours] == sorted(b for _, b, _ in ours)
