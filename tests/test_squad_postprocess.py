"""tasks.squad_postprocess on hand-made logits with known best spans, plus equality with a Google-style loop."""
import json
import math

import numpy as np
import pytest

from conftest import shared_path
from data.features.squad import examples_to_features, read_examples
from tokenizer import BertTokenizer, FullTokenizer
from tasks.squad_postprocess import NO_SPAN_NULL_ODDS, get_final_text, postprocess_predictions

WORDS = ["who", "bark", "##ed", "?", "steve", "smith", "'", "s", "dog", "loud", "##ly", "at", "the", "mail",
         "##man", "."]
CONTEXT = "Steve Smith's dog barked loudly at the mailman."
# Single-window layout (max_seq_length=32, question "Who barked?"): 0 [CLS] 1 who 2 bark 3 ##ed 4 ? 5 [SEP]
# 6 steve 7 smith 8 ' 9 s 10 dog 11 bark 12 ##ed 13 loud 14 ##ly 15 at 16 the 17 mail 18 ##man 19 . 20 [SEP]
STEVE, SMITH, S, DOG, BARK, ED, DOT = 6, 7, 9, 10, 11, 12, 19


def _build(tmp_path, n_questions=1, context=CONTEXT, max_seq_length=32, doc_stride=8, max_query_length=4):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n", encoding="utf-8")
    qas = [{"id": f"q{i}", "question": "Who barked?", "answers": []} for i in range(n_questions)]
    path = tmp_path / "dev.json"
    path.write_text(json.dumps({"data": [{"paragraphs": [{"context": context, "qas": qas}]}]}), encoding="utf-8")
    ex = read_examples(str(path), is_training=False)
    tok = FullTokenizer(str(vocab), do_lower_case=True, check_case=False)
    return ex, examples_to_features(ex, tok, max_seq_length, doc_stride, max_query_length, is_training=False)


def _logits(features, spots):
    """Zero logits with {(row, position): value} set; returns (start, end) float32 [N, L]."""
    start = np.zeros((len(features), features.max_seq_length), np.float32)
    end = np.zeros_like(start)
    for (which, row, pos), value in spots.items():
        (start if which == "s" else end)[row, pos] = value
    return start, end


def _softmax(xs):
    return [math.exp(x) / sum(math.exp(y) for y in xs) for x in xs]


# --------------------------------------------------------------------------------------- get_final_text
@pytest.mark.parametrize("pred, orig, lower, want", [
    ("steve smith", "Steve Smith's", True, "Steve Smith"),
    ("steve smith ' s", "Steve Smith's", True, "Steve Smith's"),
    ("johnson", "Johnson's,", True, "Johnson"),
    ("1895", "(1895-1943).", True, "1895"),
    ("cafe", "Café!", True, "Café"),               # accents stripped by lower-casing keep the length
    ("steve smith", "Steve  Smith's", True, "Steve  Smith"),  # inner spaces are kept from the original
    ("Smith", "Smith's", False, "Smith"),
    ("smith", "Smith's", False, "Smith's"),         # cased: not found -> the whole original
    ("cat", "Steve Smith's", True, "Steve Smith's"),
    ("barked", "barked\u200b", True, "barked\u200b"),  # cleaning drops U+200B: lengths differ -> original
])
def test_get_final_text(pred, orig, lower, want):
    assert get_final_text(pred, orig, lower) == want


# ----------------------------------------------------------------------------------------- span choice
def test_best_span_text_and_probabilities(tmp_path):
    ex, f = _build(tmp_path)
    assert f.tokens(0)[STEVE:DOT + 1] == "steve smith ' s dog bark ##ed loud ##ly at the mail ##man .".split()
    start, end = _logits(f, {("s", 0, STEVE): 5, ("e", 0, SMITH): 4, ("e", 0, S): 3})
    pred, nbest, null_odds = postprocess_predictions(ex, f, start, end, n_best_size=3)
    # Top-3 starts: 6, then positions 0 and 1 (ties, lowest first) which are not document tokens.
    assert pred == {"q0": "Steve Smith"} and null_odds == {}
    assert [(n["text"], n["start_logit"], n["end_logit"]) for n in nbest["q0"]] == [
        ("Steve Smith", 5.0, 4.0), ("Steve Smith's", 5.0, 3.0)]
    probs = [n["probability"] for n in nbest["q0"]]
    assert probs == pytest.approx(_softmax([9.0, 8.0]), abs=1e-12) and sum(probs) == pytest.approx(1.0)


