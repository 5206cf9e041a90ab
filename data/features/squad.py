"""SQuAD examples, windowed features, the feature cache and the batch iterator.

Owns: reading SQuAD v1.1 / v2.0 JSON into `SquadExample`s, turning them into fixed-length model windows
(`SquadFeatures`, numpy arrays), caching those on disk, and yielding numpy feed dicts.
Does not own: the model, the loss, turning logits back into answers (`tasks.squad_postprocess`) or scoring
(`tasks.squad_metrics`). No Paddle here.

Semantics are Google BERT's `run_squad.py`, reimplemented from the algorithm:
  * contexts are split on whitespace (space, tab, CR, LF and U+202F) into `doc_tokens`;
  * each doc token is WordPiece-tokenized on its own, the question is truncated to `max_query_length`
    sub-tokens, and the answer span is tightened to the sub-tokens of the answer text;
  * the document is cut into windows of `max_seq_length - len(query) - 3` sub-tokens, each starting
    `min(window length, doc_stride)` after the previous one; a token "belongs" to the window where it has
    the most context (min(left, right) + 0.01 * window length; the first window wins ties);
  * a window is `[CLS] query [SEP] doc [SEP]` plus zero padding; segment ids are 1 from the doc to the
    last [SEP]; training targets are 0/0 ([CLS]) when the answer is not fully inside the window or the
    question is impossible; unique ids count up from 1000000000 over all windows.
Speed comes from tokenizing every distinct word and question once (batched, fast tokenizer) and building
each example's windows with numpy; the results equal the per-token Python original (see
benchmarks/bench_squad.py, which checks this on the dev set).

Answer check when training (our documented rule, stricter than Google's silent skip):
  1. `answer_start` outside the context, or an empty answer text -> ValueError naming the question id;
  2. Google's test passes (the whitespace-normalised answer occurs inside the words covered by the
     character span) -> the example is kept, exactly as Google keeps it;
  3. otherwise, if the context at `answer_start` equals the answer after Unicode NFKC normalisation and
     whitespace collapsing (e.g. a no-break space inside the answer), the example is skipped and counted,
     with a warning, as Google skips it;
  4. anything else is a clearly wrong answer -> ValueError naming the question id.
"""
import hashlib
import json
import logging
import os
import pickle
import unicodedata
from dataclasses import dataclass, fields
from typing import Optional

import numpy as np

from utils.checks import is_int
from utils.fs import atomic_write_bytes, sha256_file
from utils.logger import progress

logger = logging.getLogger(__name__)

UNIQUE_ID_BASE = 1000000000
CACHE_FORMAT_VERSION = 1
PREDICT_ONLY_KEYS = ("unique_ids",)  # present in prediction batches, not a model feed


@dataclass(frozen=True)
class SquadExample:
    """One question about one context.

    doc_tokens is the context split on whitespace (a tuple shared by all questions of a paragraph).
    start_position / end_position are word indexes into doc_tokens (training only; -1 when impossible,
    None when not training); orig_answer_text is the answer as written ("" when impossible).
    """
    qas_id: str
    question_text: str
    doc_tokens: tuple
    orig_answer_text: Optional[str] = None
    start_position: Optional[int] = None
    end_position: Optional[int] = None
    is_impossible: bool = False


