"""BERT WordPiece tokenization with Google BERT's semantics: a pure-Python reference and a fast path.

Owns: reading vocabulary files, the basic (clean / CJK / case / accent / punctuation) tokenizer, the
greedy longest-match-first WordPiece tokenizer, the vocab-vs-`do_lower_case` consistency check, and the
HF `tokenizers` pipeline that reproduces them quickly (also used by `data.prep.build_vocab` to train vocabs).
Does not own: special-token insertion, truncation or ids for model feeds (the data and SQuAD code build
`[CLS] A [SEP] B [SEP]` themselves). Never imports paddle.

Two implementations that must agree token for token:

* `FullTokenizer` = `BasicTokenizer` + `WordpieceTokenizer`, plain Python written from the algorithm of
  Google's `tokenization.py`: the reference, and what the SQuAD answer alignment uses
  (`BasicTokenizer`, `whitespace_tokenize`).
* `BertTokenizer`, built on HF `tokenizers` (Rust): what the preprocessing pipeline calls on millions of
  documents.

Where HF alone disagrees with Google's Python (measured over all 1.1M code points, tokenizers 0.23.3 vs
Python 3.11's Unicode 14 tables): HF's character tables are older, so unassigned code points and recent
format characters survive (Google drops them), recent punctuation is not split off and recent combining
marks are not stripped; HF's CJK range misses U+2B820..U+2B91F; HF lower-cases one character at a time,
so Greek final sigma differs ('ΟΔΟΣ' -> Google 'οδος', HF 'οδοσ'). About 830k code points in all, but
almost none of them occur in English text. Rather than hard-coding a list that changes with either
library's version, `BertTokenizer` checks every distinct non-ASCII character it meets, once, against the
reference (alone and in a few neighbourhoods), and sends texts containing a character where the two
disagree through the reference basic tokenizer before HF's WordPiece. Pure-ASCII text (verified
exhaustively in the tests) always takes the fast path. Residual risk: the per-character probe cannot see
a disagreement that only appears for a combination of characters that each pass alone; none is known.
"""
import functools
import itertools
import logging
import os
import re
import threading
import unicodedata

import numpy as np

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_SPECIAL_KEYS = ("pad", "unk", "cls", "sep", "mask")

# A cased vocab (bert-base-cased: ~38% of its plain word tokens contain an uppercase letter) vs an
# uncased one (bert-base-uncased: none). Between the two thresholds we cannot tell, so we do not complain.
_CASED_MIN_FRACTION = 0.01
_UNCASED_MAX_FRACTION = 0.001

# CJK Unified Ideographs blocks (and compatibility blocks) that Google splits into one token per
# character. Hangul, Hiragana and Katakana are not here: those scripts separate words with spaces.
_CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)


# ----------------------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------------------

def load_vocab(vocab_file):
    """Read a BERT vocabulary: one token per line, the id is the 0-based line number.

    Like Google's loader, surrounding whitespace (the newline, a stray '\\r') is stripped from each line.
    Unlike it, blank lines and repeated tokens are rejected: both silently shift or shadow ids.

    Args:
      vocab_file: str or PathLike, UTF-8 text file.

    Returns:
      dict str -> int, in file order (ids 0..N-1).

    Raises:
      ValueError: the file is missing, unreadable, not UTF-8, empty, or has a blank/duplicate line.
    """
    path = os.fspath(vocab_file)
    if not os.path.isfile(path):
        raise ValueError(f"vocab file '{path}' does not exist or is not a file")
    vocab = {}
    try:
        with open(path, encoding="utf-8", newline="") as f:
            for line_no, line in enumerate(f, start=1):
                token = line.strip()
                if not token:
                    raise ValueError(f"vocab file '{path}' line {line_no} is blank")
                if token in vocab:
                    raise ValueError(f"vocab file '{path}' line {line_no} repeats token {token!r} "
                                     f"(first on line {vocab[token] + 1})")
                vocab[token] = len(vocab)
    except UnicodeDecodeError as e:
        raise ValueError(f"vocab file '{path}' is not UTF-8 text: {e}") from None
    except OSError as e:
        raise ValueError(f"cannot read vocab file '{path}': {e}") from None
    if not vocab:
        raise ValueError(f"vocab file '{path}' is empty")
    return vocab