def test_max_answer_length_and_end_before_start(tmp_path):
    ex, f = _build(tmp_path)
    start, end = _logits(f, {("s", 0, STEVE): 5, ("e", 0, DOT): 6, ("e", 0, SMITH): 1})
    # "steve ... ." is 14 tokens.
    assert postprocess_predictions(ex, f, start, end, max_answer_length=13)[0]["q0"] == "Steve Smith"
    assert postprocess_predictions(ex, f, start, end, max_answer_length=14)[0]["q0"] == CONTEXT
    start, end = _logits(f, {("s", 0, DOG): 5, ("e", 0, SMITH): 6, ("e", 0, ED): 1})
    pred, nbest, _ = postprocess_predictions(ex, f, start, end, n_best_size=2)
    assert pred["q0"] == "dog barked"
    assert [(n["text"], n["probability"]) for n in nbest["q0"]] == [("dog barked", 1.0)]


def test_nbest_order_and_duplicate_texts(tmp_path):
    # U+200B inside "barked" is dropped by cleaning, so both "bark" and "bark ##ed" map back to the same
    # original text "barked\u200b": only the better one is kept.
    ex, f = _build(tmp_path, context="Steve Smith's dog barked\u200b loudly at the mailman.")
    assert f.tokens(0)[BARK:ED + 1] == ["bark", "##ed"]
    start, end = _logits(f, {("s", 0, BARK): 4, ("s", 0, DOG): 3, ("e", 0, BARK): 3, ("e", 0, ED): 2})
    pred, nbest, _ = postprocess_predictions(ex, f, start, end, n_best_size=2)
    got = [(n["text"], n["start_logit"] + n["end_logit"]) for n in nbest["q0"]]
    # Ranked: (bark,bark)=7, (bark,ed)=6 duplicate text, (dog,bark)=6, (dog,ed)=5; the list stops at 2.
    assert got == [("barked\u200b", 7.0), ("dog barked\u200b", 6.0)]
    assert [n["probability"] for n in nbest["q0"]] == pytest.approx(_softmax([7.0, 6.0]))


def test_start_must_be_in_its_max_context_window(tmp_path):
    # 4 windows of 6 doc tokens every 3 (layout in test_squad_features): doc token 5 ("bark") is owned by
    # window 1, where it sits at position 7; in window 0 it sits at position 10.
    ex, f = _build(tmp_path, max_seq_length=12, doc_stride=3, max_query_length=3)
    assert len(f) == 4 and f.tokens(0)[10] == "bark" and f.tokens(1)[7] == "bark"
    assert not f.token_is_max_context[0, 10] and f.token_is_max_context[1, 7]
    start, end = _logits(f, {("s", 0, 10): 10, ("e", 0, 10): 10,   # best score, wrong window
                             ("s", 1, 7): 1, ("e", 1, 8): 1,        # "barked" in its own window
                             ("s", 1, 5): 8, ("e", 1, 6): 8})       # "s dog": "s" is owned by window 0
    pred, nbest, _ = postprocess_predictions(ex, f, start, end, n_best_size=2)
    assert pred["q0"] == "barked"
    # The end does not need max context: window 1 may end a span on a token owned by window 2.
    start, end = _logits(f, {("s", 1, 7): 1, ("e", 1, 10): 2})
    assert postprocess_predictions(ex, f, start, end, n_best_size=1)[0]["q0"] == "barked loudly"


def test_no_valid_span_predicts_empty(tmp_path):
    ex, f = _build(tmp_path)
    start, end = _logits(f, {("s", 0, 0): 5})  # the single best start is [CLS]
    pred, nbest, _ = postprocess_predictions(ex, f, start, end, n_best_size=1)
    assert pred == {"q0": ""} and nbest["q0"] == [{"text": "", "probability": 1.0, "start_logit": 0.0,
                                                    "end_logit": 0.0}]
    _, _, odds = postprocess_predictions(ex, f, start, end, n_best_size=1, version_2_with_negative=True)
    assert odds == {"q0": NO_SPAN_NULL_ODDS}


