"""data.features.squad: reading, windowing (hand-computed windows), equality with a per-token baseline, cache,
batches."""
import json
import logging
import os
import re

import numpy as np
import pytest

from conftest import shared_path
from data.features.squad import (FeatureParams, doc_spans, examples_to_features, improve_answer_span,
                        iterate_batches, load_or_build_features, max_context_owner, num_batches, read_examples,
                        split_on_whitespace)
from tokenizer import BertTokenizer, FullTokenizer

WORDS = ["who", "bark", "##ed", "?", "steve", "smith", "'", "s", "dog", "loud", "##ly", "at", "the", "mail",
         "##man", ".", "(", ")", "-", "1895", "1943", "what", "when", "born"]
CONTEXT = "Steve Smith's dog barked loudly at the mailman."


def _vocab(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n", encoding="utf-8")
    return str(path)


def _squad(tmp_path, qas, context=CONTEXT, name="train.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": [
        {"context": context, "qas": qas}]}]}), encoding="utf-8")
    return str(path)


def _qa(qid, text=None, start=None, question="Who barked?", **extra):
    answers = [] if text is None else [{"text": text, "answer_start": start}]
    return dict({"id": qid, "question": question, "answers": answers}, **extra)


# ------------------------------------------------------------------------------------------------ reading
def test_split_on_whitespace_offsets():
    tokens, offsets = split_on_whitespace(" ab  c\td\u202fe\u00a0f")
    # U+202F splits words (Google), the no-break space U+00A0 does not.
    assert tokens == ("ab", "c", "d", "e\u00a0f")
    assert offsets == [-1, 0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 3]


def test_read_training_examples(tmp_path):
    path = _squad(tmp_path, [_qa("q1", "Smith's dog", 6), _qa("q2", "barked", 18)])
    ex = read_examples(path, is_training=True)
    assert [e.qas_id for e in ex] == ["q1", "q2"]
    assert ex[0].doc_tokens == ("Steve", "Smith's", "dog", "barked", "loudly", "at", "the", "mailman.")
    assert (ex[0].start_position, ex[0].end_position) == (1, 2)
    assert (ex[1].start_position, ex[1].end_position) == (3, 3)
    assert ex[0].doc_tokens is ex[1].doc_tokens  # one paragraph, one tuple
    # Prediction mode ignores answers altogether.
    assert read_examples(path, is_training=False)[0].start_position is None


def test_read_v2_impossible(tmp_path):
    path = _squad(tmp_path, [_qa("q1", is_impossible=True), _qa("q2", "dog", 14, is_impossible=False)])
    ex = read_examples(path, is_training=True, version_2_with_negative=True)
    assert (ex[0].is_impossible, ex[0].start_position, ex[0].end_position, ex[0].orig_answer_text) == \
           (True, -1, -1, "")
    assert (ex[1].is_impossible, ex[1].start_position) == (False, 2)
    with pytest.raises(ValueError, match="is_impossible"):
        read_examples(_squad(tmp_path, [_qa("q3", "dog", 14)], name="v1.json"), True, True)


