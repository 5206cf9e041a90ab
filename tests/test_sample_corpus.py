"""Tests for data/prep/sample_corpus.py: docstring cleaning on a hand-made fake stdlib (exact expected text,
never importing it), and the real stdlib build (format, determinism, limits, atomic output)."""
import re
import textwrap

import blingfire
import pytest

from data.prep import sample_corpus
from data.prep.sample_corpus import build_sample_corpus, clean_docstring, iter_documents, main
from utils.cli import run_cli

ALPHA = '''\
"""Alpha module summary line

This module does useful things for the tests of the corpus builder. It has two sentences!

>>> alpha(1)
2
... more output

Example::

    x = alpha(2)

After the example, the prose resumes here
foo(bar)[0] = {}
and ends on this line.
"""
open(MARKER, "w").write("imported")


def alpha(x):
    """Return x plus one, which is a perfectly ordinary thing for a function to do."""


class Beta:
    """Beta holds state between calls."""

    def method(self):
        """Method docstring here, kept after its class."""
'''

EXPECTED_ALPHA = (
    "Alpha module summary line. This module does useful things for the tests of the corpus builder. "
    "It has two sentences! Example: After the example, the prose resumes here and ends on this line. "
    "Return x plus one, which is a perfectly ordinary thing for a function to do. "
    "Beta holds state between calls. Method docstring here, kept after its class.")

LONG_DOC = '"""' + "A package docstring that is long enough to be kept as its own document. " * 4 + '"""\n'