def special_token_ids(vocab, vocab_file):
    """Ids of [PAD] [UNK] [CLS] [SEP] [MASK].

    Args:
      vocab: dict token -> id.
      vocab_file: path, only used in the error message.

    Returns:
      dict with keys 'pad', 'unk', 'cls', 'sep', 'mask' -> int id.

    Raises:
      ValueError: naming the vocab file and every missing special token.
    """
    missing = [tok for tok in SPECIAL_TOKENS if tok not in vocab]
    if missing:
        raise ValueError(f"vocab file '{os.fspath(vocab_file)}' lacks special token(s) {' '.join(missing)}; "
                         f"a BERT vocab needs all of {' '.join(SPECIAL_TOKENS)}")
    return {key: vocab[tok] for key, tok in zip(_SPECIAL_KEYS, SPECIAL_TOKENS)}


def _uppercase_fraction(vocab):
    """(#word tokens with an uppercase letter, #word tokens with any cased letter); ## and [..] skipped."""
    upper = cased = 0
    for token in vocab:
        if token.startswith("##") or (token.startswith("[") and token.endswith("]")):
            continue
        if token.isascii():  # the same two tests, string-wide: exact for ASCII, and ~20x faster
            if token.lower() != token.upper():
                cased += 1
                upper += token != token.lower()
        elif any(ch.lower() != ch.upper() for ch in token):
            cased += 1
            # 'Has a lower-case form', not str.isupper(): symbols like 'ℝ' (category Lu, no lower case)
            # survive lower-casing, so they appear in uncased vocabs too.
            if any(ch != ch.lower() for ch in token):
                upper += 1
    return upper, cased


def check_vocab_case(vocab, do_lower_case, vocab_file):
    """Refuse a vocab whose casing contradicts `do_lower_case`.

    A cased vocab with lower-casing makes every capitalised token unreachable; an uncased vocab without
    lower-casing turns every capitalised word into [UNK]. Both train or evaluate silently worse.

    Args:
      vocab: dict token -> id.
      do_lower_case: bool, the setting the caller is about to use.
      vocab_file: path, named in the error.

    Raises:
      ValueError: saying which flag to flip.
    """
    upper, cased = _uppercase_fraction(vocab)
    if cased == 0:
        return  # no letters with case at all: nothing to check
    fraction = upper / cased
    path = os.fspath(vocab_file)
    if do_lower_case and fraction > _CASED_MIN_FRACTION:
        raise ValueError(
            f"vocab file '{path}' is cased ({upper} of {cased} word tokens contain uppercase letters) but "
            f"do_lower_case=True; use do_lower_case=False (--no-lower-case) with a cased vocab")
    if not do_lower_case and fraction <= _UNCASED_MAX_FRACTION:
        raise ValueError(
            f"vocab file '{path}' is uncased ({upper} of {cased} word tokens contain uppercase letters) but "
            f"do_lower_case=False; use do_lower_case=True (--do-lower-case) with an uncased vocab")


# ----------------------------------------------------------------------------------------------------
# Character classes (Google's definitions; Python's unicodedata is the source of truth)
# ----------------------------------------------------------------------------------------------------

def _is_whitespace(ch):
    # \t \n \r are category Cc, but they separate words, so they count as spaces, not as controls.
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch):
    if ch in "\t\n\r":
        return False
    # Every "other" category (Cc, Cf, Cn unassigned, Co private use, Cs surrogate), as in Google's
    # released tokenization.py; some copies narrow this to Cc/Cf, which keeps unassigned code points.
    return unicodedata.category(ch).startswith("C")