@dataclass(frozen=True)
class FeatureParams:
    """The three lengths that shape the windows (Google's defaults)."""
    max_seq_length: int = 384
    doc_stride: int = 128
    max_query_length: int = 64

    def __post_init__(self):
        for name in ("max_seq_length", "doc_stride", "max_query_length"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.max_seq_length <= self.max_query_length + 3:
            raise ValueError(
                f"max_seq_length ({self.max_seq_length}) must be greater than max_query_length + 3 "
                f"({self.max_query_length + 3}) so every window has room for document tokens; "
                "raise max_seq_length or lower max_query_length")


@dataclass(frozen=True, eq=False)
class SquadFeatures:
    """All windows of a set of examples, one row per window (N rows, L = max_seq_length).

    Fields:
      unique_ids: int64 [N], 1000000000, 1000000001, ... in row order.
      example_index: int32 [N], index of the row's example in the example list.
      doc_span_index: int32 [N], window number within its example.
      input_ids: int32 [N, L], `[CLS] query [SEP] doc [SEP]` then 0 padding.
      token_type_ids: int8 [N, L], 1 from the first doc token to the last [SEP], else 0.
      seq_lengths: int32 [N], real tokens per row (the input mask is `arange(L) < seq_lengths`).
      token_to_orig: int32 [N, L], word index in `doc_tokens` for doc positions, -1 elsewhere.
      token_is_max_context: bool [N, L], True where this window is the token's best-context window.
      start_positions, end_positions: int32 [N], training targets (0 = [CLS]; all 0 when not training).
      is_impossible: bool [N], the example has no answer (training v2 only).
      id_to_token: tuple of str, the vocabulary in id order (to turn input_ids back into WordPieces).
    """
    unique_ids: np.ndarray
    example_index: np.ndarray
    doc_span_index: np.ndarray
    input_ids: np.ndarray
    token_type_ids: np.ndarray
    seq_lengths: np.ndarray
    token_to_orig: np.ndarray
    token_is_max_context: np.ndarray
    start_positions: np.ndarray
    end_positions: np.ndarray
    is_impossible: np.ndarray
    id_to_token: tuple

    def __len__(self):
        return int(self.unique_ids.shape[0])

    def __repr__(self):
        return f"SquadFeatures({len(self)} windows x {self.max_seq_length} tokens)"

    @property
    def max_seq_length(self):
        return int(self.input_ids.shape[1])

    def input_mask(self):
        """int64 [N, L]: 1 for real tokens, 0 for padding."""
        return (np.arange(self.max_seq_length)[None, :] < self.seq_lengths[:, None]).astype(np.int64)

    def tokens(self, row):
        """The WordPiece strings of row `row` without padding, e.g. ['[CLS]', 'who', ..., '[SEP]']."""
        return [self.id_to_token[i] for i in self.input_ids[row, :self.seq_lengths[row]]]


# ----------------------------------------------------------------------------------------------- reading
def _is_whitespace(c):
    # Google's rule: U+202F (narrow no-break space) splits words, other Unicode spaces do not.
    return c in " \t\r\n" or ord(c) == 0x202F


def split_on_whitespace(text):
    """Split a context into words.

    Args:
      text: str, the context.

    Returns:
      (doc_tokens tuple of str, char_to_word_offset list of int with len(text) entries): the word each
      character belongs to; whitespace maps to the previous word (-1 before the first word).
    """
    doc_tokens, char_to_word, prev_ws = [], [], True
    for c in text:
        if _is_whitespace(c):
            prev_ws = True
        else:
            if prev_ws:
                doc_tokens.append(c)
            else:
                doc_tokens[-1] += c
            prev_ws = False
        char_to_word.append(len(doc_tokens) - 1)
    return tuple(doc_tokens), char_to_word


def _get(obj, key, typ, path, where):
    if not isinstance(obj, dict) or key not in obj:
        raise ValueError(f"{path}: {where} has no '{key}' field (not a SQuAD file?)")
    value = obj[key]
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ValueError(f"{path}: {where}: '{key}' should be {typ.__name__}, got {type(value).__name__}")
    return value


def _load_json(path):
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path}: the file is empty (no questions)")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid UTF-8 JSON ({e})") from None
    return _get(data, "data", list, path, "top level")


def _normalise(text):
    return " ".join(unicodedata.normalize("NFKC", text).split())


def _answer_words(context, doc_tokens, char_to_word, text, start, where):
    """(start_word, end_word) of a training answer, or None to skip it (rule in the module docstring)."""
    if not text:
        raise ValueError(f"{where}: empty answer text")
    end = start + len(text) - 1
    if start < 0 or end >= len(context):
        raise ValueError(f"{where}: answer_start {start} + len({text!r}) falls outside the context "
                         f"({len(context)} characters)")
    start_word, end_word = char_to_word[start], char_to_word[end]
    if start_word >= 0:
        covered = " ".join(doc_tokens[start_word:end_word + 1])
        if covered.find(" ".join(text.split())) != -1:
            return start_word, end_word
    found = context[start:end + 1]
    if _normalise(found) == _normalise(text):
        logger.warning("%s: answer %r differs from the whitespace-split context %r; skipped (as Google)",
                       where, text, found)
        return None
    raise ValueError(f"{where}: answer text {text!r} is not at answer_start {start} "
                     f"(the context there reads {found!r})")


