"""Dask preprocessing: block splitting, sampling, static masking, binning, determinism across workers, errors."""
import collections
import contextlib
import filecmp
import gzip
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import shared_path
from data.prep import corpus
from data import lddl_format as fmt
from data.prep import preprocess_bert_pretrain as pre
from utils.cli import run_cli

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------------------
# Blocks: every document read exactly once, whatever the block size
# ----------------------------------------------------------------------------------------------------

def _docs_over_blocks(path, block_size, input_format, sample_ratio=1.0):
    docs = []
    for block in pre.plan_blocks([path], block_size, input_format):
        docs.extend(pre.read_block_documents(block, seed=7, sample_ratio=sample_ratio))
    return docs


def _norm(text):
    return " ".join(text.split())


LINES_TEXT = ("d1 First document. It has two sentences.\r\n"
              "\n"
              "d2\n"
              "d3    Third\tdocument, spaced   out.\n"
              "d4 " + "Long one. " * 40 + "\n"
              "d5 Last without newline.")

BERT_TEXT = ("\n\n"
             "First sentence of doc one.\n"
             "Second sentence of doc one.\n"
             "\n"
             "  \t \n"
             "Doc two, only sentence.\r\n"
             "\r\n"
             + "".join(f"Doc three sentence {i}.\n" for i in range(30)) +
             "\n\n\n"
             "Doc four.\n"
             "\n")


@pytest.mark.parametrize("block_size", [1, 2, 3, 7, 16, 50, 333, 10**6])
def test_lines_blocks_read_every_document_once(tmp_path, block_size):
    path = tmp_path / "c.txt"
    path.write_bytes(LINES_TEXT.encode())
    expected = [["First document.", "It has two sentences."], ["Third document, spaced out."],
                ["Long one."] * 40, ["Last without newline."]]
    got = _docs_over_blocks(str(path), block_size, "lines")
    assert [[_norm(s) for s in d] for d in got] == expected
    # Same documents as the whole-file reader of data.prep.corpus.
    assert [_norm(" ".join(d)) for d in got] == [t for _, t in corpus.iter_documents([path], "lines")]


@pytest.mark.parametrize("block_size", [1, 2, 5, 13, 40, 100, 10**6])
def test_bert_blocks_read_every_document_once(tmp_path, block_size):
    path = tmp_path / "c.txt"
    path.write_bytes(BERT_TEXT.encode())
    got = _docs_over_blocks(str(path), block_size, "auto")
    assert got == [["First sentence of doc one.", "Second sentence of doc one."], ["Doc two, only sentence."],
                   [f"Doc three sentence {i}." for i in range(30)], ["Doc four."]]
    assert [" ".join(d) for d in got] == [t for _, t in corpus.iter_documents([path], "bert")]


def test_compressed_file_is_one_block(tmp_path):
    path = tmp_path / "c.txt.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"".join(b"d%d Sentence %d. Another one.\n" % (i, i) for i in range(50)))
    blocks = pre.plan_blocks([str(path)], 4, "auto")
    assert len(blocks) == 1 and blocks[0].fmt == "lines"
    docs = pre.read_block_documents(blocks[0])
    assert len(docs) == 50 and docs[7] == ["Sentence 7.", "Another one."]