def _is_punctuation(ch):
    cp = ord(ch)
    # All non-alphanumeric printable ASCII counts, including $ + < = > ^ ` | ~ which Unicode files
    # under symbols (S*), so that "a+b" splits the same way as "a,b".
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp):
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def whitespace_tokenize(text):
    """Split on runs of whitespace (Python's `str.split()` notion), dropping empty pieces.

    Args:
      text: str.

    Returns:
      list[str]; [] for an empty or all-whitespace string.
    """
    return text.split()


def clean_text(text):
    """Google's text cleaning: drop NUL, U+FFFD and control characters; map whitespace to ' '.

    Args:
      text: str.

    Returns:
      str, no longer than `text`.
    """
    out = []
    for ch in text:
        if ch == "\x00" or ch == "\ufffd" or _is_control(ch):
            continue
        out.append(" " if _is_whitespace(ch) else ch)
    return "".join(out)


class _CleanTable(dict):
    """`str.translate` table doing exactly `clean_text` (None = drop, ' ' = whitespace, else the code point
    itself), filled one code point at a time on first sight, so a text is cleaned in C after its
    characters have been seen once. Only the fast path uses it: the reference keeps Google's loop."""

    def __missing__(self, cp):
        ch = chr(cp)
        value = None if ch == "\x00" or ch == "\ufffd" or _is_control(ch) else " " if _is_whitespace(ch) else cp
        self[cp] = value
        return value


_CLEAN_TABLE = _CleanTable()


def has_words(text):
    """True when the basic tokenizer finds at least one word in `text` (before case and accent handling).

    A text of only whitespace, control, zero-width or other format characters (e.g. "\\x00\\x01",
    "\\u200b\\u200b") is cleaned to nothing: the model would be shown an empty question or context, so
    callers that refuse empty text must refuse these too; `str.strip` alone lets them through.

    Args:
      text: str.

    Returns:
      bool; the same as `bool(clean_text(text).split())`, computed with the fast path's translate table.
    """
    return bool(text.translate(_CLEAN_TABLE).strip())  # strip and split share str's whitespace definition
# The ASCII characters `clean_text` drops. Without them, `clean_text(t).split() == t.split()` for an ASCII
# `t` (the control characters it maps to ' ' -- \t \n \r -- are ones `str.split` splits on anyway), so the
# usual ASCII sentence skips `str.translate`.
_ASCII_DROPPED = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


# ----------------------------------------------------------------------------------------------------
# Reference tokenizers
# ----------------------------------------------------------------------------------------------------

class BasicTokenizer:
    """Text -> words: clean, isolate CJK ideographs, optionally lower-case and strip accents, split
    punctuation into single-character tokens.

    Args:
      do_lower_case: bool; True for uncased models (also strips accents: NFD, then drop category Mn).
    """

    def __init__(self, do_lower_case=True):
        self.do_lower_case = bool(do_lower_case)

    def tokenize(self, text):
        """Split one text into basic tokens.

        Args:
          text: str.

        Returns:
          list[str], no empty strings.

        Raises:
          ValueError: `text` is not a str.
        """
        if not isinstance(text, str):
            raise ValueError(f"BasicTokenizer.tokenize expects str, got {type(text).__name__}")
        text = self._space_out_cjk(clean_text(text))
        pieces = []
        for word in whitespace_tokenize(text):
            if self.do_lower_case:
                # Lower-case first, then strip accents: lower() may itself produce combining marks
                # (e.g. 'İ' -> 'i' + U+0307), which the accent pass then removes.
                word = _strip_accents(word.lower())
            pieces.extend(_split_punctuation(word))
        # Accent stripping can empty a word or expose whitespace; re-split so no empty tokens remain.
        return whitespace_tokenize(" ".join(pieces))

    @staticmethod
    def _space_out_cjk(text):
        if text.isascii():
            return text
        return "".join(f" {ch} " if _is_cjk(ord(ch)) else ch for ch in text)


def _strip_accents(word):
    if word.isascii():
        return word
    return "".join(ch for ch in unicodedata.normalize("NFD", word) if unicodedata.category(ch) != "Mn")