def _make_example(qa, doc_tokens, char_to_word, context, is_training, v2, path):
    qas_id = _get(qa, "id", str, path, "a question")
    where = f"{path}: question {qas_id}"
    question = _get(qa, "question", str, path, f"question {qas_id}")
    if not is_training:
        return SquadExample(qas_id, question, doc_tokens)
    impossible = _get(qa, "is_impossible", bool, path, f"question {qas_id}") if v2 else False
    answers = _get(qa, "answers", list, path, f"question {qas_id}")
    if impossible:
        return SquadExample(qas_id, question, doc_tokens, "", -1, -1, True)
    if len(answers) != 1:
        raise ValueError(f"{where}: training needs exactly 1 answer, found {len(answers)}")
    text = _get(answers[0], "text", str, path, f"question {qas_id} answer")
    start = _get(answers[0], "answer_start", int, path, f"question {qas_id} answer")
    words = _answer_words(context, doc_tokens, char_to_word, text, start, where)
    if words is None:
        return None
    return SquadExample(qas_id, question, doc_tokens, text, words[0], words[1], False)


def read_examples(path, is_training, version_2_with_negative=False):
    """Read a SQuAD JSON file.

    Args:
      path: str, SQuAD v1.1 or v2.0 JSON ({"data": [{"paragraphs": [{"context", "qas"}]}]}).
      is_training: bool; if True, read and check the answers (exactly one per answerable question).
      version_2_with_negative: bool; if True (and training), read `is_impossible`.

    Returns:
      list of SquadExample in file order.

    Raises:
      ValueError: malformed JSON, a missing/mistyped field, a duplicate question id, no questions, or
        (training) a clearly wrong answer; the message names the file and the question id.
    """
    examples, seen, skipped = [], set(), 0
    for a, article in enumerate(_load_json(path)):
        for p, paragraph in enumerate(_get(article, "paragraphs", list, path, f"article {a}")):
            where = f"article {a} paragraph {p}"
            context = _get(paragraph, "context", str, path, where)
            doc_tokens, char_to_word = split_on_whitespace(context)
            for qa in _get(paragraph, "qas", list, path, where):
                example = _make_example(qa, doc_tokens, char_to_word, context, is_training,
                                        version_2_with_negative, path)
                qas_id = qa["id"]
                if qas_id in seen:
                    raise ValueError(f"{path}: question id {qas_id} appears twice")
                seen.add(qas_id)
                if example is None:
                    skipped += 1
                else:
                    examples.append(example)
    if not examples:
        raise ValueError(f"{path}: no usable questions (found {len(seen)}, skipped {skipped})")
    if skipped:
        logger.warning("%s: skipped %d of %d questions whose answer text does not match the "
                       "whitespace-split context", path, skipped, len(seen))
    logger.info("%s: read %d questions", path, len(examples))
    return examples


# ------------------------------------------------------------------------------------- windowing helpers
def doc_spans(num_doc_tokens, max_tokens_for_doc, doc_stride):
    """Google's sliding windows over a document.

    Args:
      num_doc_tokens: int, sub-tokens in the document.
      max_tokens_for_doc: int >= 1, room for document tokens in one window.
      doc_stride: int >= 1, preferred distance between window starts.

    Returns:
      list of (start, length) tuples; empty for an empty document. The last window ends at the end.
    """
    spans, start = [], 0
    while start < num_doc_tokens:
        length = min(num_doc_tokens - start, max_tokens_for_doc)
        spans.append((start, length))
        if start + length == num_doc_tokens:
            break
        start += min(length, doc_stride)
    return spans