def test_block_ids_are_global_and_in_file_order(tmp_path):
    for name, size in (("a.txt", 10), ("b.txt", 25)):
        (tmp_path / name).write_bytes(b"x y\n" * (size // 4) + b"z" * (size % 4))
    blocks = pre.plan_blocks([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], 8, "lines")
    assert [(b.block_id, os.path.basename(b.path), b.start, b.end) for b in blocks] == [
        (0, "a.txt", 0, 8), (1, "a.txt", 8, 10),
        (2, "b.txt", 0, 8), (3, "b.txt", 8, 16), (4, "b.txt", 16, 24), (5, "b.txt", 24, 25)]


def test_sampling_is_deterministic_and_independent_of_blocks(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("".join(f"doc{i} Sentence number {i} here.\n" for i in range(2000)))
    whole = _docs_over_blocks(str(path), 10**7, "lines", sample_ratio=0.3)
    assert 0.27 < len(whole) / 2000 < 0.33
    assert _docs_over_blocks(str(path), 1000, "lines", sample_ratio=0.3) == whole
    assert len(_docs_over_blocks(str(path), 10**7, "lines", sample_ratio=1.0)) == 2000


def test_non_utf8_input_is_an_error(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(b"d1 caf\xe9 au lait.\n")
    with pytest.raises(ValueError, match="c.txt"):
        _docs_over_blocks(str(path), 100, "lines")


# ----------------------------------------------------------------------------------------------------
# End to end on real text (stdlib docstrings) with the real BERT vocab
# ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vocab():
    return str(shared_path("vocab", "bert-base-uncased-vocab.txt"))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    from data.prep.sample_corpus import build_sample_corpus

    directory = tmp_path_factory.mktemp("src") / "source"
    build_sample_corpus(str(directory), num_files=2, max_documents=30)
    return str(directory)


def _settings(vocab, **kw):
    base = dict(vocab_file=vocab, target_seq_length=128, bin_size=64, duplicate_factor=2, sample_ratio=1.0)
    base.update(kw)
    return pre.Settings(**base)


def _read_all(sink):
    """Rows of a dataset keyed by (file, row index), in file order."""
    rows = {}
    for shard in fmt.list_shards(str(sink)):
        for i, row in enumerate(pq.read_table(shard.path).to_pylist()):
            rows[(shard.name, i)] = row
    return rows


@pytest.fixture(scope="module")
def static_and_dynamic(tmp_path_factory, vocab, source):
    root = tmp_path_factory.mktemp("e2e")
    out = {}
    for masking in (False, True):
        sink = root / f"masking_{masking}"
        summary = pre.run(_settings(vocab, masking=masking, max_predictions_per_seq=5), [source], str(sink),
                          block_size_mb=0.03, num_workers=0)
        out[masking] = (sink, summary)
    return out


def test_static_masking_restored_equals_dynamic(static_and_dynamic):
    """Pairs are drawn before masking from the same RNG stream: un-masking static rows gives the dynamic rows."""
    (dyn_sink, dyn_summary), (sta_sink, sta_summary) = static_and_dynamic[False], static_and_dynamic[True]
    assert dyn_summary["blocks"] > 2 and dyn_summary["instances"] == sta_summary["instances"] > 500
    dynamic, static = _read_all(dyn_sink), _read_all(sta_sink)
    assert dynamic.keys() == static.keys()
    for key, row in static.items():
        tokens = ["[CLS]"] + row["A"].split() + ["[SEP]"] + row["B"].split() + ["[SEP]"]
        for pos, label in zip(fmt.decode_positions(row["masked_lm_positions"]), row["masked_lm_labels"].split()):
            tokens[pos] = label
        len_a = len(row["A"].split())
        assert " ".join(tokens[1:1 + len_a]) == dynamic[key]["A"]
        assert " ".join(tokens[2 + len_a:-1]) == dynamic[key]["B"]
        assert row["is_random_next"] == dynamic[key]["is_random_next"]


def test_max_predictions_per_seq_is_honoured(static_and_dynamic):
    rows = _read_all(static_and_dynamic[True][0]).values()
    for row in rows:
        n_pred = len(fmt.decode_positions(row["masked_lm_positions"]))
        # Google's count: max(1, round(0.15 * num_tokens)) (round half to even), capped at 5 here.
        assert n_pred == min(5, max(1, round(0.15 * row["num_tokens"])))
        assert n_pred == len(row["masked_lm_labels"].split())


def test_masking_replacement_statistics(static_and_dynamic):
    kinds = collections.Counter()
    for row in _read_all(static_and_dynamic[True][0]).values():
        tokens = ["[CLS]"] + row["A"].split() + ["[SEP]"] + row["B"].split() + ["[SEP]"]
        for pos, label in zip(fmt.decode_positions(row["masked_lm_positions"]), row["masked_lm_labels"].split()):
            kinds["mask" if tokens[pos] == "[MASK]" else "keep" if tokens[pos] == label else "random"] += 1
    total = sum(kinds.values())
    assert total > 3000
    assert abs(kinds["mask"] / total - 0.8) < 0.03
    assert abs(kinds["keep"] / total - 0.1) < 0.025
    assert abs(kinds["random"] / total - 0.1) < 0.025


def test_bins_counts_and_lengths(static_and_dynamic):
    sink, summary = static_and_dynamic[False]
    shards = fmt.list_shards(str(sink))
    assert fmt.read_num_samples(str(sink)) == {s.name: s.num_rows for s in shards}
    assert sum(s.num_rows for s in shards) == summary["instances"]
    assert {s.bin_id for s in shards} == {0, 1}
    for shard in shards:
        table = pq.read_table(shard.path)
        n = table.column("num_tokens").to_numpy().astype(int)
        assert (table.column("bin_id").to_numpy() == shard.bin_id).all()
        assert (np.minimum((n - 1) // 64, 1) == shard.bin_id).all()
        assert (n <= 128).all()
        lens = [len(a.split()) + len(b.split()) + 3 for a, b in zip(table.column("A").to_pylist(),
                                                                     table.column("B").to_pylist())]
        assert lens == n.tolist()
    random_next = np.concatenate([pq.read_table(s.path).column("is_random_next").to_numpy() for s in shards])
    assert 0.4 < random_next.mean() < 0.65


def test_output_identical_for_0_1_2_workers(tmp_path, vocab, source):
    """Inline, the forked pool (1 and 2 workers) and Dask's LocalCluster write the same bytes."""
    settings = _settings(vocab, masking=True, duplicate_factor=1)
    sinks = []
    for workers, executor in ((0, "auto"), (1, "pool"), (2, "pool"), (2, "dask")):
        sinks.append(tmp_path / f"w{workers}-{executor}")
        pre.run(settings, [source], str(sinks[-1]), block_size_mb=0.03, num_workers=workers, executor=executor)
    names = sorted(os.listdir(sinks[0]))
    assert len(names) > 4
    for other in sinks[1:]:
        assert sorted(os.listdir(other)) == names
        match, mismatch, errors = filecmp.cmpfiles(sinks[0], other, names, shallow=False)
        assert mismatch == [] and errors == []


def test_choose_executor():
    big, small = pre._POOL_MAX_BYTES + 1, 10 << 20
    assert pre.choose_executor("auto", "local", None, 0, small) == "inline"
    assert pre.choose_executor("dask", "local", None, 0, small) == "inline"  # 0 workers: nothing to start
    assert pre.choose_executor("auto", "local", None, 2, small) == "pool"
    assert pre.choose_executor("auto", "local", None, 2, big) == "dask"
    assert pre.choose_executor("pool", "local", None, 2, big) == "pool"
    assert pre.choose_executor("dask", "local", None, 2, small) == "dask"
    assert pre.choose_executor("auto", "local", "tcp://h:8786", 0, small) == "dask"
    assert pre.choose_executor("auto", "mpi", None, 2, small) == "dask"
    with pytest.raises(ValueError, match="--executor pool runs local processes only"):
        pre.choose_executor("pool", "local", "tcp://h:8786", 2, small)
    with pytest.raises(ValueError, match="--executor 'threads' is invalid"):
        pre.choose_executor("threads", "local", None, 2, small)


@pytest.fixture(scope="module")
def wiki_source(tmp_path_factory):
    """LDDL source text of the first articles of the shared Wikipedia sample (~300k characters)."""
    from data.prep.wikipedia import clean_wikitext, iter_dump_pages

    lines, chars = [], 0
    for page in iter_dump_pages(shared_path("data", "wiki", "enwiki-sample-pages-articles.xml.bz2")):
        text = clean_wikitext(page.text) if page.namespace == 0 and not page.text.startswith("#REDIRECT") else ""
        if text:
            lines.append(f"wiki-{page.page_id} {text}\n")
            chars += len(text)
        if chars > 300_000:
            break
    path = tmp_path_factory.mktemp("wiki") / "wiki-0.txt"
    path.write_text("".join(lines), encoding="utf-8")
    return str(path)


def test_static_masking_statistics_on_wikipedia(tmp_path, vocab, wiki_source):
    """Google's statistics on real text, through the forked pool: per row round(15 %) of the tokens predicted
    (cap 20), 80 % [MASK] / 10 % kept / 10 % random; positions never [CLS]/[SEP]; about half the B's random;
    and the shards load through the project's loader."""
    settings = _settings(vocab, masking=True, duplicate_factor=3)
    sink = tmp_path / "wiki"
    summary = pre.run(settings, [wiki_source], str(sink), block_size_mb=0.15, num_workers=2, executor="pool")
    rows = list(_read_all(sink).values())
    assert len(rows) == summary["instances"] > 1500
    kinds, predicted, tokens, random_next = collections.Counter(), 0, 0, 0
    for row in rows:
        seq = ["[CLS]"] + row["A"].split() + ["[SEP]"] + row["B"].split() + ["[SEP]"]
        positions = fmt.decode_positions(row["masked_lm_positions"])
        labels = row["masked_lm_labels"].split()
        assert len(seq) == row["num_tokens"] <= 128
        assert len(positions) == len(labels) == min(20, max(1, round(0.15 * row["num_tokens"])))
        assert list(positions) == sorted(set(positions)) and 0 < min(positions) and max(positions) < len(seq) - 1
        assert (len(row["A"].split()) + 1) not in positions  # the middle [SEP]
        assert "[CLS]" not in labels and "[SEP]" not in labels
        for pos, label in zip(positions, labels):
            kinds["mask" if seq[pos] == "[MASK]" else "keep" if seq[pos] == label else "random"] += 1
        predicted, tokens = predicted + len(positions), tokens + len(seq)
        random_next += row["is_random_next"]
    assert abs(predicted / tokens - 0.15) < 0.005
    total = sum(kinds.values())
    assert abs(kinds["mask"] / total - 0.8) < 0.015
    assert abs(kinds["keep"] / total - 0.1) < 0.012
    assert abs(kinds["random"] / total - 0.1) < 0.012
    assert summary["blocks"] >= 2 and 0.45 < random_next / len(rows) < 0.62
    from data.loader.lddl_loader import get_bert_pretrain_data_loader

    batch = next(iter(get_bert_pretrain_data_loader(str(sink), vocab_file=vocab, batch_size=8, num_workers=0)))
    assert len(batch) > 0


# ----------------------------------------------------------------------------------------------------
# CLI errors: one message, exit code 2, no output directory
# ----------------------------------------------------------------------------------------------------

def _cli_error(argv, capsys):
    assert run_cli(pre.main, argv) == 2
    err = capsys.readouterr().err
    # Log lines may come first; the error itself is the last line, alone, without a traceback.
    assert err.splitlines()[-1].startswith("error: ") and "Traceback" not in err, err
    return err


def test_cli_errors(tmp_path, vocab, source, capsys):
    sink = tmp_path / "out"
    base = ["--sink", str(sink), "--vocab-file", vocab, "--num-workers", "0"]
    (tmp_path / "empty_dir").mkdir()
    assert "no *.txt" in _cli_error(["--source", str(tmp_path / "empty_dir")] + base, capsys)
    assert "does not exist" in _cli_error(["--source", str(tmp_path / "nope")] + base, capsys)
    assert "--target-seq-length 8" in _cli_error(["--source", source, "--target-seq-length", "8"] + base, capsys)
    assert "divisor" in _cli_error(["--source", source, "--target-seq-length", "100"] + base, capsys)
    assert "--max-predictions-per-seq 0" in _cli_error(
        ["--source", source, "--max-predictions-per-seq", "0"] + base, capsys)
    assert "at least one of" in _cli_error(base, capsys)
    bad_vocab = tmp_path / "vocab.txt"
    bad_vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nthe\n")
    err = _cli_error(["--source", source, "--sink", str(sink), "--vocab-file", str(bad_vocab)], capsys)
    assert "[MASK]" in err and "vocab.txt" in err
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "a.txt").write_text("d1\n   \nd2 One sentence only.\n")
    assert "zero instances" in _cli_error(["--source", str(tmp_path / "blank")] + base, capsys)
    assert not sink.exists()
    assert not [n for n in os.listdir(tmp_path) if n.startswith("out")]  # no temporary leftovers
    sink.mkdir()
    assert "already exists" in _cli_error(["--source", source] + base, capsys)


@pytest.mark.skipif(importlib.util.find_spec("dask_mpi") is not None, reason="dask-mpi is installed")
def test_mpi_schedule_without_dask_mpi(tmp_path, vocab, source, capsys):
    err = _cli_error(["--source", source, "--sink", str(tmp_path / "o"), "--vocab-file", vocab,
                      "--schedule", "mpi"], capsys)
    assert "dask-mpi" in err
    assert not (tmp_path / "o").exists()


def test_unreachable_scheduler_is_one_line_naming_it(tmp_path, vocab, source):
    # Issue 8 defect 10: an unreachable --scheduler ended in a traceback.
    import socket
    import subprocess
    import sys

    from conftest import REPO

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="2s", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "data.prep.preprocess_bert_pretrain", "--source", source, "--sink",
                           str(tmp_path / "out"), "--vocab-file", vocab, "--scheduler", address],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"--scheduler {address}: no Dask scheduler reachable" in errors[0]
    assert os.listdir(tmp_path) == []


def _tiny_vocab(path, words):
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words) + "\n", encoding="utf-8")
    return str(path)


def test_vocab_that_maps_everything_to_unk_is_refused_before_any_work(tmp_path, source, capsys):
    # Issue 8 defect 10: such a run succeeded silently, writing shards of [UNK].
    vocab = _tiny_vocab(tmp_path / "foreign.txt", ["ж", "щ", "ю"])
    err = _cli_error(["--source", source, "--sink", str(tmp_path / "out"), "--vocab-file", vocab,
                      "--num-workers", "0"], capsys)
    assert "are [UNK]" in err and "foreign.txt" in err and "does not fit this corpus" in err
    assert sorted(os.listdir(tmp_path)) == ["foreign.txt"]


def test_vocab_with_many_unknown_tokens_warns_with_the_rate(tmp_path, vocab, source, caplog):
    # The real vocab without its word pieces and rarer words makes many tokens [UNK]; the summary's rate must
    # equal the fraction counted independently (tokenising the documents whole), and a warning must say so.
    from tokenizer import BertTokenizer, load_vocab

    words = [w for w in load_vocab(vocab) if not w.startswith("[")]
    kept = [w for w in words if not w.startswith("##")][:3000]  # common whole words: no word pieces
    small = _tiny_vocab(tmp_path / "small.txt", kept)
    with caplog.at_level("WARNING"):
        summary = pre.run(_settings(small), [source], str(tmp_path / "out"), block_size_mb=0.03, num_workers=0)
    tok = BertTokenizer(small)
    tokens = [t for _, text in corpus.iter_documents([source]) for t in tok.tokenize_batch([text])[0]]
    assert summary["unk_rate"] == pytest.approx(tokens.count("[UNK]") / len(tokens), rel=1e-3)
    assert 0.05 < summary["unk_rate"] < 1.0
    warnings = [r.getMessage() for r in caplog.records if "[UNK]" in r.getMessage()]
    assert len(warnings) == 1 and f"{100 * summary['unk_rate']:.1f}% of the corpus" in warnings[0]
    assert "small.txt" in warnings[0]
    # With the full vocab the same corpus stays under the threshold and nothing is said.
    caplog.clear()
    with caplog.at_level("WARNING"):
        summary = pre.run(_settings(vocab), [source], str(tmp_path / "out2"), block_size_mb=0.03, num_workers=0)
    assert summary["unk_rate"] < 0.05 and not [r for r in caplog.records if "[UNK]" in r.getMessage()]


def _random_next_rows(sink):
    rows = list(_read_all(sink).values())
    return sum(r["is_random_next"] for r in rows), len(rows)


def test_random_next_share_is_logged_as_counted_in_the_output(caplog, vocab, source, tmp_path):
    # Issue 20 item 12: the share of random-next pairs is logged, equal to the rows actually written.
    with caplog.at_level("INFO", logger=pre.__name__):
        summary = pre.run(_settings(vocab), [source], str(tmp_path / "out"), block_size_mb=0.03, num_workers=0)
    random_next, rows = _random_next_rows(tmp_path / "out")
    assert (summary["random_next"], summary["instances"]) == (random_next, rows)
    assert 0.4 < random_next / rows < 0.7 and summary["random_next_share"] == random_next / rows
    assert (f"--sink: {random_next} of {rows} instances ({100 * random_next / rows:.1f} %) have a random next "
            "sentence (about half expected)") in caplog.messages
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_a_single_document_corpus_warns_that_no_random_next_sentence_was_made(tmp_path, vocab, source, caplog):
    # Issue 20 item 12: one long line (one document) gave every pair is_random_next False, and nothing said so.
    lone = tmp_path / "lone"
    lone.mkdir()
    text = " ".join(f"Sentence number {i} of the only document goes on here." for i in range(600))
    (lone / "one.txt").write_text(f"doc1 {text}\n", encoding="utf-8")
    with caplog.at_level("INFO", logger=pre.__name__):
        summary = pre.run(_settings(vocab), [str(lone)], str(tmp_path / "out"), num_workers=0)
    random_next, rows = _random_next_rows(tmp_path / "out")
    assert random_next == summary["random_next"] == 0 and rows == summary["instances"] > 100
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["--sink: too few documents for random next sentences: 1 of 1 blocks held a single document "
                        "(B is drawn from another document of the same block), so only 0.0 % of the instances "
                        "have a random next sentence instead of about half; give the corpus as many documents "
                        "(one per line in the lines format, blank-line separated in Google's), or raise "
                        "--block-size-mb if its documents are only spread thin"]
    # Beside a corpus of many documents, the lone block is still named and the share is the one written.
    caplog.clear()
    with caplog.at_level("INFO", logger=pre.__name__):
        summary = pre.run(_settings(vocab), [str(lone), source], str(tmp_path / "mixed"), block_size_mb=0.03,
                          num_workers=0)
    random_next, rows = _random_next_rows(tmp_path / "mixed")
    assert (summary["random_next"], summary["instances"]) == (random_next, rows) and 0 < random_next < rows
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert (f"1 of {summary['blocks']} blocks held a single document" in warning
            and f"only {100 * random_next / rows:.1f} % of the instances" in warning)


def test_bad_file_through_the_pool_is_one_error_line_and_no_sink(tmp_path, vocab, source, capsys):
    """A worker's ValueError (a non-UTF-8 file) comes back as the command's one error line, exit 2."""
    bad = tmp_path / "src"
    bad.mkdir()
    (bad / "a.txt").write_text("".join(f"d{i} Plain sentence number {i}. Another one here.\n" for i in range(400)))
    (bad / "b.txt").write_bytes(b"d1 caf\xe9 au lait.\n" * 50)
    sink = tmp_path / "out"
    err = _cli_error(["--source", str(bad), "--sink", str(sink), "--vocab-file", vocab, "--num-workers", "2",
                      "--executor", "pool", "--block-size-mb", "0.005", "--input-format", "lines"], capsys)
    assert "b.txt" in err and "UTF-8" in err
    assert not sink.exists()


def test_pool_workers_exit_when_the_command_is_killed(tmp_path, vocab):
    # Issue 20 item 21: after `kill -9` of the command its two pool workers ran on (528 MB, still busy 60 s
    # later). They now end with it, by the mechanism the Wikipedia pool uses (utils.workers).
    psutil = pytest.importorskip("psutil")
    words = ["history", "river", "city", "music", "science", "people", "century", "village", "school", "war"]
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    src.mkdir()
    # 13 MB, 100 masked duplicates: about a minute of work for two workers, far longer than the test waits
    with open(src / "big.txt", "w", encoding="utf-8") as f:
        for d in range(8000):
            sentences = (" ".join(rng.choice(words, 12)) + "." for _ in range(20))
            f.write(f"d{d} {' '.join(sentences)}\n")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "data.prep.preprocess_bert_pretrain", "--source", str(src),
                             "--sink", str(tmp_path / "out"), "--vocab-file", vocab, "--num-workers", "2",
                             "--executor", "pool", "--block-size-mb", "0.5", "--duplicate-factor", "100",
                             "--masking"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers = []
    try:
        parent = psutil.Process(proc.pid)
        deadline = time.monotonic() + 120
        while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            workers = parent.children(recursive=True)
        assert len(workers) == 2, f"workers did not start (exit {proc.poll()})"
        time.sleep(0.5)  # the workers are now busy with blocks
        assert proc.poll() is None and all(w.is_running() for w in workers)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        gone, alive = psutil.wait_procs(workers, timeout=5)
        assert not alive, f"still running 5 s after the command was killed: {[p.pid for p in alive]}"
    finally:
        if proc.poll() is None:
            proc.kill()
        for worker in workers:  # orphans of a failed test must not run on
            with contextlib.suppress(psutil.Error):
                worker.kill()
