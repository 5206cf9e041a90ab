"""The embedded demo corpus: English prose from the docstrings of Python's own standard library.

Owns: finding the stdlib sources, extracting and cleaning their docstrings, and writing them in LDDL's
source format (text files, one document per line, `<doc_id> <text>`). Does not own sentence splitting,
tokenization or pair building (the preprocessor does those); it only keeps sentence punctuation intact
for `blingfire.text_to_sentences`.

Why docstrings: every machine that runs this project has them, so the whole pipeline can be exercised
offline on real English (about 2-3 MB of it on CPython 3.11) without downloading Wikipedia.

The sources are parsed with `ast`, never imported (importing `antigravity` opens a browser, `this`
prints). One document per module: its docstring followed by its classes' and functions' docstrings, in
source order. Test suites, IDLE, `site-packages` and caches are skipped; files are visited in sorted
order, so two builds on one Python installation are byte-identical.

Usage:
  python -m data.prep.sample_corpus --output-dir data_out/sample_source [--num-files 4] \
      [--max-documents 500] [--max-bytes 1000000] [--overwrite]
"""
import utils.preflight  # noqa: F401  -- zlib before paddle, OMP threads default; must stay first

import ast
import inspect
import logging
import os
import re
import sys
import sysconfig
import warnings

from utils.cli import ArgumentParser, run_cli
from utils.fs import atomic_output_dir, refuse_output_over_inputs
from utils.logger import progress

logger = logging.getLogger(__name__)

MIN_DOC_CHARS = 200
# Directory names never descended into: test suites (full of deliberately odd code), IDLE, third-party
# packages and bytecode caches.
_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "idlelib", "__pycache__", "site-packages",
                        "dist-packages", "lib-dynload"})
# A kept line needs this share of letters among its non-space characters; prose sits around 0.85,
# signatures, tables and code around 0.5.
_MIN_ALPHA_SHARE = 0.7
_CODE_HINTS = re.compile(r"(==|!=|->|<=|>=|\+=|\w\(\)|\[\]|\{\}|^\s*(def|class|import|from|return)\s)")


def stdlib_dir():
    """Directory of the running interpreter's pure-Python standard library (str)."""
    return sysconfig.get_paths()["stdlib"]


def iter_module_files(root):
    """Yield (dotted module name, path) for every stdlib `.py` file worth reading, in sorted order.

    Args:
      root: str, the stdlib directory.
    """
    for dirpath, dirnames, filenames in os.walk(root):
        # Pruning in place both skips those trees and fixes the walk order (sorted) for determinism.
        dirnames[:] = sorted(d for d in dirnames
                             if d not in _SKIP_DIRS and not d.startswith((".", "config-")))
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), root)[:-3]
            parts = rel.split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if not parts or any(not p.isidentifier() for p in parts):
                continue  # e.g. 'python-config.py': not importable, not a module
            yield ".".join(parts), os.path.join(dirpath, name)


def _docstrings(tree):
    """Docstrings of a module, then of each class/function, depth first in source order."""
    found = []

    def visit(node):
        doc = ast.get_docstring(node, clean=True)
        if doc:
            found.append(doc)
        for child in getattr(node, "body", []):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child)

    visit(tree)
    return found


def _is_prose(line):
    stripped = line.strip()
    visible = [ch for ch in stripped if not ch.isspace()]
    if not visible or _CODE_HINTS.search(stripped):
        return False
    return sum(ch.isalpha() for ch in visible) / len(visible) >= _MIN_ALPHA_SHARE


def _prose_paragraphs(doc):
    """Split a docstring into paragraphs (lists of lines) of prose.

    Drops doctest blocks (a '>>>' line and everything up to the next blank line: continuation '...'
    lines and expected output), indented paragraphs (after dedenting, those are code examples, reST
    literal and quote blocks; indented lines inside an unindented paragraph, like argument descriptions,
    stay) and single lines that look like code or tables.
    """
    paragraphs, current = [], []
    in_doctest = in_block = False
    for line in inspect.cleandoc(doc).splitlines():
        stripped = line.strip()
        if not stripped:
            in_doctest = in_block = False
            if current:
                paragraphs.append(current)
                current = []
            continue
        if in_block or (not current and line[:1].isspace()):
            in_block = True
            continue
        if stripped.startswith((">>>", "...")) or in_doctest:
            in_doctest = True
            continue
        if stripped.endswith("::"):
            stripped = stripped[:-1]  # reST renders 'Example::' as 'Example:'
        if _is_prose(stripped):
            current.append(stripped)
    if current:
        paragraphs.append(current)
    return paragraphs


def clean_docstring(doc):
    """One docstring -> one line of prose ('' if nothing is left).

    Paragraphs are joined with spaces. A paragraph that ends without sentence punctuation gets a '.'
    (a summary line like 'Return the path'), so the sentence splitter does not glue it to the next one,
    unless the next paragraph starts in lower case: then a dropped code block interrupted the sentence.

    Args:
      doc: str, a raw docstring.

    Returns:
      str without newlines or runs of whitespace.
    """
    texts = [" ".join(p) for p in _prose_paragraphs(doc)]
    for i, text in enumerate(texts):
        continues = i + 1 < len(texts) and texts[i + 1][0].islower()
        if not continues and (text[-1].isalnum() or text[-1] in ")'\""):
            texts[i] = text + "."
    # str.split() also breaks on the rarer line separators (\x1c, \x85, U+2028...), so no document can
    # spill onto a second line of the output.
    return " ".join(" ".join(texts).split())