def max_context_owner(spans, num_doc_tokens):
    """For each doc sub-token, the window where it has the most context (Google's `_check_is_max_context`).

    A token's score in a window covering it is min(tokens left of it, tokens right of it) + 0.01 * the
    window's length. Windows are visited in order and a token moves only to a strictly better score, so the
    first window wins ties, as in Google's loop. Time and memory are linear in the windows' total length (the
    size of the features themselves), not tokens x windows: a dense [tokens, windows] score matrix grows with
    the square of the document (a 1 MB context asked for 3 GiB).

    Args:
      spans: list of (start, length) from `doc_spans` (any order of overlapping windows works).
      num_doc_tokens: int.

    Returns:
      int64 [num_doc_tokens], window index; 0 for a token no window covers.
    """
    owner = np.zeros(num_doc_tokens, np.int64)
    best = np.full(num_doc_tokens, -np.inf)
    for k, (start, length) in enumerate(spans):
        pos = np.arange(start, start + length, dtype=np.int64)
        score = np.minimum(pos - start, start + length - 1 - pos) + 0.01 * length
        better = score > best[start:start + length]
        best[start:start + length][better] = score[better]
        owner[start:start + length][better] = k
    return owner


def improve_answer_span(doc_tokens, start, end, answer_tokens):
    """Tighten (start, end) to the smallest sub-span whose WordPieces equal the answer's (Google's rule).

    Args:
      doc_tokens: sequence of str, the document's WordPieces.
      start, end: int, inclusive sub-token span from the word-level answer.
      answer_tokens: list of str, the tokenized answer text.

    Returns:
      (start, end), unchanged when no sub-span matches exactly.
    """
    target = " ".join(answer_tokens)
    for new_start in range(start, end + 1):
        for new_end in range(end, new_start - 1, -1):
            if " ".join(doc_tokens[new_start:new_end + 1]) == target:
                return new_start, new_end
    return start, end


# ---------------------------------------------------------------------------------------- feature build
class _WordPieces:
    """WordPieces and ids of every distinct word and question, tokenized once in batches."""

    def __init__(self, tokenizer, examples, max_query_length):
        words = sorted({w for doc in {id(e.doc_tokens): e.doc_tokens for e in examples}.values() for w in doc})
        self.words = self._encode(tokenizer, words)
        self._last_doc, self._last = None, None
        questions = sorted({e.question_text for e in examples})
        self.questions = {q: (ids[:max_query_length])
                          for q, (_, ids) in self._encode(tokenizer, questions).items()}

    @staticmethod
    def _encode(tokenizer, texts):
        batch = getattr(tokenizer, "tokenize_batch", None)  # the pure-Python reference has none
        pieces = (batch(texts) if batch else [tokenizer.tokenize(t) for t in texts]) if texts else []
        return {t: (list(p), np.asarray(tokenizer.convert_tokens_to_ids(p), dtype=np.int32))
                for t, p in zip(texts, pieces)}

    def document(self, doc_tokens):
        """(sub-token strings, int32 ids [T], tok_to_orig int64 [T], orig_to_tok int64 [W])."""
        if doc_tokens is not self._last_doc:  # questions of one paragraph share its tuple and arrive together
            self._last_doc, self._last = doc_tokens, self._document(doc_tokens)
        return self._last

    def _document(self, doc_tokens):
        entries = [self.words[w] for w in doc_tokens]
        counts = np.fromiter((len(p) for p, _ in entries), dtype=np.int64, count=len(entries))
        ids = np.concatenate([i for _, i in entries]) if entries else np.zeros(0, np.int32)
        tok_to_orig = np.repeat(np.arange(len(entries), dtype=np.int64), counts)
        orig_to_tok = np.cumsum(counts) - counts
        return [t for p, _ in entries for t in p], ids, tok_to_orig, orig_to_tok


def _answer_subtokens(example, sub_tokens, orig_to_tok, tokenizer):
    """Inclusive sub-token span of a training answer (-1, -1 when impossible)."""
    if example.is_impossible:
        return -1, -1
    start = int(orig_to_tok[example.start_position])
    if example.end_position < len(example.doc_tokens) - 1:
        end = int(orig_to_tok[example.end_position + 1]) - 1
    else:
        end = len(sub_tokens) - 1
    return improve_answer_span(sub_tokens, start, end, tokenizer.tokenize(example.orig_answer_text))