@pytest.mark.parametrize("qas, message", [
    ([_qa("q1", "Smith", 0)], "question q1: answer text 'Smith' is not at answer_start 0"),
    ([_qa("q1", "dog", 400)], "question q1: answer_start 400"),
    ([_qa("q1", "", 3)], "question q1: empty answer text"),
    ([_qa("q1")], "question q1: training needs exactly 1 answer, found 0"),
    ([_qa("q1", "dog", 14), _qa("q1", "dog", 14)], "question id q1 appears twice"),
    ([{"id": "q1", "answers": []}], "question q1 has no 'question' field"),
    ([], "no usable questions"),
])
def test_read_errors_name_the_question(tmp_path, qas, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        read_examples(_squad(tmp_path, qas), is_training=True)


def test_read_malformed_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.json: not valid UTF-8 JSON"):
        read_examples(str(bad), is_training=False)
    bad.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.json: the file is empty"):
        read_examples(str(bad), is_training=False)
    bad.write_text(json.dumps({"version": "1.1"}), encoding="utf-8")
    with pytest.raises(ValueError, match="bad.json: top level has no 'data' field"):
        read_examples(str(bad), is_training=False)
    bad.write_text(json.dumps({"data": [{"paragraphs": [{"qas": []}]}]}), encoding="utf-8")
    with pytest.raises(ValueError, match="article 0 paragraph 0 has no 'context'"):
        read_examples(str(bad), is_training=False)


def test_whitespace_mismatch_is_skipped_and_counted(tmp_path, caplog):
    # The answer holds a no-break space where Google's splitter keeps one word: Google skips it, so do we.
    context = "He paid 10\u00a0dollars today."
    path = _squad(tmp_path, [_qa("q1", "10\u00a0dollars", 8), _qa("q2", "today", 19)], context=context)
    with caplog.at_level(logging.WARNING):
        ex = read_examples(path, is_training=True)
    assert [e.qas_id for e in ex] == ["q2"]
    assert "skipped 1 of 2 questions" in caplog.text
    # Inside one whitespace word the answer is found even when it is only part of it (Google keeps it).
    ex = read_examples(_squad(tmp_path, [_qa("q1", "Smith", 6)], name="part.json"), is_training=True)
    assert (ex[0].start_position, ex[0].end_position) == (1, 1)


# ------------------------------------------------------------------------------------------------ windows
def test_doc_spans_and_max_context_hand_computed():
    spans = doc_spans(14, 6, 3)
    assert spans == [(0, 6), (3, 6), (6, 6), (9, 5)]
    # score = min(left, right) + 0.01 * length; p=4 ties (1.06 vs 1.06): the first window wins.
    assert max_context_owner(spans, 14).tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert doc_spans(0, 6, 3) == []
    assert doc_spans(5, 6, 3) == [(0, 5)]
    # A stride longer than the window never skips tokens: the step is capped at the window length.
    assert doc_spans(10, 4, 9) == [(0, 4), (4, 4), (8, 2)]


def _dense_max_context_owner(spans, num_doc_tokens):
    """The former implementation, kept as the reference: a [tokens, windows] score matrix, argmax per token
    (first window on ties, window 0 for a token no window covers)."""
    starts = np.array([s for s, _ in spans], dtype=np.int64)
    lengths = np.array([n for _, n in spans], dtype=np.int64)
    ends = starts + lengths - 1
    pos = np.arange(num_doc_tokens, dtype=np.int64)[:, None]
    score = np.minimum(pos - starts, ends - pos) + 0.01 * lengths
    score[(pos < starts) | (pos > ends)] = -np.inf
    return np.argmax(score, axis=1)


@pytest.mark.parametrize("seed", range(4))
def test_max_context_owner_equals_the_dense_reference_on_random_layouts(seed):
    rng = np.random.default_rng(seed)
    for _ in range(150):  # Google's windows: every document length, window and stride, ties included
        tokens, window = int(rng.integers(1, 400)), int(rng.integers(1, 40))
        spans = doc_spans(tokens, window, int(rng.integers(1, window + 5)))
        assert max_context_owner(spans, tokens).tolist() == _dense_max_context_owner(spans, tokens).tolist()
    for _ in range(150):  # any windows: unsorted, nested, equal, gaps no window covers
        tokens = int(rng.integers(1, 120))
        spans = [(int(a), int(rng.integers(1, tokens - a + 1))) for a in rng.integers(0, tokens, rng.integers(1, 12))]
        assert max_context_owner(spans, tokens).tolist() == _dense_max_context_owner(spans, tokens).tolist()


def test_max_context_owner_memory_is_linear_in_the_document():
    # Issue 20 item 16: a dense tokens x windows matrix grew with the square of the context (20,000 tokens,
    # 155 windows: ~25 MB per temporary; 1 MB of text asked for 3.27 GiB). Linear: a few arrays of 20,000.
    # (run_squad.py accepts up to 2,000,000 characters, ~3,200 windows: building them takes under a second.)
    import tracemalloc

    spans = doc_spans(20_000, 381, 128)
    tracemalloc.start()
    try:
        owner = max_context_owner(spans, 20_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(spans) == 155 and owner[-1] == 154
    assert peak < 20 * 20_000, peak  # int64 owner + float64 best + per-window scraps


def test_improve_answer_span():
    doc = ["the", "(", "1895", "-", "1943", ")", "."]
    assert improve_answer_span(doc, 1, 6, ["1895"]) == (2, 2)
    assert improve_answer_span(doc, 1, 6, ["1895", "-", "1943"]) == (2, 4)
    assert improve_answer_span(doc, 1, 6, ["1900"]) == (1, 6)


def test_windows_hand_computed(tmp_path):
    tok = FullTokenizer(_vocab(tmp_path), do_lower_case=True, check_case=False)
    path = _squad(tmp_path, [_qa("q1", "Smith's dog", 6), _qa("q2", "at the", 32),
                             _qa("q3", "loudly at the mailman", 25)])
    ex = read_examples(path, is_training=True)
    f = examples_to_features(ex, tok, max_seq_length=12, doc_stride=3, max_query_length=3, is_training=True)
    # 14 doc sub-tokens, windows of 12 - 3 - 3 = 6 every 3 -> 4 windows per question.
    assert len(f) == 12 and f.example_index.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert f.unique_ids.tolist() == list(range(1000000000, 1000000012))
    assert f.tokens(1) == "[CLS] who bark ##ed [SEP] s dog bark ##ed loud ##ly [SEP]".split()
    assert f.tokens(3) == "[CLS] who bark ##ed [SEP] at the mail ##man . [SEP]".split()
    assert f.input_ids[3, -1] == 0 and f.seq_lengths[:4].tolist() == [12, 12, 12, 11]
    assert f.token_type_ids[3].tolist() == [0] * 5 + [1] * 6 + [0]
    assert f.input_mask()[3].tolist() == [1] * 11 + [0]
    assert f.token_to_orig[1].tolist() == [-1] * 5 + [1, 2, 3, 3, 4, 4] + [-1]
    # Window 1 owns sub-tokens 5..7 only (see test_doc_spans_and_max_context_hand_computed).
    assert f.token_is_max_context[1].tolist() == [False] * 5 + [False, False, True, True, True, False, False]
    # q1 (sub-tokens 1..4) only fits window 0; q2 (9..10) fits windows 2 and 3; q3 (7..13) fits none.
    assert list(zip(f.start_positions.tolist(), f.end_positions.tolist())) == [
        (6, 9), (0, 0), (0, 0), (0, 0), (0, 0), (0, 0), (8, 9), (5, 6), (0, 0), (0, 0), (0, 0), (0, 0)]


def test_improved_span_and_impossible_targets(tmp_path):
    tok = FullTokenizer(_vocab(tmp_path), do_lower_case=True, check_case=False)
    path = _squad(tmp_path, [_qa("q1", "1895", 1, question="When born?", is_impossible=False),
                             _qa("q2", question="What?", is_impossible=True)], context="(1895-1943).")
    ex = read_examples(path, is_training=True, version_2_with_negative=True)
    f = examples_to_features(ex, tok, max_seq_length=16, doc_stride=4, max_query_length=4, is_training=True)
    assert f.tokens(0) == "[CLS] when born ? [SEP] ( 1895 - 1943 ) . [SEP]".split()
    assert (f.start_positions[0], f.end_positions[0]) == (6, 6)  # just "1895", not the whole word
    assert (f.start_positions[1], f.end_positions[1], f.is_impossible.tolist()) == (0, 0, [False, True])


def test_bad_lengths_and_inputs(tmp_path):
    with pytest.raises(ValueError, match="max_seq_length \\(67\\) must be greater than max_query_length"):
        FeatureParams(max_seq_length=67, max_query_length=64)
    with pytest.raises(ValueError, match="doc_stride must be a positive integer"):
        FeatureParams(doc_stride=0)
    tok = FullTokenizer(_vocab(tmp_path), do_lower_case=True, check_case=False)
    ex = read_examples(_squad(tmp_path, [_qa("q1", "dog", 14)]), is_training=False)
    with pytest.raises(ValueError, match="needs examples read with is_training=True"):
        examples_to_features(ex, tok, is_training=True)
    with pytest.raises(ValueError, match="no examples"):
        examples_to_features([], tok, is_training=False)


def test_matches_per_token_baseline_on_real_dev(tmp_path):
    """Our windows == a straightforward per-token implementation, on real questions, both modes."""
    from benchmarks.bench_squad import _training_copy, baseline_features, check_features_equal

    dev, vocab = shared_path("data", "squad", "dev-v1.1.json"), shared_path("vocab", "bert-base-uncased-vocab.txt")
    fast, slow = BertTokenizer(vocab, do_lower_case=True), FullTokenizer(vocab, do_lower_case=True)
    params = FeatureParams(max_seq_length=128, doc_stride=32, max_query_length=20)  # many windows per question
    for is_training in (False, True):
        source = _training_copy(dev, 150, str(tmp_path)) if is_training else dev
        ex = read_examples(source, is_training=is_training)[:150]
        ours = examples_to_features(ex, fast, 128, 32, 20, is_training=is_training)
        assert len(ours) > 1.5 * len(ex)  # windows overlap: max-context and out-of-window targets matter
        check_features_equal(ours, baseline_features(ex, slow, params, is_training))
        if is_training:  # the targets really point at the answers
            hits = ours.start_positions > 0
            assert hits.sum() >= len(ex)
            row = int(np.flatnonzero(hits)[0])
            text = " ".join(ours.tokens(row)[ours.start_positions[row]:ours.end_positions[row] + 1])
            assert text.replace(" ##", "") == " ".join(slow.tokenize(ex[ours.example_index[row]].orig_answer_text))


# -------------------------------------------------------------------------------------------------- cache
def test_cache_hit_miss_and_invalidation(tmp_path, caplog):
    vocab = _vocab(tmp_path)
    path = _squad(tmp_path, [_qa("q1", "Smith's dog", 6), _qa("q2", "at the", 32)])
    cache = str(tmp_path / "cache")
    params = FeatureParams(max_seq_length=12, doc_stride=3, max_query_length=3)

    def load(p=params, lower=True):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="data.features.squad"):
            out = load_or_build_features(path, vocab, lower, p, cache, is_training=True)
        return out, ("cache hit" in caplog.text), ("cache miss" in caplog.text)

    (ex, f), hit, miss = load()
    assert (hit, miss) == (False, True) and len(os.listdir(cache)) == 1
    (ex2, f2), hit, miss = load()
    assert (hit, miss) == (True, False)
    assert ex2 == ex and np.array_equal(f2.input_ids, f.input_ids) and f2.id_to_token == f.id_to_token
    assert np.array_equal(f2.token_is_max_context, f.token_is_max_context)
    # Any setting or input change is a different entry.
    assert load(FeatureParams(max_seq_length=12, doc_stride=2, max_query_length=3))[2]
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(" ")  # same JSON, different bytes: rebuilt
    assert load()[2]
    assert len(os.listdir(cache)) == 3
    assert load_or_build_features(path, vocab, True, params, None, is_training=True)[1].input_ids.shape == (8, 12)


# ------------------------------------------------------------------------------------------------ batches
def _features(tmp_path, n_questions=5):
    tok = FullTokenizer(_vocab(tmp_path), do_lower_case=True, check_case=False)
    qas = [_qa(f"q{i}", "dog", 14) for i in range(n_questions)]
    ex = read_examples(_squad(tmp_path, qas), is_training=True)
    return examples_to_features(ex, tok, max_seq_length=12, doc_stride=3, max_query_length=3, is_training=True)


def test_training_batches(tmp_path):
    f = _features(tmp_path)  # 20 windows
    batches = list(iterate_batches(f, 8, is_training=True, shuffle=True, rng=np.random.default_rng(3)))
    assert [b["input_ids"].shape for b in batches] == [(8, 12), (8, 12), (4, 12)]
    assert num_batches(len(f), 8) == 3
    b = batches[0]
    assert set(b) == {"input_ids", "token_type_ids", "attention_mask", "start_positions", "end_positions"}
    assert all(v.dtype == np.int64 for v in b.values())
    assert b["attention_mask"].shape == (8, 1, 1, 12) and b["start_positions"].shape == (8, 1)
    # Rows come in the documented rng.permutation order, each once, with their mask and targets.
    order = np.random.default_rng(3).permutation(20)
    assert sorted(order.tolist()) == list(range(20)) and order.tolist() != list(range(20))
    cat = {k: np.concatenate([x[k] for x in batches]) for k in b}
    assert np.array_equal(cat["input_ids"], f.input_ids[order])
    assert np.array_equal(cat["token_type_ids"], f.token_type_ids[order])
    assert np.array_equal(cat["attention_mask"][:, 0, 0].sum(1), f.seq_lengths[order])
    assert np.array_equal(cat["attention_mask"][:, 0, 0], (f.input_ids[order] != 0).astype(np.int64))
    assert np.array_equal(cat["start_positions"][:, 0], f.start_positions[order])
    assert np.array_equal(cat["end_positions"][:, 0], f.end_positions[order])
    # Without shuffle: feature order; drop_last drops the partial batch.
    plain = list(iterate_batches(f, 8, is_training=True, drop_last=True))
    assert len(plain) == 2 == num_batches(20, 8, drop_last=True)
    assert np.array_equal(np.concatenate([x["input_ids"] for x in plain]), f.input_ids[:16])


def test_prediction_batches_and_errors(tmp_path):
    f = _features(tmp_path, 2)
    batches = list(iterate_batches(f, 3, is_training=False))
    assert set(batches[0]) == {"input_ids", "token_type_ids", "attention_mask", "unique_ids"}
    assert np.concatenate([b["unique_ids"] for b in batches]).tolist() == f.unique_ids.tolist()
    with pytest.raises(ValueError, match="rng=numpy.random.Generator"):
        iterate_batches(f, 3, is_training=False, shuffle=True)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        iterate_batches(f, 0, is_training=False)
