"""tasks.squad_metrics: official SQuAD v1.1 / v2.0 semantics on hand-computed cases and the real dev set."""
import json
import logging

import pytest

from conftest import shared_path
from tasks.squad_metrics import (evaluate_v1, evaluate_v2, exact_match_score, f1_score_v1, f1_score_v2,
                                 normalize_answer)


def _dataset(*questions):
    """[(qid, [gold texts])] -> SQuAD JSON dict (one paragraph)."""
    qas = [{"id": qid, "question": "?", "answers": [{"text": t, "answer_start": 0} for t in golds]}
           for qid, golds in questions]
    return {"version": "x", "data": [{"title": "t", "paragraphs": [{"context": "c", "qas": qas}]}]}


@pytest.mark.parametrize("text, want", [
    ("The  Cat, sat!", "cat sat"),
    ("an apple a day", "apple day"),
    ("Theatre then", "theatre then"),   # articles only as whole words
    ("A-B don't", "ab dont"),          # punctuation is deleted, not turned into spaces
    ("  \tthe\n", ""),
    ("Café – 2", "café – 2"),          # only ASCII punctuation is removed
])
def test_normalize_answer(text, want):
    assert normalize_answer(text) == want


def test_token_f1_and_em_by_hand():
    # pred tokens [cat, sat], gold [cat, sat, on]: P = 2/2, R = 2/3, F1 = 2PR/(P+R) = (4/3)/(5/3) = 0.8.
    assert f1_score_v1("the cat sat", "a cat sat on") == pytest.approx(0.8)
    # Counter overlap: x x y vs x y y share one x and one y: P = R = 2/3.
    assert f1_score_v1("x x y", "x y y") == pytest.approx(2 / 3)
    assert f1_score_v1("cat", "dog") == 0.0
    assert exact_match_score("The Cat.", "cat") == 1.0 and exact_match_score("cats", "cat") == 0.0
    # Empty answers: v1 gives 0 even when both are empty, v2 gives 1 only when both are.
    assert (f1_score_v1("", ""), f1_score_v2("", ""), f1_score_v2("", "cat"), f1_score_v2("the", "")) == \
           (0.0, 1.0, 0.0, 1.0)


def test_evaluate_v1_by_hand(tmp_path, caplog):
    data = _dataset(("q1", ["Denver Broncos", "the Denver Broncos"]), ("q2", ["cat sat on"]), ("q3", ["1990"]),
                    ("q4", ["Paris", "paris, france"]))
    preds = {"q1": "Broncos", "q2": "the cat sat", "q4": "Paris!", "other": "x"}
    with caplog.at_level(logging.WARNING):
        got = evaluate_v1(data, preds)
    # EM: only q4. F1: q1 P=1 R=1/2 -> 2/3; q2 0.8; q3 missing -> 0; q4 1.
    assert got == pytest.approx({"exact_match": 25.0, "f1": 100 * (2 / 3 + 0.8 + 0 + 1) / 4})
    assert "1 of 4 questions have no prediction" in caplog.text and "1 predictions are for questions" in caplog.text
    # Paths work as well as parsed objects, and so does the bare "data" list.
    (tmp_path / "d.json").write_text(json.dumps(data))
    (tmp_path / "p.json").write_text(json.dumps(preds))
    assert evaluate_v1(str(tmp_path / "d.json"), str(tmp_path / "p.json")) == got == evaluate_v1(data["data"], preds)


def _v2_case():
    data = _dataset(("a", ["Denver Broncos"]), ("b", []), ("c", []), ("d", ["."]))
    preds = {"a": "Denver", "b": "", "c": "something", "d": ""}
    return data, preds


def test_evaluate_v2_by_hand():
    data, preds = _v2_case()
    got = evaluate_v2(data, preds)
    # a: EM 0, F1 2/3. b: no answer, predicted "" -> 1/1. c: no answer, predicted text -> 0/0.
    # d: its only gold "." normalizes to "" so the gold becomes [""]; "" -> 1/1; still a HasAns question.
    assert got == pytest.approx({
        "exact": 50.0, "f1": 100 * (2 / 3 + 1 + 0 + 1) / 4, "total": 4,
        "HasAns_exact": 50.0, "HasAns_f1": 100 * (2 / 3 + 1) / 2, "HasAns_total": 2,
        "NoAns_exact": 50.0, "NoAns_f1": 50.0, "NoAns_total": 2})
    assert list(got)[:3] == ["exact", "f1", "total"]


