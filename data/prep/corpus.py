"""Streaming readers for plain-text corpora, and conversion to LDDL source format.

Owns: finding corpus files (files or directories, recursively, in a deterministic order), opening them
(plain, .gz, .bz2; UTF-8), reading documents from the two plain-text layouts in use, and the CLI that
rewrites any of them as LDDL source text (one document per line: `<doc_id> <text>`).
Does not own: Wikipedia markup (`data.prep.wikipedia`), sentence splitting or tokenization
(`data.prep.preprocess_bert_pretrain`).

Formats:
  lines  one document per line, `<doc_id> <text>` (LDDL source format, what data.prep.wikipedia writes).
  bert   Google BERT's `create_pretraining_data.py` input: one sentence per line, a blank line between
         documents. doc_id = `<file stem>-<index>`; sentences are joined with a space.
  auto   per file: `bert` if a blank line separates two non-blank lines within the first 1 MB, else
         `lines`. A single-document BERT file has no blank line, so pass `--format bert` for those.

Nothing is ever read whole: files are streamed line by line, so corpora of any size work.

Usage (from the repo root):
    python -m data.prep.corpus --input books/ extra.txt.gz --format auto --output-dir data/download/books/source \
        --num-files 8
"""
import utils.preflight  # noqa: F401  -- zlib before paddle, OMP threads default; must stay first
import bz2
import collections
import gzip
import io
import logging
import os
import sys
from pathlib import Path

from utils.cli import ArgumentParser, run_cli
from utils.fs import atomic_output_dir, refuse_output_over_inputs
from utils.logger import progress

logger = logging.getLogger(__name__)

FORMATS = ("auto", "lines", "bert")
_SNIFF_CHARS = 1 << 20
_COMPRESSED_SUFFIXES = (".gz", ".bz2")
_DIR_PATTERNS = ("*.txt", "*.txt.gz", "*.txt.bz2")


def list_corpus_files(paths):
    """Expand files and directories into an ordered list of corpus files.

    Args:
      paths: str/Path or a sequence of them. A directory contributes every `*.txt`, `*.txt.gz` and
        `*.txt.bz2` below it (recursively), sorted by relative path; files are taken as given.

    Returns:
      list[Path], in argument order, each directory's files sorted, duplicates removed.

    Raises:
      ValueError: a path does not exist, a directory holds no corpus file, or nothing was given.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files, seen = [], set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted({p for pattern in _DIR_PATTERNS for p in path.rglob(pattern) if p.is_file()},
                           key=lambda p: p.relative_to(path).as_posix())
            if not found:
                raise ValueError(f"corpus directory '{path}' contains no *.txt, *.txt.gz or *.txt.bz2 files")
        elif path.is_file():
            found = [path]
        else:
            raise ValueError(f"corpus path '{path}' does not exist")
        for f in found:
            if f.resolve() not in seen:
                seen.add(f.resolve())
                files.append(f)
    if not files:
        raise ValueError("no corpus paths given")
    return files


def open_binary(path):
    """Open a file for reading bytes, decompressing `.gz` and `.bz2` (also multi-stream bz2) on the fly.

    Shared by every reader of corpora and dumps (`open_text`, `data.prep.preprocess_bert_pretrain`,
    `data.prep.wikipedia`), so they all accept the same compressions.

    Returns:
      A binary file object. Raises OSError as `open` does.
    """
    path = str(path)
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".bz2"):
        return bz2.open(path, "rb")
    return open(path, "rb")


def open_text(path):
    """Open a corpus file for reading as text: UTF-8 (a BOM is dropped), universal newlines, .gz/.bz2 aware.

    Returns:
      A text file object; CRLF and CR line ends read as '\\n'. Decoding errors surface while reading.
    """
    return io.TextIOWrapper(open_binary(path), encoding="utf-8-sig", errors="strict", newline=None)


def _stem(path):
    name = Path(path).name
    for suffix in _COMPRESSED_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name[:-4] if name.endswith(".txt") else Path(name).stem


def sniff_format(path):
    """'bert' if a blank line separates two non-blank lines within the first 1 MB of `path`, else 'lines'.

    Trailing blank lines (common at the end of a one-document-per-line file) do not count.
    """
    with open_text(path) as f:
        lines = f.read(_SNIFF_CHARS).split("\n")
    seen_text = blank_after_text = False
    for line in lines:
        if line.strip():
            if blank_after_text:
                return "bert"
            seen_text = True
        elif seen_text:
            blank_after_text = True
    return "lines"


def _iter_lines_format(f):
    for line in f:
        parts = line.split(None, 1)
        if len(parts) == 2:
            yield parts[0], " ".join(parts[1].split())


def _iter_bert_format(f, stem):
    sentences, index = [], 0
    for line in f:
        if line.strip():
            sentences.append(line)
        elif sentences:
            yield f"{stem}-{index}", " ".join(" ".join(sentences).split())
            sentences, index = [], index + 1
    if sentences:
        yield f"{stem}-{index}", " ".join(" ".join(sentences).split())


def _doc_id_stems(files):
    """`<file stem>` per file for BERT-format doc_ids: whitespace replaced by '_' (a doc_id is one token),
    and `.<position in the file list>` appended when files in different directories share a stem."""
    stems = ["_".join(_stem(f).split()) or "doc" for f in files]
    counts = collections.Counter(stems)
    return [f"{s}.{k}" if counts[s] > 1 else s for k, s in enumerate(stems)]


class _LineCounter:
    """Iterates a text file's lines while counting them, for error messages."""

    def __init__(self, f):
        self.f = f
        self.count = 0

    def __iter__(self):
        for line in self.f:
            self.count += 1
            yield line