def module_document(path):
    """Cleaned text of one module ('' if it cannot be parsed or holds no prose).

    Args:
      path: str, a `.py` file.

    Returns:
      str, a single line.
    """
    try:
        with open(path, "rb") as f:
            source = f.read()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in old sources
            tree = ast.parse(source, filename=path)
    except (SyntaxError, ValueError, OSError) as e:
        logger.debug("skipping %s: %s", path, e)
        return ""
    return " ".join(t for t in (clean_docstring(d) for d in _docstrings(tree)) if t)


def iter_documents(root=None, min_chars=MIN_DOC_CHARS):
    """Yield (doc_id, text) for each stdlib module with at least `min_chars` characters of prose.

    Args:
      root: str, stdlib directory (default: the running interpreter's).
      min_chars: int, shorter documents are skipped (too short to yield sentence pairs).

    Yields:
      (str dotted module name without spaces, str single-line text).
    """
    root = stdlib_dir() if root is None else os.fspath(root)
    if not os.path.isdir(root):
        raise ValueError(f"standard library directory '{root}' does not exist")
    for doc_id, path in iter_module_files(root):
        text = module_document(path)
        if len(text) >= min_chars:
            yield doc_id, text


def _check_limits(num_files, max_documents, max_bytes):
    if not isinstance(num_files, int) or num_files < 1:
        raise ValueError(f"--num-files must be an integer >= 1, got {num_files!r}")
    for flag, value in (("--max-documents", max_documents), ("--max-bytes", max_bytes)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{flag} must be an integer >= 1 (or omitted for no limit), got {value!r}")


def _select_lines(documents, max_documents, max_bytes):
    """Take '<doc_id> <text>' lines from `documents` until a limit would be passed."""
    lines, total = [], 0
    for doc_id, text in documents:
        line = f"{doc_id} {text}\n"
        size = len(line.encode("utf-8"))
        if max_bytes is not None and total + size > max_bytes:
            break
        lines.append(line)
        total += size
        if max_documents is not None and len(lines) >= max_documents:
            break
    return lines, total


def _write_parts(directory, lines, num_files):
    """Deal `lines` round-robin into `part-00000.txt` ...; returns {file name: number of lines}."""
    counts = {}
    for i in range(num_files):
        name = f"part-{i:05d}.txt"
        with open(os.path.join(directory, name), "w", encoding="utf-8", newline="\n") as f:
            f.writelines(lines[i::num_files])
        counts[name] = len(lines[i::num_files])
    return counts


def build_sample_corpus(output_dir, num_files=4, max_documents=None, max_bytes=None, overwrite=False,
                        root=None):
    """Write the stdlib-docstring corpus as LDDL source text files.

    Documents go round-robin to `part-00000.txt` ... so the files have similar sizes and each keeps the
    sorted module order. The directory appears only when everything was written (atomic rename).

    Args:
      output_dir: str, directory to create.
      num_files: int >= 1, number of `.txt` files (fewer documents than files leaves some files empty).
      max_documents: int >= 1 or None, stop after this many documents.
      max_bytes: int >= 1 or None, total UTF-8 size cap; the document that would cross it is not taken.
      overwrite: bool, replace an existing `output_dir`.
      root: str or None, stdlib directory to read (default: the running interpreter's).

    Returns:
      dict: documents, bytes, num_files, files {name: documents}, stdlib (the directory read).

    Raises:
      ValueError: bad limits, or no document fits the limits.
      FileExistsError: `output_dir` exists and overwrite is False.
    """
    _check_limits(num_files, max_documents, max_bytes)
    root = stdlib_dir() if root is None else os.fspath(root)
    refuse_output_over_inputs("--output-dir", output_dir, [("the standard library directory", root)])
    if os.path.exists(output_dir) and not overwrite:
        raise FileExistsError(f"--output-dir '{output_dir}' already exists; remove it or pass --overwrite")
    docs = progress(iter_documents(root), desc="stdlib modules", unit="doc")
    lines, total = _select_lines(docs, max_documents, max_bytes)
    if not lines:
        raise ValueError(f"no document from '{root}' fits the limits (--max-bytes {max_bytes}, "
                         f"--max-documents {max_documents})")
    with atomic_output_dir(output_dir, overwrite=overwrite) as tmp:
        files = _write_parts(tmp, lines, num_files)
    stats = {"documents": len(lines), "bytes": total, "num_files": num_files, "stdlib": root,
             "files": files}
    logger.info("wrote %d documents, %d bytes, into %d files under %s (from %s)",
                stats["documents"], total, num_files, output_dir, root)
    return stats


def _parse_args(argv):
    parser = ArgumentParser(
        prog="python -m data.prep.sample_corpus",
        description="Write the offline demo corpus (stdlib docstrings) in LDDL source format.")
    parser.add_argument("--output-dir", required=True, help="directory to create (must not exist)")
    parser.add_argument("--num-files", type=int, default=4, help="number of part-*.txt files (default 4)")
    parser.add_argument("--max-documents", type=int, default=None, help="stop after N documents")
    parser.add_argument("--max-bytes", type=int, default=None, help="cap on the total size in bytes")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output-dir")
    return parser.parse_args(argv)


def main(argv=None):
    """CLI entry point; returns the stats dict. Raises like `build_sample_corpus` (see `utils.cli`)."""
    args = _parse_args(argv)
    return build_sample_corpus(args.output_dir, args.num_files, args.max_documents, args.max_bytes,
                               overwrite=args.overwrite)


if __name__ == "__main__":
    sys.exit(run_cli(main))
