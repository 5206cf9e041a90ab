"""data.prep.inspect_shards: the report of a shard directory, checked against the files read directly.

Datasets: tiny ones made by the project's own preprocessor and balancer (a word-level vocab written here,
so every token is known), hand-written HDF5 shards, and real LDDL 0.1.0 output from ../shared (skipped
when absent). Expected numbers come from reading the same files with pyarrow / h5py.
"""
import collections
import io
import json
import re
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

from data.prep import balance_dask_output as bal
from data.prep import inspect_shards as ins
from data import lddl_format as fmt
from data.prep import preprocess_bert_pretrain as pre
from utils.cli import run_cli

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURES = SHARED / "data" / "lddl-fixtures"
UNCASED = SHARED / "vocab" / "bert-base-uncased-vocab.txt"

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "far", "away", "big", "red", "fox", "saw", "it"]
MARK = re.compile(r"<([^|<>]+)\|([^|<>]+)>")


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(SPECIALS + WORDS + ["."]) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    rng = np.random.default_rng(3)
    lines = []
    for d in range(24):
        sentences = [" ".join(rng.choice(WORDS, size=rng.integers(3, 9))).capitalize() + "."
                     for _ in range(rng.integers(4, 12))]
        lines.append(f"doc{d} {' '.join(sentences)}\n")
    path = tmp_path_factory.mktemp("src") / "corpus.txt"
    path.write_text("".join(lines), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory, vocab_file, source):
    """{(masking, binned): (raw dir, balanced dir)} from the project's preprocessor and balancer."""
    root = tmp_path_factory.mktemp("shards")
    out = {}
    for masking, binned in ((True, True), (False, False)):
        raw, balanced = root / f"raw_{masking}_{binned}", root / f"bal_{masking}_{binned}"
        settings = pre.Settings(vocab_file=vocab_file, target_seq_length=64, bin_size=16 if binned else None,
                                masking=masking, max_predictions_per_seq=6, duplicate_factor=2, sample_ratio=1.0)
        pre.run(settings, [source], str(raw), block_size_mb=0.001, num_workers=0)
        bal.balance(str(raw), 2, str(balanced))
        out[masking, binned] = raw, balanced
    return out


def _direct(directory):
    """Rows, num_tokens and rows per (shard stem, bin), read with pyarrow."""
    per_file = {}
    for path in sorted(p for p in Path(directory).iterdir() if fmt.is_data_file(p.name)):
        per_file[path.name] = pq.read_table(path).to_pylist()
    return per_file


def _check_sample(sample, masking):
    rows = pq.read_table(sample["file"]).to_pylist()
    row = rows[sample["row"]]
    marks = MARK.findall(sample["text"])
    shown = MARK.sub(lambda m: m.group(1), sample["text"]).split()
    assert shown == ["[CLS]"] + row["A"].split() + ["[SEP]"] + row["B"].split() + ["[SEP]"]
    assert sample["num_tokens"] == row["num_tokens"] == len(shown)
    if masking:
        positions = fmt.decode_positions(row["masked_lm_positions"]).tolist()
        assert sample["masked_positions"] == positions and len(positions) > 0
        assert [label for _, label in marks] == row["masked_lm_labels"].split()
        assert [shown[p] for p in positions] == [tok for tok, _ in marks]
    else:
        assert marks == [] and sample["masked_positions"] == []


@pytest.mark.parametrize("masking, binned", [(True, True), (False, False)])
def test_report_matches_the_files(datasets, masking, binned):
    for directory, balanced in zip(datasets[masking, binned], (False, True)):
        files = _direct(directory)
        report = ins.inspect_directory(directory)
        lengths = [r["num_tokens"] for rows in files.values() for r in rows]
        assert report["kind"] == "lddl" and report["num_files"] == len(files)
        assert report["num_rows"] == len(lengths) == sum(b["rows"] for b in report["bins"])
        assert report["row_counts_from"] == fmt.NUM_SAMPLES_FILE
        assert report["masking"] == ("static" if masking else "dynamic") and report["binned"] == binned
        assert report["num_tokens"]["min"] == min(lengths) and report["num_tokens"]["max"] == max(lengths)
        assert report["num_tokens"]["mean"] == pytest.approx(np.mean(lengths))
        by_bin = collections.Counter(fmt.bin_of_name(name) or 0 for name, rows in files.items() for _ in rows)
        assert {b["bin"] or 0: b["rows"] for b in report["bins"]} == by_bin
        if balanced:
            assert report["balanced"] and report["num_shards"] == 2
        _check_sample(report["sample"], masking)
        assert report["vocab_check"] is None and report["loader"] is None


