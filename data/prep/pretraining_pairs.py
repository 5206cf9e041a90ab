"""Sentence-pair (A, B, is_random_next) construction for BERT pretraining, with Google BERT's semantics.

Owns: text -> sentences (blingfire, offline), sentences -> token ids for a block of documents
(`tokenize_documents`), and `create_instances_from_document`, which follows Google's
`create_instances_from_document` (create_pretraining_data.py):

  * max_num_tokens = max_seq_length - 3 (room for [CLS], [SEP], [SEP]);
  * with probability short_seq_prob the document's target length is uniform in [2, max_num_tokens];
  * consecutive sentences accumulate into a chunk until the target length or the document's end; a random
    split point puts the first `a_end` sentences into A;
  * B is the rest of the chunk, or (always when the chunk is one sentence, else with p=0.5) a run of
    sentences from a random point of ANOTHER document of the same block (`is_random_next`); the chunk's
    unused sentences are then "put back" and start the next chunk;
  * `truncate_seq_pair` removes tokens from the longer side, front or back at random, until
    len(A) + len(B) <= max_num_tokens (same distribution as Google's per-token coin, drawn in bulk).

Two deliberate differences from Google: the random document is drawn uniformly from the OTHER documents
(Google retries 10 times and may fall back to the same document while still labelling it random), and
when a block holds a single document no random B exists, so the chunk takes its actual continuation (or,
for a one-sentence chunk, produces no instance).

Instances are token-offset ranges into the block's flat token array, not token lists: every A and B is a
contiguous run of tokens of one document (a chunk is consecutive sentences and truncation only trims the
ends), so an instance is five integers and a block of hundreds of thousands of instances stays small.

Does not own: masking (`data.masking`), reading files, Dask, or the output format (`data.lddl_format`).
Randomness comes only from the `random.Random` passed in.
"""
import bisect
import dataclasses
import functools
import itertools
from typing import NamedTuple

import blingfire
import numpy as np

# Sentences are tokenized in slices of this many, so one huge block never builds one huge HF batch.
_TOKENIZE_SLICE = 8192


class Instance(NamedTuple):
    """One sentence pair: A = token_ids[a_start:a_end], B = token_ids[b_start:b_end]."""
    a_start: int
    a_end: int
    b_start: int
    b_end: int
    is_random_next: bool


@dataclasses.dataclass(frozen=True)
class TokenizedDocuments:
    """A block of tokenized documents in flat arrays (no empty sentences, no empty documents).

    Attributes:
      token_ids: int32 [T], all tokens of all sentences, in order.
      sentence_offsets: int64 [S + 1]; sentence s is token_ids[sentence_offsets[s]:sentence_offsets[s+1]].
      document_offsets: int64 [D + 1]; document d is sentences document_offsets[d]:document_offsets[d+1].
    """
    token_ids: np.ndarray
    sentence_offsets: np.ndarray
    document_offsets: np.ndarray

    @property
    def num_documents(self):
        return len(self.document_offsets) - 1

    @functools.cached_property
    def _offsets(self):
        # Python ints: the pair loop indexes these millions of times, and numpy scalars are slow there.
        return self.sentence_offsets.tolist(), self.document_offsets.tolist()


def split_sentences(text):
    """Split text into sentences with blingfire (no model download); empty pieces are dropped.

    Args:
      text: str, one document.

    Returns:
      list[str].
    """
    if not text.strip():
        return []
    return [s for s in (p.strip() for p in blingfire.text_to_sentences(text).split("\n")) if s]


