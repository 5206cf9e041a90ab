"""Train a BERT WordPiece vocabulary from text files.

Owns: streaming text out of LDDL source files (one document per line, `<doc_id> <text>`) or plain text
files, training HF `tokenizers`' WordPieceTrainer with exactly the normalizer and pre-tokenizer that
`tokenizer.BertTokenizer` uses, and writing the vocab file (atomically) so that both `BertTokenizer` and
`FullTokenizer` load it. Does not own tokenization itself (see `tokenizer.py`).

Output layout: `[PAD] [UNK] [CLS] [SEP] [MASK]` at ids 0..4, then the learned tokens in the trainer's
order (single characters and their '##' forms first, then merged pieces). No `[unusedN]` slots.

Usage:
  python -m data.prep.build_vocab --input data_out/sample_source --output vocab/my-vocab.txt \
      --vocab-size 8192 [--do-lower-case | --no-lower-case] [--min-frequency 2] [--plain-text] [--overwrite]
"""
import utils.preflight  # noqa: F401  -- zlib before paddle, OMP threads default; must stay first

import logging
import os
import sys

from tokenizer import SPECIAL_TOKENS, hf_normalizer, hf_pre_tokenizer, load_vocab
from utils.cli import ArgumentParser, run_cli
from utils.fs import atomic_write_text, check_writable_dir, refuse_output_over_inputs
from utils.logger import progress

logger = logging.getLogger(__name__)

MIN_VOCAB_SIZE = 100


def find_input_files(inputs):
    """Expand files and directories into a sorted, de-duplicated list of files.

    Directories are searched recursively for `*.txt` (LDDL's convention for source text); files named
    explicitly are taken whatever their extension.

    Args:
      inputs: list of str paths.

    Returns:
      list[str].

    Raises:
      ValueError: a path does not exist, or nothing was found.
    """
    files = set()
    for path in inputs:
        path = os.fspath(path)
        if os.path.isfile(path):
            files.add(path)
        elif os.path.isdir(path):
            for dirpath, _, names in os.walk(path):
                files.update(os.path.join(dirpath, n) for n in names if n.endswith(".txt"))
        else:
            raise ValueError(f"--input '{path}' does not exist")
    if not files:
        raise ValueError(f"--input {' '.join(map(str, inputs)) or '(none)'}: no input files found "
                         f"(directories are searched for *.txt)")
    return sorted(files)


def iter_texts(files, has_doc_ids=True):
    """Stream the text of each non-blank line, one line in memory at a time.

    Args:
      files: list of str paths, UTF-8.
      has_doc_ids: bool; True for LDDL source files, whose first whitespace-separated field is the
        document id (not text, so it must not shape the vocab).

    Yields:
      str, one document (or line) of text.

    Raises:
      ValueError: a file is not UTF-8 text.
    """
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if has_doc_ids:
                        parts = line.split(maxsplit=1)
                        line = parts[1] if len(parts) == 2 else ""
                    if line.strip():
                        yield line
        except UnicodeDecodeError as e:
            raise ValueError(f"--input file '{path}' is not UTF-8 text: {e}") from None


def continuation_alphabet(texts, normalizer, pre_tokenizer):
    """Sorted '##'-tokens for every character that can continue a word in `texts`.

    Why: HF's trainer creates these tokens lazily while iterating a hash map, so their ids, and with them
    the tie-breaks between equally frequent merges, change from run to run (huggingface/tokenizers#1794).
    Registering them up front, in sorted order, makes the learned vocab reproducible.

    Args:
      texts: iterable of str (consumed).
      normalizer, pre_tokenizer: the HF objects the trainer will use.

    Returns:
      (list[str] '##c' tokens, int number of texts seen).
    """
    raw, count = set(), 0
    for text in texts:
        raw.update(text)  # set.update on a str walks its characters in C: cheap even for a large corpus
        count += 1
    chars = set()
    for ch in raw:
        chars.update(normalizer.normalize_str(ch))  # BertNormalizer works character by character
    # Whitespace and punctuation are split off by the pre-tokenizer, so they never continue a word.
    inner = sorted(c for c in chars if len(pre_tokenizer.pre_tokenize_str(f"a{c}a")) == 1)
    return ["##" + c for c in inner], count


def _new_trainer(vocab_size, min_frequency, continuation_tokens):
    from tokenizers import trainers

    return trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                     special_tokens=list(SPECIAL_TOKENS) + continuation_tokens,
                                     continuing_subword_prefix="##", show_progress=False)