def test_unbalanced_preprocessor_output_is_reported(datasets):
    raw, _ = datasets[False, False]
    report = ins.inspect_directory(raw)
    sizes = [len(rows) for rows in _direct(raw).values()]
    assert report["num_shards"] == len(sizes)
    assert (report["bins"][0]["shard_rows_min"], report["bins"][0]["shard_rows_max"]) == (min(sizes), max(sizes))
    assert report["balanced"] == (max(sizes) - min(sizes) <= 1)
    assert max(sizes) - min(sizes) > 1  # the fixture is meant to be uneven; keeps the line above honest


@pytest.mark.parametrize("masking, binned", [(True, True), (False, False)])
def test_loader_batches_and_vocab_check(datasets, vocab_file, masking, binned):
    _, balanced = datasets[masking, binned]
    report = ins.inspect_directory(balanced, vocab_file, batch_size=4, num_batches=3)
    assert report["vocab_check"] == {"vocab_file": vocab_file, "files_checked": report["num_files"],
                                     "rows_checked": report["num_rows"]}
    lo = report["loader"]
    # drop_last=False on one rank: every bin's rows make ceil(rows / 4) batches.
    assert lo["batches_per_epoch"] == sum(-(-b["rows"] // 4) for b in report["bins"])
    assert len(lo["batches"]) == 3 and lo["samples"] == sum(b["shapes"]["input_ids"][0] for b in lo["batches"])
    for b in lo["batches"]:
        n, seq = b["shapes"]["input_ids"]
        assert 1 <= n <= 4 and seq == 64  # every sample fits 64, the alignment
        assert b["shapes"] == {"input_ids": [n, seq], "token_type_ids": [n, seq], "attention_mask": [n, 1, 1, seq],
                               "next_sentence_labels": [n, 1], "masked_lm_labels": [n, seq]}
        assert set(b["dtypes"].values()) == {"int64"} and b["masked_tokens"] >= n
    assert lo["samples_per_second"] > 0
    shown = MARK.sub(lambda m: m.group(1), lo["sample"]).split()
    assert shown[0] == "[CLS]" and shown[-1] == "[SEP]" and shown.count("[SEP]") == 2
    assert len(MARK.findall(lo["sample"])) >= 1


def test_json_and_text_output(datasets, vocab_file, capsys):
    _, balanced = datasets[True, True]
    report = ins.main([str(balanced), "--vocab-file", vocab_file, "--num-batches", "1", "--json"])
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and json.loads(printed) == json.loads(json.dumps(report))
    ins.main([str(balanced), "--vocab-file", vocab_file, "--num-batches", "2", "--quick"])
    text = capsys.readouterr().out
    assert f"{report['num_files']} files, 2 shards, {report['num_rows']} rows" in text
    assert "static masking, binned (4 bins), balanced" in text
    assert "vocab check" not in text and text.count("  batch ") == 2
    assert "attention_mask [" in text and "samples/s" in text
    ins.main([str(balanced)])
    assert "pass --vocab-file" in capsys.readouterr().out


def _error(argv, capsys):
    assert run_cli(ins.main, argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    last = captured.err.splitlines()[-1]
    assert last.startswith("error: ") and "Traceback" not in captured.err
    return last


def test_bad_directories_are_one_line_errors(tmp_path, datasets, vocab_file, capsys):
    assert str(tmp_path / "nope") in _error([str(tmp_path / "nope")], capsys)
    (tmp_path / "empty").mkdir()
    assert "holds no LDDL data files" in _error([str(tmp_path / "empty")], capsys)
    schema = fmt.make_schema(False, False)
    fmt.write_table(schema.empty_table(), str(tmp_path / "empty" / "part.0.parquet"), schema)
    assert "all 1 data files are empty" in _error([str(tmp_path / "empty")], capsys)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for path in Path(datasets[False, False][1]).iterdir():
        (corrupt / path.name).write_bytes(path.read_bytes())
    (corrupt / "shard-1.parquet").write_bytes(b"PAR1 this is not parquet")
    err = _error([str(corrupt)], capsys)  # our shards record their sizes: caught before opening the file
    assert str(corrupt / "shard-1.parquet") in err and "has 24 bytes but .shard_digests.json recorded" in err
    (corrupt / fmt.SHARD_DIGESTS_FILE).unlink()  # as LDDL's own shards: the file itself is unreadable
    err = _error([str(corrupt)], capsys)
    assert str(corrupt / "shard-1.parquet") in err and "not a readable Parquet file" in err
    (corrupt / "shard-1.parquet").write_bytes((Path(datasets[False, False][1]) / "shard-1.parquet").read_bytes())
    assert ins.inspect_directory(corrupt)["num_shards"] == 2
    counts = fmt.read_num_samples(corrupt)
    fmt.write_num_samples(corrupt, dict(counts, **{"shard-1.parquet": counts["shard-1.parquet"] + 1}))
    err = _error([str(corrupt)], capsys)
    assert str(corrupt / "shard-1.parquet") in err and "stale" in err


def test_vocab_mismatch_names_the_file(tmp_path, datasets, capsys):
    small = tmp_path / "small_vocab.txt"
    small.write_text("\n".join(SPECIALS + WORDS[:5] + ["."]) + "\n", encoding="utf-8")
    _, balanced = datasets[False, False]
    err = _error([str(balanced), "--vocab-file", str(small)], capsys)
    assert re.search(r"shard-\d\.parquet", err) and "not in the vocab" in err and str(small) in err
    assert "--batch-size must be >= 1" in _error([str(balanced), "--batch-size", "0"], capsys)


def _write_hdf5(path, rng, n, seq_len=16, max_pred=3):
    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    ids, mask = np.zeros((n, seq_len), np.int32), np.zeros((n, seq_len), np.int32)
    pos, lab = np.zeros((n, max_pred), np.int32), np.zeros((n, max_pred), np.int32)
    for r in range(n):
        a, b = rng.integers(1, 5, size=2)
        words = rng.integers(5, len(vocab), size=a + b)
        row = [vocab["[CLS]"], *words[:a], vocab["[SEP]"], *words[a:], vocab["[SEP]"]]
        ids[r, :len(row)], mask[r, :len(row)] = row, 1
        pos[r, 0], lab[r, 0] = 1, row[1]
        ids[r, 1] = vocab["[MASK]"]
    with h5py.File(path, "w") as h5:
        for key, value in (("input_ids", ids), ("input_mask", mask), ("segment_ids", np.zeros_like(ids)),
                           ("masked_lm_positions", pos), ("masked_lm_ids", lab),
                           ("next_sentence_labels", rng.integers(0, 2, n).astype(np.int32))):
            h5.create_dataset(key, data=value)
    return ids, mask, lab


def test_hdf5_directory(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(SPECIALS + WORDS) + "\n", encoding="utf-8")
    rng = np.random.default_rng(5)
    ids, mask, lab = _write_hdf5(tmp_path / "a.hdf5", rng, 7)
    _write_hdf5(tmp_path / "b.hdf5", rng, 5)
    report = ins.inspect_directory(tmp_path, vocab, batch_size=4, num_batches=2)
    assert (report["kind"], report["num_files"], report["num_rows"], report["masking"]) == ("hdf5", 2, 12, "static")
    assert not report["balanced"] and report["bins"][0]["shard_rows_min"] == 5
    inv = SPECIALS + WORDS
    sample = report["sample"]
    n = int(mask[0].sum())
    assert sample["num_tokens"] == n and sample["masked_positions"] == [1]
    assert sample["text"].split()[1] == f"<[MASK]|{inv[lab[0, 0]]}>"
    assert MARK.sub(lambda m: m.group(1), sample["text"]).split() == [inv[i] for i in ids[0, :n]]
    assert report["vocab_check"]["rows_checked"] == 12
    assert [b["shapes"]["input_ids"] for b in report["loader"]["batches"]][0] == [4, 64]


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.iterdir()) if FIXTURES.is_dir() else ["absent"])
def test_real_lddl_fixtures(name):
    """All of them: binned/unbinned x static/dynamic masking, as LDDL wrote them and balanced."""
    if not FIXTURES.exists() or not UNCASED.exists():
        pytest.skip("LDDL fixtures or vocab not present")
    directory = FIXTURES / name
    files = _direct(directory)
    out = io.StringIO()
    report = ins.inspect_directory(directory, UNCASED, batch_size=16, num_batches=2)
    out.write(ins.format_report(report))
    assert report["num_rows"] == sum(len(rows) for rows in files.values())
    assert report["masking"] == ("static" if "masked" in name else "dynamic")
    assert report["binned"] == ("unbin" not in name)
    assert len(report["bins"]) == (4 if report["binned"] else 1)
    if name.startswith("bal_"):
        assert report["balanced"] and report["num_shards"] == 4
        assert report["row_counts_from"] == fmt.NUM_SAMPLES_FILE
    else:
        assert not report["balanced"] and report["row_counts_from"] == "parquet footers"
    _check_sample(report["sample"], "masked" in name)
    assert report["vocab_check"]["rows_checked"] == report["num_rows"]
    for b in report["loader"]["batches"]:  # L = longest sample rounded up to 64; the fixtures' target is 128
        assert b["shapes"]["input_ids"][0] == 16 and b["shapes"]["input_ids"][1] in (64, 128)
    assert "samples/s" in out.getvalue()


def test_corrupt_hdf5_names_the_file(tmp_path, capsys):
    _write_hdf5(tmp_path / "a.hdf5", np.random.default_rng(1), 3)
    (tmp_path / "b.hdf5").write_bytes(b"\x89HDF\r\n not really")
    err = _error([str(tmp_path)], capsys)
    assert str(tmp_path / "b.hdf5") in err and "not a readable HDF5 file" in err