@pytest.fixture
def fake_stdlib(tmp_path):
    root = tmp_path / "lib"
    marker = tmp_path / "IMPORTED"
    files = {
        "alpha.py": ALPHA.replace("MARKER", repr(str(marker))),
        "short.py": '"""Too short to keep."""\n',
        "broken.py": LONG_DOC + "def (:\n",
        "python-config.py": LONG_DOC,
        "pkg/__init__.py": LONG_DOC,
        "pkg/sub.py": LONG_DOC,
        "test/test_alpha.py": LONG_DOC,
        "pkg/tests/test_sub.py": LONG_DOC,
        "__pycache__/cached.py": LONG_DOC,
        "site-packages/third.py": LONG_DOC,
        "notes.txt": LONG_DOC,
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root, marker


def test_fake_stdlib_documents(fake_stdlib):
    root, marker = fake_stdlib
    docs = list(iter_documents(root))
    assert [doc_id for doc_id, _ in docs] == ["alpha", "pkg", "pkg.sub"]
    assert docs[0][1] == EXPECTED_ALPHA
    assert not marker.exists(), "sources must be parsed, never imported"
    # sentence punctuation survives, so blingfire finds the sentences
    sentences = blingfire.text_to_sentences(docs[0][1]).split("\n")
    assert sentences[:3] == ["Alpha module summary line.",
                             "This module does useful things for the tests of the corpus builder.",
                             "It has two sentences!"]


def test_fake_stdlib_build_round_robin(fake_stdlib, tmp_path):
    root, _ = fake_stdlib
    out = tmp_path / "out"
    stats = build_sample_corpus(out, num_files=2, root=root)
    assert stats["documents"] == 3 and stats["files"] == {"part-00000.txt": 2, "part-00001.txt": 1}
    part0 = (out / "part-00000.txt").read_text(encoding="utf-8").splitlines()
    part1 = (out / "part-00001.txt").read_text(encoding="utf-8").splitlines()
    assert part0[0] == "alpha " + EXPECTED_ALPHA
    assert [line.split(" ", 1)[0] for line in part0 + part1] == ["alpha", "pkg.sub", "pkg"]
    assert stats["bytes"] == sum(p.stat().st_size for p in out.iterdir())


def test_clean_docstring_rules():
    doc = textwrap.dedent("""\
        Summary without a period

        Text interrupted by a block

            indented code block
            more code

        which continues here
        ==========

        Last paragraph ends with a colon:
        """)
    # a period closes a paragraph only if the next one starts a new sentence (upper case)
    assert clean_docstring(doc) == ("Summary without a period. Text interrupted by a block which continues "
                                    "here. Last paragraph ends with a colon:")
    assert clean_docstring(">>> only a doctest\n... cont\noutput") == ""
    assert clean_docstring("Weird\u2028separator\x85here.") == "Weird separator here."


@pytest.fixture(scope="module")
def real_build(tmp_path_factory):
    base = tmp_path_factory.mktemp("corpus")
    stats = build_sample_corpus(base / "a", num_files=3, max_documents=40)
    return base, stats


def test_real_stdlib_format(real_build):
    base, stats = real_build
    files = sorted((base / "a").iterdir())
    assert [f.name for f in files] == ["part-00000.txt", "part-00001.txt", "part-00002.txt"]
    lines = [line for f in files for line in f.read_text(encoding="utf-8").split("\n")[:-1]]
    assert len(lines) == stats["documents"] == 40
    assert len({line.split(" ", 1)[0] for line in lines}) == 40  # module names are unique ids
    for line in lines:
        assert re.match(r"^\S+ \S", line), line[:80]
        assert ">>>" not in line
        assert len(line.split(" ", 1)[1]) >= sample_corpus.MIN_DOC_CHARS
    assert stats["bytes"] == sum(f.stat().st_size for f in files)


def test_real_stdlib_deterministic(real_build):
    base, _ = real_build
    build_sample_corpus(base / "b", num_files=3, max_documents=40)
    for name in ("part-00000.txt", "part-00001.txt", "part-00002.txt"):
        assert (base / "a" / name).read_bytes() == (base / "b" / name).read_bytes()


def test_max_bytes_limit(tmp_path):
    stats = build_sample_corpus(tmp_path / "c", num_files=1, max_bytes=20_000)
    assert 0 < stats["bytes"] <= 20_000
    assert (tmp_path / "c" / "part-00000.txt").stat().st_size == stats["bytes"]


def test_nothing_fits_leaves_no_directory(tmp_path):
    with pytest.raises(ValueError, match="no document .* fits the limits"):
        build_sample_corpus(tmp_path / "out", max_bytes=10)
    assert list(tmp_path.iterdir()) == []


def test_failure_while_writing_leaves_no_directory(fake_stdlib, tmp_path, monkeypatch):
    root, _ = fake_stdlib

    def write_then_fail(directory, lines, num_files):
        with open(f"{directory}/part-00000.txt", "w", encoding="utf-8") as f:
            f.write(lines[0])
        raise OSError("disk full")

    monkeypatch.setattr(sample_corpus, "_write_parts", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        build_sample_corpus(tmp_path / "out", root=root)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lib"]  # no output, no leftover temp dir


def test_existing_output_is_not_touched(fake_stdlib, tmp_path):
    root, _ = fake_stdlib
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_sample_corpus(out, root=root)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    build_sample_corpus(out, root=root, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["part-00000.txt", "part-00001.txt", "part-00002.txt",
                                                     "part-00003.txt"]


@pytest.mark.parametrize("kwargs, flag", [
    ({"num_files": 0}, "--num-files"), ({"max_documents": 0}, "--max-documents"),
    ({"max_bytes": -5}, "--max-bytes"), ({"num_files": 2.5}, "--num-files"),
])
def test_bad_limits(tmp_path, kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        build_sample_corpus(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_cli(fake_stdlib, tmp_path, monkeypatch):
    root, _ = fake_stdlib
    monkeypatch.setattr(sample_corpus, "stdlib_dir", lambda: str(root))
    stats = main(["--output-dir", str(tmp_path / "cli"), "--num-files", "1"])
    assert stats["documents"] == 3
    with pytest.raises(ValueError, match="--num-files"):
        main(["--output-dir", str(tmp_path / "cli2"), "--num-files", "0"])
    assert run_cli(main, ["--output-dir", str(tmp_path / "cli2"), "--num-files", "0"]) == 2
    assert not (tmp_path / "cli2").exists()
    with pytest.raises(FileExistsError, match="already exists"):
        main(["--output-dir", str(tmp_path / "cli")])