def _vocab_lines(tokenizer):
    """Learned vocab as a list of tokens ordered by id, checked to survive a write/read round trip."""
    by_id = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    tokens = [tok for tok, _ in by_id]
    if tuple(tokens[:len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
        raise RuntimeError(f"trainer did not put {SPECIAL_TOKENS} first: {tokens[:len(SPECIAL_TOKENS)]}")
    # A token that load_vocab would alter (surrounding whitespace, empty, line break) would shift every
    # later id; the pre-tokenizer should make this impossible, so fail loudly if it ever happens.
    bad = [t for t in tokens if t != t.strip() or not t or len(t.splitlines()) != 1]
    if bad:
        raise RuntimeError(f"learned tokens that cannot be stored one per line: {bad[:5]!r}")
    return tokens


def train_wordpiece_vocab(paths, vocab_size, do_lower_case, output_path, min_frequency=2,
                          has_doc_ids=True, overwrite=False):
    """Train a WordPiece vocab on `paths` and write it to `output_path`.

    Args:
      paths: list of files or directories (see `find_input_files`).
      vocab_size: int >= 100, the target size including the 5 special tokens; a small corpus may give
        fewer tokens (logged as a warning).
      do_lower_case: bool, must match how the vocab will be used (checked later by `check_vocab_case`).
      output_path: str, vocab file to write (atomically; parent directories are created).
      min_frequency: int >= 1, pairs seen fewer times are not merged.
      has_doc_ids: bool, inputs are LDDL source files whose lines start with a document id.
      overwrite: bool, replace an existing `output_path` (a vocab is what every shard and checkpoint made
        with it depends on, so replacing one must be asked for, as for every other data command).

    Returns:
      int, the number of tokens written.

    Raises:
      ValueError: bad vocab_size/min_frequency, no input files, unreadable input, empty corpus, or an
        `output_path` that is a directory.
      FileExistsError: `output_path` exists and overwrite is False (checked before any work).
      OSError naming the directory: `output_path`'s directory cannot be created or written (checked
        before any work).
    """
    from tokenizers import Tokenizer, models

    if not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"--vocab-size must be an integer >= {MIN_VOCAB_SIZE}, got {vocab_size!r}")
    if not isinstance(min_frequency, int) or min_frequency < 1:
        raise ValueError(f"--min-frequency must be an integer >= 1, got {min_frequency!r}")
    output_path = os.fspath(output_path)
    if os.path.isdir(output_path):
        raise ValueError(f"--output '{output_path}' is a directory; give the vocab file's path")
    given = [paths] if isinstance(paths, (str, os.PathLike)) else paths
    refuse_output_over_inputs("--output", output_path, [("--input", os.fspath(p)) for p in given])
    if os.path.exists(output_path) and not overwrite:
        raise FileExistsError(f"--output '{output_path}' already exists; remove it or pass --overwrite")
    check_writable_dir(os.path.dirname(os.path.abspath(output_path)), "--output")  # now, not after training
    files = find_input_files(paths)
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = hf_normalizer(do_lower_case)
    tok.pre_tokenizer = hf_pre_tokenizer()
    texts = progress(iter_texts(files, has_doc_ids), desc="vocab alphabet", unit="line")
    continuation, num_texts = continuation_alphabet(texts, tok.normalizer, tok.pre_tokenizer)
    if num_texts == 0:
        raise ValueError(f"--input: the {len(files)} input file(s) contain no text (first: '{files[0]}')")
    logger.info("training a %d-token %s WordPiece vocab on %d line(s) from %d file(s)", vocab_size,
                "uncased" if do_lower_case else "cased", num_texts, len(files))
    texts = progress(iter_texts(files, has_doc_ids), total=num_texts, desc="vocab corpus", unit="line")
    tok.train_from_iterator(texts, trainer=_new_trainer(vocab_size, min_frequency, continuation),
                            length=num_texts)

    tokens = _vocab_lines(tok)
    atomic_write_text(output_path, "".join(t + "\n" for t in tokens))
    if len(load_vocab(output_path)) != len(tokens):
        raise RuntimeError(f"'{output_path}' does not read back as {len(tokens)} tokens")
    if len(tokens) < vocab_size:
        logger.warning("corpus too small for %d tokens: wrote %d", vocab_size, len(tokens))
    logger.info("wrote %d tokens to %s", len(tokens), output_path)
    return len(tokens)


def _parse_args(argv):
    parser = ArgumentParser(prog="python -m data.prep.build_vocab",
                                     description="Train a BERT WordPiece vocab from text files.")
    parser.add_argument("--input", nargs="+", required=True,
                        help="LDDL source files or directories (searched for *.txt)")
    parser.add_argument("--output", required=True, help="vocab file to write (must not exist unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--vocab-size", type=int, default=8192, help="target size incl. specials")
    case = parser.add_mutually_exclusive_group()
    case.add_argument("--do-lower-case", dest="do_lower_case", action="store_true", default=True,
                      help="uncased vocab: lower-case and strip accents (default)")
    case.add_argument("--no-lower-case", dest="do_lower_case", action="store_false",
                      help="cased vocab")
    parser.add_argument("--min-frequency", type=int, default=2, help="minimum pair count to merge")
    parser.add_argument("--plain-text", action="store_true",
                        help="inputs are plain text (no leading '<doc_id> ' on each line)")
    return parser.parse_args(argv)


def main(argv=None):
    """CLI entry point; returns the vocab size written. Raises like `train_wordpiece_vocab` (see `utils.cli`)."""
    args = _parse_args(argv)
    return train_wordpiece_vocab(args.input, args.vocab_size, args.do_lower_case, args.output,
                                 min_frequency=args.min_frequency, has_doc_ids=not args.plain_text,
                                 overwrite=args.overwrite)


def cli(argv=None):
    """`main` as a command (`utils.cli.run_cli`), also the `build_vocab` console script: returns the exit
    status, 0 ok or 2 bad input."""
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
