"""Tests for data.prep.corpus: both plain-text formats, sniffing, edge cases, compression, streaming, the CLI."""
import bz2
import gzip
import subprocess
import sys
import types
from pathlib import Path

import pytest

from data.prep import corpus
from data.prep.corpus import convert, iter_documents, list_corpus_files, sniff_format

REPO = Path(__file__).resolve().parents[1]


def _write(path, text, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


def test_lines_format(tmp_path):
    f = _write(tmp_path / "a.txt", "d1 First doc. Second  sentence.\nd2\tTab separated\ttext.\n")
    assert list(iter_documents(f, "lines")) == [
        ("d1", "First doc. Second sentence."), ("d2", "Tab separated text.")]


def test_bert_format(tmp_path):
    f = _write(tmp_path / "books.txt", "Sentence one.\nSentence two.\n\nOther doc.\n")
    assert list(iter_documents(f, "bert")) == [
        ("books-0", "Sentence one. Sentence two."), ("books-1", "Other doc.")]


def test_crlf_bom_blank_lines_and_empty_docs(tmp_path):
    # BOM, CRLF, leading blank lines, several blank lines between documents, whitespace-only lines,
    # trailing blank lines: none of them may create an empty document or shift the indices.
    text = "\ufeff\r\n\r\nA one.\r\nA two.\r\n\r\n\r\n  \t \r\nB one.\r\n\r\n\r\n"
    f = _write(tmp_path / "w.txt", text)
    assert list(iter_documents(f, "bert")) == [("w-0", "A one. A two."), ("w-1", "B one.")]
    g = _write(tmp_path / "l.txt", "\ufeffx1 alpha\r\nx2   \r\n\r\nx3 gamma  \r\n\r\n\r\n")
    assert list(iter_documents(g, "lines")) == [("x1", "alpha"), ("x3", "gamma")]  # x2 is empty: dropped


def test_lone_cr_line_ends(tmp_path):
    f = _write(tmp_path / "mac.txt", "One.\rTwo.\r\rThree.\r")
    assert list(iter_documents(f, "bert")) == [("mac-0", "One. Two."), ("mac-1", "Three.")]


@pytest.mark.parametrize("text,expected", [
    ("a b\nc d\n", "lines"),
    ("a b\nc d\n\n\n", "lines"),  # trailing blank lines at the end of a lines file
    ("\n\na b\nc d\n", "lines"),  # leading blank lines
    ("s1\ns2\n\ns3\n", "bert"),
    ("s1\r\n \r\ns3\r\n", "bert"),  # whitespace-only separator, CRLF
    ("", "lines"),
])
def test_sniff(tmp_path, text, expected):
    assert sniff_format(_write(tmp_path / "x.txt", text)) == expected


def test_sniff_only_looks_at_first_megabyte(tmp_path):
    body = "".join(f"id{i} {'w' * 90}\n" for i in range(12_000))  # ~1.2 MB, no blank line
    f = _write(tmp_path / "big.txt", body + "\nlate sentence\n")
    assert sniff_format(f) == "lines"


def test_auto_is_per_file(tmp_path):
    _write(tmp_path / "c" / "1_bert.txt", "S1.\nS2.\n\nS3.\n")
    _write(tmp_path / "c" / "2_lines.txt", "doc-a Text a.\ndoc-b Text b.\n")
    assert list(iter_documents(tmp_path / "c")) == [
        ("1_bert-0", "S1. S2."), ("1_bert-1", "S3."), ("doc-a", "Text a."), ("doc-b", "Text b.")]


def test_directories_recursive_sorted_and_compressed(tmp_path):
    root = tmp_path / "corpus"
    _write(root / "b.txt", "b1 B.\n")
    _write(root / "a" / "z.txt", "z1 Z.\n")
    (root / "c.txt.gz").write_bytes(gzip.compress(b"c1 C gz.\n"))
    (root / "d.txt.bz2").write_bytes(bz2.compress(b"d1 D bz2.\n"))
    _write(root / "notes.md", "ignored\n")
    names = [p.relative_to(root).as_posix() for p in list_corpus_files(root)]
    assert names == ["a/z.txt", "b.txt", "c.txt.gz", "d.txt.bz2"]
    assert [d for d, _ in iter_documents(root, "lines")] == ["z1", "b1", "c1", "d1"]
    # A compressed BERT-format file: the stem drops both suffixes.
    gz = tmp_path / "wiki.txt.gz"
    gz.write_bytes(gzip.compress(b"One.\n\nTwo.\n"))
    assert list(iter_documents(gz)) == [("wiki-0", "One."), ("wiki-1", "Two.")]


def test_doc_ids_unique_across_same_named_files(tmp_path):
    a = _write(tmp_path / "x" / "part.txt", "A.\n\nB.\n")
    b = _write(tmp_path / "y" / "part.txt", "C.\n")
    c = _write(tmp_path / "my book.txt", "D.\n")
    ids = [d for d, _ in iter_documents([a, b, c], "bert")]
    assert ids == ["part.0-0", "part.0-1", "part.1-0", "my_book-0"]


def test_duplicate_doc_id_is_an_error(tmp_path):
    a = _write(tmp_path / "a.txt", "same One.\n")
    b = _write(tmp_path / "b.txt", "same Two.\n")
    with pytest.raises(ValueError, match=r"b\.txt.*'same' already seen"):
        list(iter_documents([a, b], "lines"))
    assert len(list(iter_documents([a, b], "lines", unique_ids=False))) == 2


def test_same_file_twice_is_read_once(tmp_path):
    a = _write(tmp_path / "a.txt", "one A.\n")
    assert list(iter_documents([a, tmp_path], "lines")) == [("one", "A.")]


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="missing.txt' does not exist"):
        iter_documents(tmp_path / "missing.txt")  # raised at the call, before iterating
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="contains no"):
        iter_documents(tmp_path / "empty")
    with pytest.raises(ValueError, match="format must be"):
        iter_documents(tmp_path, "jsonl")
    with pytest.raises(ValueError, match="no corpus paths"):
        iter_documents([])
    latin = _write(tmp_path / "latin1.txt", "caf\xe9 au lait\n", encoding="latin-1")
    with pytest.raises(ValueError, match="latin1.txt' is not valid UTF-8"):
        list(iter_documents(latin))
    broken = tmp_path / "broken.txt.gz"
    broken.write_bytes(gzip.compress(b"x1 text\n" * 1000)[:-30])
    with pytest.raises(ValueError, match="broken.txt.gz"):
        list(iter_documents(broken, "lines"))