# ------------------------------------------------------------------------------------------------ SQuAD 2
def test_v2_null_decision_per_example(tmp_path):
    ex, f = _build(tmp_path, n_questions=2)
    spots = {("s", 0, 0): 3, ("e", 0, 0): 3, ("s", 1, 0): -1, ("e", 1, 0): -1}  # null scores 6 and -2
    for row in (0, 1):
        spots.update({("s", row, STEVE): 2, ("e", row, SMITH): 2})  # best span "Steve Smith" = 4
    start, end = _logits(f, spots)
    pred, nbest, odds = postprocess_predictions(ex, f, start, end, n_best_size=3, version_2_with_negative=True)
    assert odds == {"q0": 2.0, "q1": -6.0}  # each question's own null score minus its best span
    assert pred == {"q0": "", "q1": "Steve Smith"}
    assert [(n["text"], n["start_logit"]) for n in nbest["q0"]][:2] == [("", 3.0), ("Steve Smith", 2.0)]
    assert nbest["q1"][-1]["text"] == "" and nbest["q1"][-1]["start_logit"] == -1.0
    pred, _, _ = postprocess_predictions(ex, f, start, end, n_best_size=3, version_2_with_negative=True,
                                         null_score_diff_threshold=2.5)
    assert pred == {"q0": "Steve Smith", "q1": "Steve Smith"}


def test_v2_null_score_is_min_over_the_examples_windows(tmp_path):
    ex, f = _build(tmp_path, max_seq_length=12, doc_stride=3, max_query_length=3)
    spots = {("s", w, 0): v for w, v in enumerate([1, -2, 3, 0])}
    spots.update({("e", w, 0): 1 for w in range(4)})  # window sums 2, -1, 4, 1: window 1 is the minimum
    spots.update({("s", 1, 7): 1, ("e", 1, 8): 1})  # "barked" = 2
    start, end = _logits(f, spots)
    pred, nbest, odds = postprocess_predictions(ex, f, start, end, n_best_size=2, version_2_with_negative=True)
    assert odds == {"q0": -3.0} and pred == {"q0": "barked"}
    null = [n for n in nbest["q0"] if n["text"] == ""]
    assert [(n["start_logit"], n["end_logit"]) for n in null] == [(-2.0, 1.0)]


# ---------------------------------------------------------------------------------------- files and errors
def test_writes_files_only_when_asked(tmp_path):
    ex, f = _build(tmp_path)
    start, end = _logits(f, {("s", 0, STEVE): 5, ("e", 0, SMITH): 4})
    out = tmp_path / "out"
    pred, nbest, odds = postprocess_predictions(ex, f, start, end, version_2_with_negative=True,
                                                output_dir=str(out))
    assert sorted(p.name for p in out.iterdir()) == ["nbest_predictions.json", "null_odds.json",
                                                     "predictions.json"]
    assert json.loads((out / "predictions.json").read_text()) == pred
    assert json.loads((out / "nbest_predictions.json").read_text()) == nbest
    assert json.loads((out / "null_odds.json").read_text()) == odds
    out1 = tmp_path / "out1"
    postprocess_predictions(ex, f, start, end, output_dir=str(out1))
    assert sorted(p.name for p in out1.iterdir()) == ["nbest_predictions.json", "predictions.json"]


def test_input_errors(tmp_path):
    ex, f = _build(tmp_path)
    start, end = _logits(f, {})
    with pytest.raises(ValueError, match=r"all_start_logits has shape \(1, 31\); expected \(1, 32\)"):
        postprocess_predictions(ex, f, start[:, :31], end)
    with pytest.raises(ValueError, match="n_best_size must be a positive integer"):
        postprocess_predictions(ex, f, start, end, n_best_size=0)
    with pytest.raises(ValueError, match="features refer to example 0 but only 0 examples"):
        postprocess_predictions([], f, start, end)


def test_matches_google_style_loop_on_real_dev():
    """Random logits on real questions: same predictions and n-best lists as a plain per-candidate loop."""
    from benchmarks.bench_squad import baseline_features, baseline_postprocess
    from data.features.squad import FeatureParams

    dev, vocab = shared_path("data", "squad", "dev-v1.1.json"), shared_path("vocab", "bert-base-uncased-vocab.txt")
    ex = read_examples(str(dev), is_training=False)[:300]
    f = examples_to_features(ex, BertTokenizer(vocab, do_lower_case=True), 128, 48, 32, is_training=False)
    windows = baseline_features(ex, FullTokenizer(vocab, do_lower_case=True), FeatureParams(128, 48, 32), False)
    rng = np.random.default_rng(11)
    start = rng.standard_normal((len(f), 128)).astype(np.float32)
    end = rng.standard_normal((len(f), 128)).astype(np.float32)
    pred, nbest, _ = postprocess_predictions(ex, f, start, end, n_best_size=10, max_answer_length=15)
    want_pred, want_nbest = baseline_postprocess(ex, windows, start, end, n_best=10, max_len=15)
    assert pred == want_pred and nbest == want_nbest
    assert len(set(pred.values())) > 250  # really different answers, not a degenerate case