def test_evaluate_v2_null_probabilities_and_best_threshold():
    data, preds = _v2_case()
    probs = {"a": 0.9, "b": 0.8, "c": 0.95, "d": 0.1}
    got = evaluate_v2(data, preds, na_probs=probs, na_prob_thresh=0.85)
    # Above 0.85, a and c count as "no answer": a -> 0 (it has one), c -> 1 (it has none).
    assert (got["exact"], got["f1"]) == pytest.approx((75.0, 75.0))
    # Sweep from "all null" (b, c right = 2) in order d .1, b .8, a .9, c .95:
    #   exact: d +1 -> 3 (best, thresh .1), b 0, a 0, c -1.
    #   f1:    d +1 -> 3, b 0, a +2/3 -> 3.667 (best, thresh .9), c -1.
    assert got["best_exact"] == pytest.approx(75.0) and got["best_exact_thresh"] == 0.1
    assert got["best_f1"] == pytest.approx(100 * (3 + 2 / 3) / 4) and got["best_f1_thresh"] == 0.9
    assert "best_f1" not in evaluate_v2(data, preds)


def test_v2_missing_prediction_counts_as_wrong(caplog):
    data, preds = _v2_case()
    del preds["b"]
    with caplog.at_level(logging.WARNING):
        got = evaluate_v2(data, preds)
    assert (got["total"], got["NoAns_total"], got["NoAns_exact"]) == (4, 2, 0.0)
    assert "1 of 4 questions have no prediction" in caplog.text


def test_bad_inputs():
    with pytest.raises(ValueError, match="no 'data' field"):
        evaluate_v1({"version": "1.1"}, {})
    with pytest.raises(ValueError, match="not in SQuAD format"):
        evaluate_v1({"data": [{"paragraphs": [{"qas": [{"id": "x"}]}]}]}, {})
    with pytest.raises(ValueError, match="predictions must be a dict"):
        evaluate_v1(_dataset(("q", ["a"])), ["a"])
    with pytest.raises(ValueError, match="no questions"):
        evaluate_v2({"data": []}, {})


def test_v1_refuses_questions_without_answers_naming_the_file_and_ids(tmp_path):
    # The official v1.1 script crashes here (max() of no gold answers); the file is a SQuAD 2.0 one.
    data = _dataset(("q1", ["cat"]), ("q2", []), *[(f"n{i}", []) for i in range(6)])
    path = tmp_path / "dev-v2.0.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError) as err:
        evaluate_v1(str(path), {"q1": "cat", "q2": ""})
    assert str(err.value) == (f"dataset {path}: 7 of 8 questions have no gold answer (q2, n0, n1, n2, n3 and 2 "
                              "more), which SQuAD v1.1 cannot score; it is a SQuAD 2.0 file: score it with the "
                              "v2.0 rules (run_squad.py --version-2-with-negative)")
    # ... where such a question's gold answer is "": an empty prediction is right, any text wrong.
    got = evaluate_v2(str(path), {"q1": "cat", "q2": "", **{f"n{i}": "x" for i in range(6)}})
    assert (got["exact"], got["NoAns_total"], got["NoAns_exact"]) == (25.0, 7, pytest.approx(100 / 7))


def test_dataset_errors_name_the_file(tmp_path):
    bad = tmp_path / "latin1.json"
    bad.write_bytes('{"data": "caf\xe9"}'.encode("latin-1"))
    with pytest.raises(ValueError, match=f"dataset {bad} is not UTF-8"):
        evaluate_v1(str(bad), {})
    (tmp_path / "nodata.json").write_text("{}")
    with pytest.raises(ValueError, match=f"dataset {tmp_path / 'nodata.json'} has no 'data' field"):
        evaluate_v1(str(tmp_path / "nodata.json"), {})


def test_real_dev_set():
    path = shared_path("data", "squad", "dev-v1.1.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    first = {qa["id"]: qa["answers"][0]["text"]
             for article in data["data"] for p in article["paragraphs"] for qa in p["qas"]}
    assert len(first) == 10570
    assert evaluate_v1(data, first) == {"exact_match": 100.0, "f1": 100.0}
    v2 = evaluate_v2(data, first)
    assert (v2["exact"], v2["f1"], v2["total"], v2["HasAns_total"], "NoAns_total" in v2) == \
           (100.0, 100.0, 10570, 10570, False)
    # Predicting nothing: F1 0; EM is not quite 0 because three questions (ids below) list
    # "." among their gold answers, and "" equals "." after normalization, as in the official script.
    empty = evaluate_v1(data, {qid: "" for qid in first})
    assert empty["f1"] == 0.0 and empty["exact_match"] == pytest.approx(100 * 3 / 10570)
    dots = sorted(qa["id"] for article in data["data"] for p in article["paragraphs"] for qa in p["qas"]
                  if any(a["text"] == "." for a in qa["answers"]))
    assert dots == ["5725bad5271a42140099d0c1", "5730b7ce069b5314008322c4", "57340d124776f419006617bf"]