def _split_punctuation(word):
    """'a,b..c' -> ['a', ',', 'b', '.', '.', 'c']: every punctuation char is its own token."""
    out = []
    current = []
    for ch in word:
        if _is_punctuation(ch):
            if current:
                out.append("".join(current))
                current = []
            out.append(ch)
        else:
            current.append(ch)
    if current:
        out.append("".join(current))
    return out


class WordpieceTokenizer:
    """Words -> WordPiece tokens, greedy longest-match-first.

    From the start of a word, take the longest vocab entry that is a prefix; continue from where it ended
    with the longest '##'-prefixed entry; repeat. If some position has no match, or the word has more than
    `max_input_chars_per_word` characters, the whole word becomes `unk_token` (never a partial split).

    Args:
      vocab: dict (or any container supporting `in`) of tokens.
      unk_token: str.
      max_input_chars_per_word: int, counted in Unicode code points.
    """

    def __init__(self, vocab, unk_token="[UNK]", max_input_chars_per_word=100):
        self.vocab = vocab
        self.unk_token = unk_token
        self.max_input_chars_per_word = max_input_chars_per_word

    def tokenize(self, text):
        """Tokenize whitespace-separated words (normally output of `BasicTokenizer`).

        Args:
          text: str.

        Returns:
          list[str] of vocab tokens (including `unk_token`).
        """
        out = []
        for word in whitespace_tokenize(text):
            out.extend(self._word_pieces(word))
        return out

    def _word_pieces(self, word):
        if len(word) > self.max_input_chars_per_word:
            return [self.unk_token]
        pieces = []
        start = 0
        while start < len(word):
            for end in range(len(word), start, -1):
                candidate = word[start:end] if start == 0 else "##" + word[start:end]
                if candidate in self.vocab:
                    pieces.append(candidate)
                    start = end
                    break
            else:
                return [self.unk_token]
        return pieces


class FullTokenizer:
    """Reference end-to-end tokenizer: `BasicTokenizer` then `WordpieceTokenizer`.

    Args:
      vocab_file: path to a BERT vocab (see `load_vocab`).
      do_lower_case: bool, must match the vocab's casing.
      check_case: bool, run `check_vocab_case` (disable only for hand-made test vocabs).
      max_input_chars_per_word: int.

    Raises:
      ValueError: bad vocab file, or casing mismatch.
    """

    def __init__(self, vocab_file, do_lower_case=True, check_case=True, max_input_chars_per_word=100):
        self.vocab = load_vocab(vocab_file)
        if check_case:
            check_vocab_case(self.vocab, do_lower_case, vocab_file)
        self.inv_vocab = {i: t for t, i in self.vocab.items()}
        self.do_lower_case = bool(do_lower_case)
        self.basic_tokenizer = BasicTokenizer(do_lower_case)
        self.wordpiece_tokenizer = WordpieceTokenizer(self.vocab,
                                                      max_input_chars_per_word=max_input_chars_per_word)

    def tokenize(self, text):
        """str -> list[str] of WordPiece tokens."""
        out = []
        for word in self.basic_tokenizer.tokenize(text):
            out.extend(self.wordpiece_tokenizer.tokenize(word))
        return out

    def convert_tokens_to_ids(self, tokens):
        """list[str] -> list[int]; raises ValueError on a token not in the vocab."""
        return _lookup(self.vocab, tokens, "token")

    def convert_ids_to_tokens(self, ids):
        """list[int] -> list[str]; raises ValueError on an id outside the vocab."""
        return _lookup(self.inv_vocab, ids, "id")


def _lookup(table, items, what):
    try:
        return [table[item] for item in items]
    except (KeyError, TypeError):
        bad = next(item for item in items if not _hashable_in(item, table))
        raise ValueError(f"{what} {bad!r} is not in the vocabulary (size {len(table)})") from None


def _hashable_in(item, table):
    try:
        return item in table
    except TypeError:
        return False


# ----------------------------------------------------------------------------------------------------
# Fast path (HF tokenizers)
# ----------------------------------------------------------------------------------------------------