def tokenize_documents(documents, tokenize_batch=None, vocab=None, *, encode_ids_batch=None):
    """Tokenize a block of documents into `TokenizedDocuments`.

    Args:
      documents: list[list[str]], each document's sentences.
      tokenize_batch: callable list[str] -> list[list[str]] (e.g. `tokenizer.BertTokenizer.tokenize_batch`);
        used with `vocab` when `encode_ids_batch` is not given.
      vocab: dict token -> id containing every token `tokenize_batch` can return.
      encode_ids_batch: callable list[str] -> (int ids [T], int lengths [len(texts)]), the faster route
        straight to ids (`tokenizer.BertTokenizer.encode_ids_batch`); same result.

    Returns:
      TokenizedDocuments; sentences with no tokens and documents with no sentences left are dropped.

    Raises:
      ValueError: neither `encode_ids_batch` nor both `tokenize_batch` and `vocab` were given.
    """
    sentences = [s for doc in documents for s in doc]
    if encode_ids_batch is not None:
        id_parts, length_parts = [], []
        for i in range(0, len(sentences), _TOKENIZE_SLICE):
            ids, lens = encode_ids_batch(sentences[i:i + _TOKENIZE_SLICE])
            id_parts.append(np.asarray(ids, dtype=np.int32))
            length_parts.append(np.asarray(lens, dtype=np.int64))
        token_ids = np.concatenate(id_parts) if id_parts else np.zeros(0, dtype=np.int32)
        lengths = np.concatenate(length_parts) if length_parts else np.zeros(0, dtype=np.int64)
    elif tokenize_batch is not None and vocab is not None:
        token_lists = []
        for i in range(0, len(sentences), _TOKENIZE_SLICE):
            token_lists.extend(tokenize_batch(sentences[i:i + _TOKENIZE_SLICE]))
        lengths = np.fromiter(map(len, token_lists), dtype=np.int64, count=len(token_lists))
        token_ids = np.fromiter(map(vocab.__getitem__, itertools.chain.from_iterable(token_lists)),
                                dtype=np.int32, count=int(lengths.sum()))
    else:
        raise ValueError("tokenize_documents needs encode_ids_batch, or tokenize_batch together with vocab")
    kept = lengths > 0
    sentence_offsets = np.zeros(int(kept.sum()) + 1, dtype=np.int64)
    np.cumsum(lengths[kept], out=sentence_offsets[1:])
    # Sentences kept per document, then drop documents left without any.
    doc_of_sentence = np.repeat(np.arange(len(documents)), [len(d) for d in documents])
    per_doc = np.bincount(doc_of_sentence[kept], minlength=len(documents))
    per_doc = per_doc[per_doc > 0]
    document_offsets = np.zeros(len(per_doc) + 1, dtype=np.int64)
    np.cumsum(per_doc, out=document_offsets[1:])
    return TokenizedDocuments(token_ids, sentence_offsets, document_offsets)


def randint(rng, a, b):
    """`rng.randint(a, b)` (a <= b), the same draw from the same stream without its argument checks.

    CPython's `randint(a, b)` is `randrange(a, b + 1)`, which is `a + _randbelow(b - a + 1)` once it has
    validated its arguments; the pair loop draws tens of thousands of these per MB of text, and the checks
    cost more than the draw. Equality with `random.Random.randint` is tested (tests/test_pretraining_pairs.py).
    Any other object with a `randint` method (e.g. a scripted stand-in in tests) is asked directly.
    """
    below = getattr(rng, "_randbelow", None)
    return a + below(b - a + 1) if below is not None else rng.randint(a, b)


def choose_target_length(rng, max_num_tokens, short_seq_prob):
    """The document's target length: max_num_tokens, or with p=short_seq_prob uniform in [2, max_num_tokens]."""
    if rng.random() < short_seq_prob:
        return randint(rng, 2, max_num_tokens)
    return max_num_tokens


def truncate_seq_pair(a, b, max_num_tokens, rng):
    """Trim the longer of A and B, one token at a time from the front or back (p=0.5 each), until they fit.

    Which side loses each token depends only on the lengths (always the longer one; B on ties), so the
    counts are computed directly; each side's front/back split is then Binomial(n, 1/2), drawn as the
    number of set bits of n random bits -- the same distribution as Google's coin per token, in O(1)
    Python operations instead of one loop iteration per removed token.

    Args:
      a, b: (start, end) token ranges, each non-empty.
      max_num_tokens: int >= 2, the budget for len(A) + len(B).
      rng: random.Random (uses `getrandbits`).

    Returns:
      ((a_start, a_end), (b_start, b_end)), both still non-empty.
    """
    (a0, a1), (b0, b1) = a, b
    len_a, len_b = a1 - a0, b1 - b0
    excess = len_a + len_b - max_num_tokens
    if excess <= 0:
        return (a0, a1), (b0, b1)
    gap = min(abs(len_a - len_b), excess)  # first the longer side alone, down to equal length
    rest = excess - gap  # then alternately, B first
    cut_a = (gap if len_a > len_b else 0) + rest // 2
    cut_b = (gap if len_b > len_a else 0) + rest - rest // 2
    front_a = bin(rng.getrandbits(cut_a)).count("1")
    front_b = bin(rng.getrandbits(cut_b)).count("1")
    return (a0 + front_a, a1 - (cut_a - front_a)), (b0 + front_b, b1 - (cut_b - front_b))


