"""Pair building: Google BERT's create_instances_from_document semantics on hand-made and random blocks."""
import random

import numpy as np
import pytest

from data.prep import pretraining_pairs as pp


class ScriptedRandom:
    """A random.Random stand-in that replays fixed answers, so outcomes can be worked out by hand."""

    def __init__(self, randoms=(), randints=(), bits=()):
        self.randoms, self.randints, self.bits = list(randoms), list(randints), list(bits)
        self.randint_calls, self.bits_calls = [], []

    def random(self):
        return self.randoms.pop(0)

    def randint(self, a, b):
        self.randint_calls.append((a, b))
        value = self.randints.pop(0)
        assert a <= value <= b, (a, b, value)
        return value

    def getrandbits(self, n):
        self.bits_calls.append(n)
        if n == 0:
            return 0
        value = self.bits.pop(0)
        assert 0 <= value < 2**n, (n, value)
        return value


def _block(documents):
    """Whitespace 'tokenizer' over word tokens; the vocab maps each distinct word to an id."""
    words = sorted({w for doc in documents for s in doc for w in s.split()})
    vocab = {w: i for i, w in enumerate(words)}
    docs = pp.tokenize_documents(documents, lambda texts: [t.split() for t in texts], vocab)
    return docs, words


def _words(docs, words, start, end):
    return [words[i] for i in docs.token_ids[start:end]]


def test_split_sentences():
    assert pp.split_sentences("The cat sat. Then it left! Did it?") == ["The cat sat.", "Then it left!", "Did it?"]
    assert pp.split_sentences("   ") == []
    assert pp.split_sentences("") == []


def test_tokenize_documents_drops_empty_sentences_and_documents():
    documents = [["a b", "", "c"], ["   "], [], ["d e f"]]
    docs, words = _block(documents)
    assert words == ["a", "b", "c", "d", "e", "f"]
    assert docs.token_ids.tolist() == [0, 1, 2, 3, 4, 5]
    assert docs.sentence_offsets.tolist() == [0, 2, 3, 6]  # sentences "a b", "c", "d e f"
    assert docs.document_offsets.tolist() == [0, 2, 3]  # two documents survive
    assert docs.num_documents == 2


def test_truncate_seq_pair_by_hand():
    # A has 5 tokens, B 2, budget 4: all 3 cuts fall on A (always the longer side); the bits 0b101 say
    # two of them are taken from the front.
    rng = ScriptedRandom(bits=[0b101])
    assert pp.truncate_seq_pair((0, 5), (10, 12), 4, rng) == ((2, 4), (10, 12))
    assert rng.bits_calls == [3, 0]
    # Equal lengths: Google trims B ("a if len(a) > len(b) else b"); bit 0 -> from the back.
    rng = ScriptedRandom(bits=[0])
    assert pp.truncate_seq_pair((0, 2), (5, 7), 3, rng) == ((0, 2), (5, 6))
    # Already fits: no randomness consumed.
    rng = ScriptedRandom()
    assert pp.truncate_seq_pair((0, 2), (5, 7), 4, rng) == ((0, 2), (5, 7)) and rng.bits_calls == []


def _loop_truncate(len_a, len_b, max_num_tokens, rng):
    """Google's loop, written out: (front_a, back_a, front_b, back_b) removed."""
    cuts = [0, 0, 0, 0]
    while len_a + len_b > max_num_tokens:
        front = rng.random() < 0.5
        if len_a > len_b:
            len_a -= 1
            cuts[0 if front else 1] += 1
        else:
            len_b -= 1
            cuts[2 if front else 3] += 1
    return cuts


def test_truncate_seq_pair_matches_google_loop():
    rng, loop_rng = random.Random(0), random.Random(1)
    fronts, loop_fronts, total_cuts = 0, 0, 0
    for _ in range(3000):
        len_a, len_b, budget = rng.randint(1, 90), rng.randint(1, 90), rng.randint(2, 125)
        (a0, a1), (b0, b1) = pp.truncate_seq_pair((0, len_a), (100, 100 + len_b), budget, rng)
        fa, ba, fb, bb = _loop_truncate(len_a, len_b, budget, loop_rng)
        # Same lengths as Google's loop, exactly; front/back split random with the same distribution.
        assert (a1 - a0, b1 - b0) == (len_a - fa - ba, len_b - fb - bb)
        assert a1 - a0 >= 1 and b1 - b0 >= 1 and (a1 - a0) + (b1 - b0) <= budget
        fronts += a0 + (b0 - 100)
        loop_fronts += fa + fb
        total_cuts += fa + ba + fb + bb
    assert total_cuts > 30000
    assert abs(fronts / total_cuts - 0.5) < 0.01 and abs(loop_fronts / total_cuts - 0.5) < 0.01