def _window_targets(span, answer, offset, impossible):
    """(start, end) row positions of the answer in one window, 0/0 when absent or impossible."""
    span_start, length = span
    if impossible or not (answer[0] >= span_start and answer[1] <= span_start + length - 1):
        return 0, 0
    return answer[0] - span_start + offset, answer[1] - span_start + offset


def _example_windows(example, q_ids, doc, answer, special, max_seq_length, doc_stride):
    """Arrays for one example's windows (dict of [n, ...] arrays); None when the document is empty."""
    _, ids, tok_to_orig, _ = doc
    spans = doc_spans(len(ids), max_seq_length - len(q_ids) - 3, doc_stride)
    if not spans:
        return None
    cls_id, sep_id = special
    n, q, offset = len(spans), len(q_ids), len(q_ids) + 2
    out = {"input_ids": np.zeros((n, max_seq_length), np.int32),
           "token_type_ids": np.zeros((n, max_seq_length), np.int8),
           "token_to_orig": np.full((n, max_seq_length), -1, np.int32),
           "token_is_max_context": np.zeros((n, max_seq_length), bool),
           "seq_lengths": np.zeros(n, np.int32), "start_positions": np.zeros(n, np.int32),
           "end_positions": np.zeros(n, np.int32), "doc_span_index": np.arange(n, dtype=np.int32)}
    out["input_ids"][:, 0], out["input_ids"][:, 1:q + 1], out["input_ids"][:, q + 1] = cls_id, q_ids, sep_id
    owner = max_context_owner(spans, len(ids))
    for k, (start, length) in enumerate(spans):
        doc_cols = slice(offset, offset + length)
        out["input_ids"][k, doc_cols] = ids[start:start + length]
        out["input_ids"][k, offset + length] = sep_id
        out["token_type_ids"][k, offset:offset + length + 1] = 1
        out["token_to_orig"][k, doc_cols] = tok_to_orig[start:start + length]
        out["token_is_max_context"][k, doc_cols] = owner[start:start + length] == k
        out["seq_lengths"][k] = offset + length + 1
        if answer is not None:
            out["start_positions"][k], out["end_positions"][k] = _window_targets(
                (start, length), answer, offset, example.is_impossible)
    return out


def _special_ids(tokenizer):
    try:
        return tuple(int(i) for i in tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]"]))
    except (KeyError, ValueError) as e:
        raise ValueError(f"SQuAD windows need [CLS] and [SEP] in the vocabulary: {e}") from None


def _id_to_token(tokenizer):
    vocab = tokenizer.vocab
    table = [""] * (max(vocab.values()) + 1)
    for token, i in vocab.items():
        table[i] = token
    return tuple(table)


def examples_to_features(examples, tokenizer, max_seq_length=384, doc_stride=128, max_query_length=64, *,
                         is_training):
    """Turn examples into fixed-length windows (Google `convert_examples_to_features` semantics).

    Args:
      examples: list of SquadExample (from `read_examples` with the same `is_training`).
      tokenizer: object with `tokenize(str)`, `convert_tokens_to_ids`, `vocab` (dict token -> id) and
        optionally `tokenize_batch(list of str)`; `tokenizer.BertTokenizer` or `FullTokenizer`.
      max_seq_length, doc_stride, max_query_length: int window shape, see `FeatureParams`.
      is_training: bool; if True, compute start/end targets (examples must carry answer positions).

    Returns:
      SquadFeatures with one row per window, rows grouped by example in example order.

    Raises:
      ValueError: bad lengths, no examples, a training example without answer positions, or a vocabulary
        without [CLS]/[SEP].
    """
    params = FeatureParams(max_seq_length, doc_stride, max_query_length)
    if not examples:
        raise ValueError("examples_to_features: no examples")
    if is_training and any(e.start_position is None for e in examples):
        raise ValueError("examples_to_features: is_training=True needs examples read with is_training=True")
    special, pieces = _special_ids(tokenizer), _WordPieces(tokenizer, examples, max_query_length)
    blocks, empty = [], 0
    for index, example in enumerate(progress(examples, desc="SQuAD features", unit="ex")):
        doc = pieces.document(example.doc_tokens)
        answer = _answer_subtokens(example, doc[0], doc[3], tokenizer) if is_training else None
        block = _example_windows(example, pieces.questions[example.question_text], doc, answer, special,
                                 params.max_seq_length, params.doc_stride)
        if block is None:
            empty += 1
            continue
        n = len(block["seq_lengths"])
        block["example_index"] = np.full(n, index, np.int32)
        block["is_impossible"] = np.full(n, bool(is_training and example.is_impossible))
        blocks.append(block)
    if empty:
        logger.warning("%d examples have an empty context and produce no windows", empty)
    return _stack(blocks, params.max_seq_length, _id_to_token(tokenizer))