def hf_normalizer(do_lower_case):
    """HF `BertNormalizer` configured like `BasicTokenizer(do_lower_case)` (see module docstring for the
    characters where the two differ). Also used by `data.prep.build_vocab`, so a trained vocab sees the same
    text the tokenizer will."""
    from tokenizers import normalizers

    lower = bool(do_lower_case)
    return normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=lower,
                                      lowercase=lower)


def hf_pre_tokenizer():
    """HF `BertPreTokenizer`: split on whitespace and on every punctuation character."""
    from tokenizers import pre_tokenizers

    return pre_tokenizers.BertPreTokenizer()


# Distinct words `BertTokenizer.encode_ids_batch` remembers before starting afresh (~100 bytes each).
_WORD_CACHE_LIMIT = 1 << 21
# New words joined into one HF text when the cache fills (`BertTokenizer._add_words`).
_WORDS_PER_TEXT = 512


class _WordIndex(dict):
    """word -> its index in the word cache; a word seen for the first time gets the next index and is
    queued in `new_words`, so one C-level `map(index.__getitem__, words)` both looks up and collects."""

    def __init__(self):
        super().__init__()
        self.new_words = []

    def __missing__(self, word):
        value = self[word] = len(self)
        self.new_words.append(word)
        return value


# Neighbourhoods a non-ASCII character is probed in: alone, inside a word, after and before an uppercase
# letter (Greek final sigma depends on the letter before), and repeated between words.
_PROBE_CONTEXTS = ("{c}", "a{c}b", "A{c}", "{c}A", "x {c}{c} y")