def test_actual_next_by_hand():
    # One document, sentences of 2 tokens each; max_seq_length 8 -> max_num_tokens 5, target 5.
    docs, words = _block([["a b", "c d", "e f"]])
    rng = ScriptedRandom(randoms=[0.5],  # short-seq draw: 0.5 >= 0.0 -> keep target 5
                         randints=[1],   # a_end = 1 sentence
                         bits=[0])       # truncation: B (4 tokens) is longer; its one cut from the back
    out = pp.create_instances_from_document(docs, 0, rng, max_seq_length=8, short_seq_prob=0.0)
    assert len(out) == 1
    inst = out[0]
    assert not inst.is_random_next  # single-document block: no coin, actual continuation
    assert _words(docs, words, inst.a_start, inst.a_end) == ["a", "b"]
    assert _words(docs, words, inst.b_start, inst.b_end) == ["c", "d", "e"]
    assert rng.randint_calls == [(1, 2)]


def test_random_next_by_hand():
    # doc 0 is a single long sentence: its chunk has one segment, so B must come from another document.
    docs, words = _block([["a b c d e f"], ["g h", "i j", "k l"], ["m n"]])
    rng = ScriptedRandom(randoms=[0.9],        # no short target: target = 13 - 3 = 10
                         randints=[0,          # other document index among the 2 others -> doc 1
                                   1])         # random start sentence within doc 1 -> "i j"
    out = pp.create_instances_from_document(docs, 0, rng, max_seq_length=13, short_seq_prob=0.1)
    assert len(out) == 1 and out[0].is_random_next
    assert _words(docs, words, out[0].a_start, out[0].a_end) == list("abcdef")
    # target_b_length = 10 - 6 = 4: sentences "i j" + "k l" reach it exactly.
    assert _words(docs, words, out[0].b_start, out[0].b_end) == list("ijkl")
    assert rng.randint_calls == [(0, 1), (0, 2)]


def test_random_document_skips_self():
    docs, words = _block([["a"], ["b"], ["c"]])
    # For document 1 the draw 1 (of 0..1) maps past itself to document 2.
    rng = ScriptedRandom(randoms=[0.9], randints=[1, 0])
    out = pp.create_instances_from_document(docs, 1, rng, max_seq_length=8, short_seq_prob=0.0)
    assert _words(docs, words, out[0].b_start, out[0].b_end) == ["c"]


def test_unused_segments_are_put_back():
    # Chunk of 3 sentences, a_end = 1, random B: sentences 2 and 3 go back and form the next chunk.
    docs, words = _block([["a b c", "d e f", "g h i"], ["x y z"]])
    rng = ScriptedRandom(randoms=[0.9,          # no short target: 9 - 3 = 6; the chunk closes at 6 tokens
                                  0.1,          # coin < 0.5 -> random next
                                  0.6],         # coin for the next chunk >= 0.5 -> actual next
                         randints=[1, 0, 0,     # a_end=1, other doc -> doc 1, start sentence 0
                                   1])          # next chunk ("d e f", "g h i"): a_end = 1
    out = pp.create_instances_from_document(docs, 0, rng, max_seq_length=9, short_seq_prob=0.0)
    assert [(_words(docs, words, i.a_start, i.a_end), _words(docs, words, i.b_start, i.b_end), i.is_random_next)
            for i in out] == [(list("abc"), list("xyz"), True), (list("def"), list("ghi"), False)]


def test_single_document_single_sentence_yields_nothing():
    docs, _ = _block([["only one sentence here"]])
    assert pp.create_instances_from_document(docs, 0, random.Random(0), 32, 0.1) == []