_ROW_FIELDS = {"example_index": np.int32, "doc_span_index": np.int32, "input_ids": np.int32,
               "token_type_ids": np.int8, "seq_lengths": np.int32, "token_to_orig": np.int32,
               "token_is_max_context": bool, "start_positions": np.int32, "end_positions": np.int32,
               "is_impossible": bool}


def _stack(blocks, max_seq_length, id_to_token):
    arrays = {}
    for name, dtype in _ROW_FIELDS.items():
        shape = (0, max_seq_length) if name in ("input_ids", "token_type_ids", "token_to_orig",
                                                "token_is_max_context") else (0,)
        arrays[name] = (np.concatenate([b[name] for b in blocks]) if blocks else np.zeros(shape, dtype))
    total = len(arrays["seq_lengths"])
    arrays["unique_ids"] = UNIQUE_ID_BASE + np.arange(total, dtype=np.int64)
    return SquadFeatures(id_to_token=id_to_token, **arrays)


# ------------------------------------------------------------------------------------------------ cache
def cache_key(path, vocab_file, do_lower_case, params, is_training, version_2_with_negative):
    """The dict that identifies a feature cache entry: content hashes of both files plus every setting."""
    return {"format": CACHE_FORMAT_VERSION, "input_sha256": sha256_file(path),
            "vocab_sha256": sha256_file(vocab_file),
            "do_lower_case": bool(do_lower_case), "max_seq_length": params.max_seq_length,
            "doc_stride": params.doc_stride, "max_query_length": params.max_query_length,
            "is_training": bool(is_training), "version_2_with_negative": bool(version_2_with_negative)}


def _cache_file(cache_dir, path, key):
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return os.path.join(cache_dir, f"squad-{os.path.basename(path)}-{digest}.pkl")


def _read_cache(cache_file, key):
    try:
        with open(cache_file, "rb") as f:
            payload = pickle.load(f)
    except FileNotFoundError:
        return None
    except Exception as e:  # a foreign or damaged file: rebuilding is always correct, so say so and go on
        logger.warning("feature cache %s is unreadable (%s); rebuilding it", cache_file, e)
        return None
    if payload.get("key") != key:
        logger.warning("feature cache %s belongs to other settings; rebuilding it", cache_file)
        return None
    examples = [SquadExample(*values) for values in payload["examples"]]
    return examples, SquadFeatures(**payload["features"])


def _write_cache(cache_file, key, examples, features):
    payload = {"key": key,
               "examples": [tuple(getattr(e, f.name) for f in fields(SquadExample)) for e in examples],
               "features": {f.name: getattr(features, f.name) for f in fields(SquadFeatures)}}
    atomic_write_bytes(cache_file, pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))