def _iter_file(path, fmt, stem):
    """Documents of one file; decoding errors become ValueError naming the file and line."""
    with open_text(path) as f:
        counted = _LineCounter(f)
        docs = _iter_bert_format(counted, stem) if fmt == "bert" else _iter_lines_format(counted)
        try:
            yield from docs
        except UnicodeDecodeError as err:
            raise ValueError(f"corpus file '{path}' is not valid UTF-8 (near line {counted.count + 1}): "
                             f"{err.reason}") from err
        except (OSError, EOFError) as err:
            raise ValueError(f"cannot read corpus file '{path}': {err}") from err


def iter_documents(paths, fmt="auto", unique_ids=True):
    """Stream `(doc_id, text)` from plain-text corpora.

    Args:
      paths: file/directory path or a sequence of them (see list_corpus_files).
      fmt: 'lines', 'bert' or 'auto' (decided per file by sniff_format).
      unique_ids: raise on a repeated doc_id across all inputs (remembers every id: ~100 bytes each).

    Yields:
      (str doc_id, str text): doc_id has no whitespace; text is one line, whitespace runs collapsed to one
      space, never empty (empty documents are dropped).

    Raises:
      ValueError: unknown fmt; missing path or no files (raised before anything is yielded); a file that is
        not UTF-8, cannot be read, or repeats a doc_id (raised when reached; the message names the file).
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    files = list_corpus_files(paths)
    return _generate(files, fmt, unique_ids)


def _generate(files, fmt, unique_ids):
    seen = set()
    for path, stem in zip(files, _doc_id_stems(files)):
        try:
            file_fmt = sniff_format(path) if fmt == "auto" else fmt
        except UnicodeDecodeError as err:
            raise ValueError(f"corpus file '{path}' is not valid UTF-8: {err.reason}") from err
        except (OSError, EOFError) as err:
            raise ValueError(f"cannot read corpus file '{path}': {err}") from err
        logger.debug("%s: %s format", path, file_fmt)
        for doc_id, text in _iter_file(path, file_fmt, stem):
            if unique_ids:
                if doc_id in seen:
                    raise ValueError(f"corpus file '{path}': doc_id '{doc_id}' already seen; "
                                     "doc_ids must be unique across all inputs")
                seen.add(doc_id)
            yield doc_id, text


def convert(paths, output_dir, fmt="auto", num_files=1, prefix="corpus", overwrite=False):
    """Rewrite corpora as LDDL source text: `num_files` files `<prefix>-<k>.txt`, document i in file i % num_files.

    Args:
      paths: files and/or directories (see list_corpus_files).
      output_dir: str, directory created atomically.
      fmt: 'auto', 'lines' or 'bert' (see iter_documents).
      num_files: int >= 1.
      prefix: output file-name prefix (no spaces or slashes).
      overwrite: replace an existing output_dir.

    Returns:
      int, number of documents written.

    Raises:
      ValueError: bad arguments or input (see iter_documents). FileExistsError: output_dir exists and
        not `overwrite`. No output directory is left behind on error.
    """
    if not isinstance(num_files, int) or num_files < 1:
        raise ValueError(f"--num-files must be an integer >= 1, got {num_files!r}")
    if not prefix or any(c in prefix for c in "/\\ \t"):
        raise ValueError(f"--prefix must be a non-empty file-name prefix without spaces or slashes, got {prefix!r}")
    given = [paths] if isinstance(paths, (str, os.PathLike)) else paths
    refuse_output_over_inputs("--output-dir", output_dir, [("--input", os.fspath(p)) for p in given])
    docs = iter_documents(paths, fmt)  # validates paths before the output directory is created
    count = 0
    with atomic_output_dir(output_dir, overwrite=overwrite) as tmp:
        outputs = [open(os.path.join(tmp, f"{prefix}-{k}.txt"), "w", encoding="utf-8", newline="\n")
                   for k in range(num_files)]
        try:
            for doc_id, text in progress(docs, desc="documents", unit="doc"):
                outputs[count % num_files].write(f"{doc_id} {text}\n")
                count += 1
        finally:
            for out in outputs:
                out.close()
    logger.info("wrote %d documents into %d files in %s", count, num_files, output_dir)
    return count


def _parse_args(argv):
    parser = ArgumentParser(prog="python -m data.prep.corpus", description=__doc__.split("\n")[0])
    parser.add_argument("--input", nargs="+", required=True, help="corpus files and/or directories")
    parser.add_argument("--format", choices=FORMATS, default="auto", help="lines: one document per line, `<doc_id> <text>`; bert: one sentence per line, "
                             "a blank line between documents (Google's format); auto: bert if the first MB "
                             "of a file has a blank line between text lines, else lines")
    parser.add_argument("--output-dir", required=True, help="directory to create (atomically)")
    parser.add_argument("--num-files", type=int, default=1, help="number of output files")
    parser.add_argument("--prefix", default="corpus", help="output files are <prefix>-<k>.txt")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output-dir")
    return parser.parse_args(argv)


def main(argv=None):
    """Run the conversion CLI. Returns the number of documents written; raises like `convert`."""
    args = _parse_args(argv)
    return convert(args.input, args.output_dir, fmt=args.format, num_files=args.num_files, prefix=args.prefix,
                   overwrite=args.overwrite)


def cli(argv=None):
    """`main` as a command (`utils.cli.run_cli`): returns the exit status, 0 ok or 2 bad input."""
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