def test_streaming_is_lazy(tmp_path):
    # Valid documents first, then (far past the reader's buffer) a byte that is not UTF-8: the first
    # documents must come out before the bad part is ever read, which only a streaming reader can do.
    good = "".join(f"doc{i} Sentence {i}.\n" for i in range(20_000))
    f = _write(tmp_path / "s.txt", good.encode() + b"bad \xff\xfe\n")
    docs = iter_documents(f, "lines")
    assert isinstance(docs, types.GeneratorType)
    assert next(docs) == ("doc0", "Sentence 0.")
    with pytest.raises(ValueError, match=r"s\.txt' is not valid UTF-8 \(near line"):
        for _ in docs:
            pass


def test_convert_round_trip(tmp_path):
    src = tmp_path / "src"
    _write(src / "b.txt", "S1.\nS2.\n\nS3.\n\n\n")
    _write(src / "l.txt", "id-1 Line doc one.\nid-2 Line doc two.\nid-3 Three.\n")
    out = tmp_path / "out"
    assert convert([src], out, num_files=2, prefix="books") == 5
    assert sorted(p.name for p in out.iterdir()) == ["books-0.txt", "books-1.txt"]
    assert (out / "books-0.txt").read_text() == "b-0 S1. S2.\nid-1 Line doc one.\nid-3 Three.\n"
    assert (out / "books-1.txt").read_text() == "b-1 S3.\nid-2 Line doc two.\n"
    # The output is itself a valid 'lines' corpus that reads back to the same documents.
    assert sorted(iter_documents(out)) == sorted(iter_documents(src))


def test_convert_errors_leave_nothing(tmp_path):
    src = _write(tmp_path / "in.txt", "ok Fine.\n")
    with pytest.raises(ValueError, match="contains --input"):  # replacing it would delete the input
        convert(src, tmp_path, overwrite=True)
    (tmp_path / "o0").mkdir()
    with pytest.raises(FileExistsError):
        convert(src, tmp_path / "o0")  # existing directory
    (tmp_path / "o0").rmdir()
    with pytest.raises(ValueError, match="--num-files"):
        convert(src, tmp_path / "o", num_files=0)
    bad = _write(tmp_path / "bad.txt", b"ok Fine.\n\xff\n")
    with pytest.raises(ValueError, match="bad.txt"):
        convert([src, bad], tmp_path / "o2", fmt="lines")
    assert not (tmp_path / "o").exists() and not (tmp_path / "o2").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt", "in.txt"]


def test_cli(tmp_path):
    src = _write(tmp_path / "in.txt", "A one.\nA two.\n\nB one.\n")
    proc = subprocess.run([sys.executable, "-m", "data.prep.corpus", "--input", str(src), "--format", "bert",
                           "--output-dir", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "corpus-0.txt").read_text() == "in-0 A one. A two.\nin-1 B one.\n"
    assert corpus.cli(["--input", str(tmp_path / "nope"), "--output-dir", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()