def _random_block(rng, num_docs=60):
    documents = []
    for d in range(num_docs):
        sentences = []
        for s in range(rng.randint(1, 30)):
            sentences.append(" ".join(f"d{d}s{s}w{w}" for w in range(rng.randint(1, 25))))
        documents.append(sentences)
    return _block(documents)


@pytest.fixture(scope="module")
def random_instances():
    docs, words = _random_block(random.Random(1))
    rng = random.Random(2)
    inst = np.concatenate([pp.create_instances(docs, rng, 64, 0.1) for _ in range(5)])
    return docs, words, inst


def test_instance_invariants(random_instances):
    docs, _, inst = random_instances
    a_len, b_len = inst[:, 1] - inst[:, 0], inst[:, 3] - inst[:, 2]
    assert len(inst) > 1000
    assert (a_len >= 1).all() and (b_len >= 1).all()
    assert (a_len + b_len + 3 <= 64).all()
    assert (inst[:, [0, 2]] >= 0).all() and (inst[:, [1, 3]] <= len(docs.token_ids)).all()


def _doc_of_token(docs, positions):
    sentence = np.searchsorted(docs.sentence_offsets, positions, side="right") - 1
    return np.searchsorted(docs.document_offsets, sentence, side="right") - 1


def test_actual_next_is_true_continuation(random_instances):
    docs, words, inst = random_instances
    actual = inst[inst[:, 4] == 0]
    assert len(actual) > 300
    # Same document, B after A, and a sentence boundary between them (the split point); anything in the
    # gap was trimmed by truncate_seq_pair.
    assert (_doc_of_token(docs, actual[:, 0]) == _doc_of_token(docs, actual[:, 3] - 1)).all()
    assert (actual[:, 2] >= actual[:, 1]).all()
    bounds = docs.sentence_offsets
    split = np.searchsorted(bounds, actual[:, 1], side="left")
    assert (bounds[split] <= actual[:, 2]).all()
    # Spot-check on the text itself: word names encode document and sentence, so A then B read in order.
    for a0, a1, b0, b1, _ in actual[:50]:
        a, b = _words(docs, words, a0, a1), _words(docs, words, b0, b1)
        assert a[0].split("s")[0] == b[-1].split("s")[0]


def test_random_next_comes_from_another_document(random_instances):
    docs, _, inst = random_instances
    rand = inst[inst[:, 4] == 1]
    doc_a = _doc_of_token(docs, rand[:, 0])
    assert (doc_a == _doc_of_token(docs, rand[:, 1] - 1)).all()
    assert (_doc_of_token(docs, rand[:, 2]) == _doc_of_token(docs, rand[:, 3] - 1)).all()
    assert (_doc_of_token(docs, rand[:, 2]) != doc_a).all()


def test_is_random_next_about_half(random_instances):
    docs, _, inst = random_instances
    # Multi-sentence chunks flip a fair coin; one-sentence chunks are always random, so a bit above 0.5.
    frac = inst[:, 4].mean()
    assert 0.45 < frac < 0.62, frac


def test_short_seq_fraction():
    rng = random.Random(3)
    targets = np.array([pp.choose_target_length(rng, 125, 0.1) for _ in range(20000)])
    short = targets < 125
    assert 0.09 < short.mean() < 0.11
    assert targets.min() >= 2
    # The short targets are uniform on [2, 125]: mean close to 63.5.
    assert abs(targets[short].mean() - 63.5) < 3


def test_deterministic_for_same_seed():
    docs, _ = _random_block(random.Random(5), num_docs=10)
    a = pp.create_instances(docs, random.Random(9), 128, 0.1)
    b = pp.create_instances(docs, random.Random(9), 128, 0.1)
    c = pp.create_instances(docs, random.Random(10), 128, 0.1)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_randint_is_random_randint():
    """The pair loop's `randint` draws exactly what `random.Random.randint` draws, from the same stream."""
    import random

    ours, ref = random.Random(1234), random.Random(1234)
    bounds = [(0, 0), (1, 1), (0, 1), (2, 125), (0, 2**40), (5, 7)] * 200
    assert [pp.randint(ours, a, b) for a, b in bounds] == [ref.randint(a, b) for a, b in bounds]
    assert ours.random() == ref.random()  # and leaves the stream in the same place