def load_or_build_features(path, vocab_file, do_lower_case, params, cache_dir=None, *, is_training,
                           version_2_with_negative=False):
    """Examples and features for a SQuAD file, from the cache when the inputs and settings are unchanged.

    Args:
      path: str, SQuAD JSON.
      vocab_file: str, WordPiece vocabulary (one token per line); the fast `tokenizer.BertTokenizer` is
        built from it.
      do_lower_case: bool.
      params: FeatureParams.
      cache_dir: str or None; None disables caching. Entries are keyed by the SHA-256 of `path` and
        `vocab_file`, do_lower_case, the three lengths, is_training and version_2_with_negative, and are
        written atomically, so a stale or half-written cache is never used.
      is_training, version_2_with_negative: bool, as in `read_examples`.

    Returns:
      (list of SquadExample, SquadFeatures).

    Raises:
      ValueError: a missing input file, bad params, or as `read_examples` / `examples_to_features`.
    """
    if not isinstance(params, FeatureParams):
        raise ValueError(f"params must be a FeatureParams, got {type(params).__name__}")
    for name, file in (("SQuAD file", path), ("vocab file", vocab_file)):
        if not os.path.isfile(file):
            raise ValueError(f"{name} '{file}' does not exist or is not a file")
    cache_file = None
    if cache_dir is not None:
        key = cache_key(path, vocab_file, do_lower_case, params, is_training, version_2_with_negative)
        cache_file = _cache_file(cache_dir, path, key)
        cached = _read_cache(cache_file, key)
        if cached is not None:
            logger.info("feature cache hit: %s (%d windows)", cache_file, len(cached[1]))
            return cached
        logger.info("feature cache miss: building %s", cache_file)
    from tokenizer import BertTokenizer  # imported here so reading examples does not need the tokenizer

    tokenizer = BertTokenizer(vocab_file, do_lower_case=do_lower_case)
    examples = read_examples(path, is_training, version_2_with_negative)
    features = examples_to_features(examples, tokenizer, params.max_seq_length, params.doc_stride,
                                    params.max_query_length, is_training=is_training)
    logger.info("%s: %d questions -> %d windows", path, len(examples), len(features))
    if cache_file is not None:
        _write_cache(cache_file, key, examples, features)
    return examples, features


# ---------------------------------------------------------------------------------------------- batches
def num_batches(num_features, batch_size, drop_last=False):
    """Batches per pass over `num_features` rows (for step counts and LR schedules)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return num_features // batch_size if drop_last else -(-num_features // batch_size)


def iterate_batches(features, batch_size, *, is_training, shuffle=False, rng=None, drop_last=False):
    """Numpy feed dicts over the windows (arguments are checked when called, not at the first batch).

    Args:
      features: SquadFeatures.
      batch_size: int >= 1.
      is_training: bool; training batches carry start/end targets, prediction batches carry unique ids.
      shuffle: bool; if True, visit rows in `rng.permutation` order (one pass).
      rng: numpy.random.Generator, required when shuffle is True (the caller owns the seed).
      drop_last: bool; if True, drop a final partial batch.

    Returns:
      an iterator of dicts with int64 arrays: input_ids [B, L], token_type_ids [B, L], attention_mask [B, 1, 1, L]
      (1 = attend, 0 = padding); training adds start_positions [B, 1] and end_positions [B, 1];
      prediction adds unique_ids [B] (not a model feed: see PREDICT_ONLY_KEYS; pop it before feeding).

    Raises:
      ValueError: batch_size < 1, or shuffle without an rng.
    """
    total = num_batches(len(features), batch_size, drop_last)
    if shuffle and not isinstance(rng, np.random.Generator):
        raise ValueError("shuffle=True needs rng=numpy.random.Generator (seeded by the caller)")
    order = rng.permutation(len(features)) if shuffle else np.arange(len(features))
    # Checked and shuffled above, at call time; the generator below only slices.
    return _batches(features, order, batch_size, total, is_training)


def _batches(features, order, batch_size, total, is_training):
    for b in range(total):
        yield batch_of_rows(features, order[b * batch_size:(b + 1) * batch_size], is_training=is_training)


def batch_of_rows(features, rows, *, is_training):
    """The feed dict of the windows `rows` (int array of row indices), as `iterate_batches` yields them."""
    positions = np.arange(features.max_seq_length)
    mask = (positions[None, :] < features.seq_lengths[rows][:, None]).astype(np.int64)
    batch = {"input_ids": features.input_ids[rows].astype(np.int64),
             "token_type_ids": features.token_type_ids[rows].astype(np.int64),
             "attention_mask": mask[:, None, None, :]}
    if is_training:
        batch["start_positions"] = features.start_positions[rows].astype(np.int64)[:, None]
        batch["end_positions"] = features.end_positions[rows].astype(np.int64)[:, None]
    else:
        batch["unique_ids"] = features.unique_ids[rows]
    return batch
