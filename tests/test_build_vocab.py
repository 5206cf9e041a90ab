"""Tests for data/prep/build_vocab.py: a vocab trained on the embedded sample corpus loads in both tokenizers,
covers its training text, is reproducible, ignores document ids; bad input fails with exit code 2."""
import pytest

from data.prep.build_vocab import continuation_alphabet, find_input_files, main, train_wordpiece_vocab
from data.prep.sample_corpus import build_sample_corpus
from utils import cli
from tokenizer import (SPECIAL_TOKENS, BertTokenizer, FullTokenizer, hf_normalizer, hf_pre_tokenizer,
                       load_vocab)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("vocab") / "source"
    build_sample_corpus(out, num_files=2, max_documents=120)
    texts = [line.split(" ", 1)[1] for f in sorted(out.iterdir())
             for line in f.read_text(encoding="utf-8").splitlines()]
    return out, texts


@pytest.fixture(scope="module")
def uncased_vocab(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("vocab") / "vocab" / "uncased.txt"  # parent dir does not exist yet
    size = train_wordpiece_vocab([corpus[0]], 2000, True, out)
    return out, size


def test_trained_vocab_loads_and_covers_text(corpus, uncased_vocab):
    path, size = uncased_vocab
    vocab = load_vocab(path)
    assert len(vocab) == size and 1000 < size <= 2000
    assert list(vocab)[:5] == list(SPECIAL_TOKENS)
    fast, ref = BertTokenizer(path, do_lower_case=True), FullTokenizer(path, do_lower_case=True)
    assert fast.special_ids == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    _, texts = corpus
    tokens = fast.tokenize_batch(texts)
    total = sum(map(len, tokens))
    unk = sum(t.count("[UNK]") for t in tokens)
    assert total > 10_000 and unk / total < 0.01
    assert all(t == t.lower() for t in vocab if not t.startswith("["))  # uncased: nothing upper-case
    assert tokens[:20] == [ref.tokenize(t) for t in texts[:20]]


def test_training_is_reproducible(corpus, uncased_vocab, tmp_path):
    path, _ = uncased_vocab
    again = tmp_path / "again.txt"
    train_wordpiece_vocab([corpus[0]], 2000, True, again)
    assert again.read_bytes() == path.read_bytes()


def test_cased_vocab_matches_case_check(corpus, tmp_path):
    path = tmp_path / "cased.txt"
    train_wordpiece_vocab([corpus[0]], 1500, False, path, min_frequency=3)
    BertTokenizer(path, do_lower_case=False)
    with pytest.raises(ValueError, match="is cased"):
        BertTokenizer(path, do_lower_case=True)


def test_doc_ids_are_not_text(tmp_path):
    src = tmp_path / "docs.txt"
    # 'Ω' appears only in the document ids: it must not reach the vocab unless told the input is plain
    src.write_text("".join(f"Ω{i} the cat sat on the mat and the dog sat too\n" for i in range(50)),
                   encoding="utf-8")
    with_ids, plain = tmp_path / "a.txt", tmp_path / "b.txt"
    train_wordpiece_vocab([src], 100, True, with_ids)
    train_wordpiece_vocab([src], 100, True, plain, has_doc_ids=False)
    assert "ω" not in load_vocab(with_ids) and "cat" in load_vocab(with_ids)
    assert "ω" in load_vocab(plain)


def test_continuation_alphabet():
    lower = continuation_alphabet(iter(["ab,c", "Éd\tx"]), hf_normalizer(True), hf_pre_tokenizer())
    assert lower == (["##a", "##b", "##c", "##d", "##e", "##x"], 2)  # ',' and tab never continue a word
    cased = continuation_alphabet(["Éd"], hf_normalizer(False), hf_pre_tokenizer())
    assert cased == (["##d", "##É"], 1)


def test_find_input_files(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for rel in ("d/b.txt", "d/sub/a.txt", "d/skip.parquet", "x.dat"):
        (tmp_path / rel).write_text("1 text\n")
    found = find_input_files([tmp_path / "d", tmp_path / "x.dat", tmp_path / "d" / "b.txt"])
    assert found == sorted(str(tmp_path / r) for r in ("d/b.txt", "d/sub/a.txt", "x.dat"))


def run_cli(args):
    return cli.run_cli(main, args)


def test_cli_errors_exit_2(tmp_path, capsys):
    out = tmp_path / "v.txt"
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    ids_only = tmp_path / "ids.txt"
    ids_only.write_text("doc1\n\ndoc2   \n", encoding="utf-8")
    cases = [
        (["--input", str(empty_dir)], "no input files found"),
        (["--input", str(tmp_path / "missing")], "does not exist"),
        (["--input", str(ids_only)], "contain no text"),
        (["--input", str(ids_only), "--vocab-size", "99"], "--vocab-size must be an integer >= 100"),
        (["--input", str(ids_only), "--min-frequency", "0"], "--min-frequency"),
    ]
    for args, message in cases:
        assert run_cli(args + ["--output", str(out)]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()


def test_cli_success(corpus, tmp_path):
    out = tmp_path / "cli.txt"
    assert main(["--input", str(corpus[0]), "--output", str(out), "--vocab-size", "500"]) == 500
    assert len(load_vocab(out)) == 500


def test_existing_output_is_refused_without_overwrite(corpus, tmp_path, capsys):
    # Issue 8 defect 9: a 30,522-token vocab was replaced by a 1,000-token one, exit 0.
    out = tmp_path / "vocab.txt"
    precious = "".join(t + "\n" for t in list(SPECIAL_TOKENS) + [f"word{i}" for i in range(200)])
    out.write_text(precious, encoding="utf-8")
    argv = ["--input", str(corpus[0]), "--output", str(out), "--vocab-size", "300"]
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert f"--output '{out}' already exists" in err and "--overwrite" in err
    assert out.read_text(encoding="utf-8") == precious
    assert run_cli(["--input", str(corpus[0]), "--output", str(tmp_path), "--vocab-size", "300"]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert run_cli(argv + ["--overwrite"]) == 0
    assert len(load_vocab(out)) == 300


def test_unwritable_output_is_found_before_training(corpus, tmp_path, capsys, monkeypatch):
    # Issue 8 defect 10: a non-writable place for the output was only found after the whole training.
    import errno

    import data.prep.build_vocab as bv

    def no_work(*args, **kwargs):
        raise AssertionError("training started before the output location was checked")

    monkeypatch.setattr(bv, "continuation_alphabet", no_work)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert run_cli(["--input", str(corpus[0]), "--output", str(blocker / "vocab.txt")]) == 2
    assert f"--output: cannot write into this directory" in capsys.readouterr().err

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("utils.fs.tempfile.mkstemp", read_only)
    assert run_cli(["--input", str(corpus[0]), "--output", str(tmp_path / "ro" / "vocab.txt")]) == 3
    err = capsys.readouterr().err
    assert f"writing '{tmp_path / 'ro'}' failed: the filesystem is read-only" in err and "--output" in err