class BertTokenizer:
    """Fast WordPiece tokenizer (HF `tokenizers`) with Google BERT's output; no special tokens added.

    Args:
      vocab_file: path to a BERT vocab (see `load_vocab`); must contain [PAD] [UNK] [CLS] [SEP] [MASK].
      do_lower_case: bool; True for uncased vocabs.
      check_case: bool; run `check_vocab_case` (disable only for hand-made test vocabs).
      max_input_chars_per_word: int; longer words become [UNK].

    Raises:
      ValueError: bad vocab file, missing special token, or casing mismatch.

    `tokenize_batch` runs HF's Rust code on several threads (HF's own pool; set TOKENIZERS_PARALLELISM=false
    in processes that fork after first use). Texts containing a character on which HF and the reference
    disagree are handled by the reference `BasicTokenizer` and HF WordPiece, so the output always equals
    `FullTokenizer`'s.
    """

    def __init__(self, vocab_file, do_lower_case=True, check_case=True, max_input_chars_per_word=100):
        from tokenizers import Tokenizer

        self.vocab_file = os.fspath(vocab_file)
        self.vocab = load_vocab(vocab_file)
        self.special_ids = special_token_ids(self.vocab, vocab_file)
        if check_case:
            check_vocab_case(self.vocab, do_lower_case, vocab_file)
        self.inv_vocab = {i: t for t, i in self.vocab.items()}
        self.vocab_size = len(self.vocab)
        self.do_lower_case = bool(do_lower_case)
        self.max_input_chars_per_word = int(max_input_chars_per_word)

        self._fast = Tokenizer(self._wordpiece())
        self._fast.normalizer = hf_normalizer(self.do_lower_case)
        self._fast.pre_tokenizer = hf_pre_tokenizer()
        self._basic = BasicTokenizer(self.do_lower_case)
        self._char_ok = {}  # non-ASCII char -> whether HF's normalizer agrees with the reference on it
        self._words_lock = threading.Lock()  # Dask workers may run several blocks on threads of one process
        self._reset_word_cache()

    def _wordpiece(self):
        from tokenizers import models

        return models.WordPiece(self.vocab, unk_token="[UNK]", max_input_chars_per_word=self.max_input_chars_per_word)

    @functools.cached_property
    def _pieces_only(self):
        """WordPiece only, fed with words from the reference basic tokenizer (the exact path); built on first
        use, since most corpora never need it and building it costs ~60 ms of every start-up."""
        from tokenizers import Tokenizer

        return Tokenizer(self._wordpiece())

    def tokenize(self, text):
        """str -> list[str] of WordPiece tokens (no [CLS]/[SEP])."""
        return self.tokenize_batch([text])[0]

    def tokenize_batch(self, texts):
        """Tokenize many texts at once (one call into HF for the whole list).

        Args:
          texts: list[str].

        Returns:
          list[list[str]], one token list per text, equal to `FullTokenizer.tokenize` of each.

        Raises:
          ValueError: an element is not a str.
        """
        inv = self.inv_vocab
        return [[inv[i] for i in ids] for ids in self._ids_batch(texts, "tokenize_batch")]

    def _ids_batch(self, texts, caller):
        """`tokenize_batch` as token ids (list[list[int]]): HF for texts whose characters HF handles like the
        reference, the reference basic tokenizer + HF WordPiece for the others. Raises ValueError naming
        `caller` for an element that is not a str."""
        texts = list(texts)
        exact = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"{caller}: item {i} is {type(text).__name__}, expected str")
            if not text.isascii() and not self._hf_agrees_on(text):
                exact.append(i)
        if not exact:
            return self._encode(self._fast, texts, False)
        exact_set = set(exact)
        fast_idx = [i for i in range(len(texts)) if i not in exact_set]
        out = [None] * len(texts)
        for i, ids in zip(fast_idx, self._encode(self._fast, [texts[i] for i in fast_idx], False)):
            out[i] = ids
        words = [self._basic.tokenize(texts[i]) for i in exact]
        for i, ids in zip(exact, self._encode(self._pieces_only, words, True)):
            out[i] = ids
        return out

    def encode_ids_batch(self, texts):
        """Token ids of many texts, through a cache of whitespace-separated word -> WordPiece ids.

        Google's tokenization is word-local once the text is cleaned: cleaning is per character, and every
        later step (CJK spacing, case, accents, punctuation, WordPiece) works inside one whitespace-separated
        word. So a text's tokens are the concatenation of its words' tokens, and each distinct word needs
        tokenizing only once (by `tokenize_batch`, hence exactly `FullTokenizer`'s tokens). Natural text
        repeats its words (Zipf), so after the first few hundred KB almost every word is a cache hit, and the
        work left is C-level: `str.translate` (cleaning), `str.split`, a dict look-up per word, numpy gathers.
        Measured 8x faster than `tokenize_batch` on Wikipedia text (see benchmarks/bench_preprocess.py).
        The cache lives as long as the tokenizer, is cleared beyond `_WORD_CACHE_LIMIT` words, and never
        changes a result.

        Args:
          texts: list[str].

        Returns:
          (ids int32 [T], lengths int64 [len(texts)]): all texts' token ids concatenated, and how many
          belong to each text; equal to `convert_tokens_to_ids(tokenize(t))` per text.

        Raises:
          ValueError: an element is not a str.
        """
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"encode_ids_batch: item {i} is {type(text).__name__}, expected str")
        words = [(text if text.isascii() and not _ASCII_DROPPED.search(text)
                  else text.translate(_CLEAN_TABLE)).split() for text in texts]
        n_words = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        with self._words_lock:
            if len(self._word_index) > _WORD_CACHE_LIMIT:
                self._reset_word_cache()
            index = self._word_index
            types = np.fromiter(map(index.__getitem__, itertools.chain.from_iterable(words)), dtype=np.int64,
                                count=int(n_words.sum()))
            if index.new_words:
                try:
                    self._add_words(index.new_words)
                except BaseException:
                    self._reset_word_cache()  # indexed words without ids would poison later batches
                    raise
                index.new_words.clear()
            starts, word_len, pieces = self._word_start[types], self._word_len[types], self._word_pieces
        token_end = np.cumsum(word_len)
        total = int(token_end[-1]) if len(token_end) else 0
        ids = pieces[np.repeat(starts - (token_end - word_len), word_len) + np.arange(total)]
        text_end = np.concatenate([[0], token_end])[np.cumsum(n_words)]
        lengths = np.diff(text_end, prepend=0).astype(np.int64)
        return ids, lengths

    def _reset_word_cache(self):
        self._word_index = _WordIndex()
        self._word_start = np.zeros(0, dtype=np.int64)
        self._word_len = np.zeros(0, dtype=np.int64)
        self._word_pieces = np.zeros(0, dtype=np.int32)

    def _add_words(self, words):
        """Tokenize words new to the cache and append their ids, in index order.

        Words HF handles like the reference are encoded `_WORDS_PER_TEXT` to a text (joined by spaces) and
        told apart by the tokens' character offsets: about 2x faster than one HF text per word, whose
        per-text overhead dominates for single words. The others go through `_ids_batch` one by one.
        """
        is_exact = np.fromiter((not w.isascii() and not self._hf_agrees_on(w) for w in words), dtype=bool,
                               count=len(words))
        lengths = np.zeros(len(words), dtype=np.int64)
        starts = np.zeros(len(words), dtype=np.int64)
        chunks, base = [], len(self._word_pieces)  # ids appended to the store, in the order of `chunks`
        fast = np.flatnonzero(~is_exact)
        groups = [fast[g:g + _WORDS_PER_TEXT] for g in range(0, len(fast), _WORDS_PER_TEXT)]
        texts = [" ".join([words[i] for i in group]) for group in groups]
        for group, enc in zip(groups, self._fast.encode_batch(texts, add_special_tokens=False) if texts else []):
            word_len = np.fromiter((len(words[i]) for i in group), dtype=np.int64, count=len(group))
            word_start = np.cumsum(word_len + 1) - word_len - 1  # char offset of each word in the text
            ids = np.asarray(enc.ids, dtype=np.int32)
            tok_start = np.fromiter((o[0] for o in enc.offsets), dtype=np.int64, count=len(ids))
            # Tokens come out in text order, so each word's ids are a run: its first one is at the count of
            # tokens owned by the words before it.
            counts = np.bincount(np.searchsorted(word_start, tok_start, side="right") - 1, minlength=len(group))
            lengths[group] = counts
            starts[group] = base + np.cumsum(counts) - counts
            chunks.append(ids)
            base += len(ids)
        exact = np.flatnonzero(is_exact)
        for i, ids in zip(exact, self._ids_batch([words[i] for i in exact], "encode_ids_batch")):
            lengths[i], starts[i] = len(ids), base
            chunks.append(np.asarray(ids, dtype=np.int32))
            base += len(ids)
        self._word_start = np.concatenate([self._word_start, starts])
        self._word_len = np.concatenate([self._word_len, lengths])
        self._word_pieces = np.concatenate([self._word_pieces, *chunks])

    def _encode(self, tok, batch, pretokenized):
        if not batch:
            return []
        # `encode_batch_fast` skips the offset bookkeeping we never use, but it leaves `Encoding.tokens`
        # blank, so callers map ids back themselves; measured 1.8x faster than `encode_batch(...).tokens`.
        encodings = tok.encode_batch_fast(batch, is_pretokenized=pretokenized, add_special_tokens=False)
        return [enc.ids for enc in encodings]

    def _hf_agrees_on(self, text):
        """True if every non-ASCII char of `text` is one where HF's normalizer matches the reference."""
        ok = self._char_ok
        for ch in set(text):
            verdict = ok.get(ch)
            if verdict is None:
                verdict = ok[ch] = ch.isascii() or self._probe(ch)
            if not verdict:
                return False
        return True

    def _probe(self, ch):
        samples = [ctx.format(c=ch) for ctx in _PROBE_CONTEXTS]
        hf = self._fast.normalizer.normalize_str
        split = self._fast.pre_tokenizer.pre_tokenize_str
        return all([w for w, _ in split(hf(s))] == self._basic.tokenize(s) for s in samples)

    def convert_tokens_to_ids(self, tokens):
        """list[str] -> list[int]; raises ValueError on a token not in the vocab."""
        return _lookup(self.vocab, tokens, "token")

    def convert_ids_to_tokens(self, ids):
        """list[int] -> list[str]; raises ValueError on an id outside the vocab."""
        return _lookup(self.inv_vocab, ids, "id")