def _random_b(docs, doc_index, rng, target_b_length):
    """Token range of a run of sentences from a random point of another document, >= target_b_length
    tokens unless that document ends first (at least one sentence)."""
    sent_off, doc_off = docs._offsets
    other = randint(rng, 0, docs.num_documents - 2)
    other += other >= doc_index
    first, stop = doc_off[other], doc_off[other + 1]
    start = first + randint(rng, 0, stop - first - 1)
    # First sentence end at which B reaches the target length (Google adds sentences until it does).
    end = bisect.bisect_left(sent_off, sent_off[start] + target_b_length)  # a scalar: bisect beats numpy 10x
    end = min(max(end, start + 1), stop)
    return sent_off[start], sent_off[end]


def create_instances_from_document(docs, doc_index, rng, max_seq_length, short_seq_prob):
    """All sentence pairs of one document (Google's create_instances_from_document, see module docstring).

    Args:
      docs: TokenizedDocuments, the block; random B's come from its other documents.
      doc_index: int, which document.
      rng: random.Random, the only source of randomness.
      max_seq_length: int >= 5, the length of `[CLS] A [SEP] B [SEP]` never exceeded.
      short_seq_prob: float in [0, 1].

    Returns:
      list[Instance] with 1 <= len(A), 1 <= len(B), len(A) + len(B) <= max_seq_length - 3.
    """
    sent_off, doc_off = docs._offsets
    max_num_tokens = max_seq_length - 3
    target = choose_target_length(rng, max_num_tokens, short_seq_prob)
    stop = doc_off[doc_index + 1]
    instances = []
    chunk_start = i = doc_off[doc_index]
    while i < stop:
        if i == stop - 1 or sent_off[i + 1] - sent_off[chunk_start] >= target:
            n_seg = i + 1 - chunk_start
            a_end = chunk_start + (randint(rng, 1, n_seg - 1) if n_seg >= 2 else 1)
            a = (sent_off[chunk_start], sent_off[a_end])
            is_random = docs.num_documents > 1 and (n_seg == 1 or rng.random() < 0.5)
            if is_random:
                b = _random_b(docs, doc_index, rng, target - (a[1] - a[0]))
                i = a_end - 1  # put the chunk's unused sentences back
            elif n_seg >= 2:
                b = (sent_off[a_end], sent_off[i + 1])
            else:
                b = None  # single-document block, one-sentence chunk: no B exists
            if b is not None:
                (a0, a1), (b0, b1) = truncate_seq_pair(a, b, max_num_tokens, rng)
                instances.append(Instance(a0, a1, b0, b1, is_random))
            chunk_start = i + 1
        i += 1
    return instances


def create_instances(docs, rng, max_seq_length, short_seq_prob):
    """Instances of every document of a block, in document order, as an array.

    Args:
      docs: TokenizedDocuments.
      rng: random.Random.
      max_seq_length, short_seq_prob: see `create_instances_from_document`.

    Returns:
      int64 [N, 5]: columns a_start, a_end, b_start, b_end, is_random_next (0/1).
    """
    rows = []
    for d in range(docs.num_documents):
        rows.extend(create_instances_from_document(docs, d, rng, max_seq_length, short_seq_prob))
    # fromiter over the flattened tuples: 5x faster than np.asarray on a list of NamedTuples.
    flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=5 * len(rows))
    return flat.reshape(-1, 5)
