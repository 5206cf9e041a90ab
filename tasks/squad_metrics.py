"""SQuAD exact match and F1, with the official v1.1 and v2.0 evaluation scripts' semantics.

Owns: answer normalisation, per-question EM / F1, the dataset-level v1.1 and v2.0 reports (including
HasAns_/NoAns_ breakdowns and, given null odds or probabilities, the best-threshold search).
Does not own: producing predictions (`tasks.squad_postprocess`).

Semantics (reimplemented from the official scripts' algorithm):
  * normalize: lower-case, drop ASCII punctuation (`string.punctuation`), replace the words a/an/the
    with a space, collapse whitespace;
  * EM: normalized strings equal; F1: bag-of-tokens overlap (Counter intersection) of the normalized
    strings; each question takes the max over its gold answers; results are percentages;
  * v1.1: F1 with no overlap (including an empty prediction) is 0;
  * v2.0: gold answers that normalize to "" are dropped and a question with none left has gold [""];
    F1 between an empty and a non-empty answer is 0, between two empty ones 1; a prediction counts as
    "no answer" when its null probability exceeds `na_prob_thresh` (default 1.0, i.e. never).
A question without gold answers (SQuAD 2.0's unanswerable ones) has no v1.1 score: the official v1.1
script crashes on it (max of an empty list); `evaluate_v1` raises a ValueError naming the file and the
question ids and pointing to the v2.0 rules, which score such a question against the gold answer "".
One deliberate difference: a question without a prediction scores 0 and still counts in every total, in
both versions, with one warning listing how many are missing (official v1.1 does the same but prints
one line per question; official v2.0 leaves them out of the total and fails on the breakdowns).
"""
import collections
import json
import logging
import os
import re
import string

logger = logging.getLogger(__name__)

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text):
    """Lower-case, remove punctuation and the articles a/an/the, and collapse whitespace."""
    text = "".join(c for c in text.lower() if c not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match_score(prediction, ground_truth):
    """1.0 if the normalized strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def _overlap_f1(pred_tokens, gold_tokens):
    same = sum((collections.Counter(pred_tokens) & collections.Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score_v1(prediction, ground_truth):
    """Official v1.1 token F1 in [0, 1]; 0 when nothing overlaps (so also when either side is empty)."""
    return _overlap_f1(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def f1_score_v2(prediction, ground_truth):
    """Official v2.0 token F1 in [0, 1]; an empty side scores 1 only if both are empty."""
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(ground_truth).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    return _overlap_f1(pred_tokens, gold_tokens)


# ---------------------------------------------------------------------------------------------- loading
def _load(obj, what):
    if isinstance(obj, (str, os.PathLike)):
        try:
            with open(obj, encoding="utf-8") as f:
                return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{what} {os.fspath(obj)} is not valid JSON ({e})") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"{what} {os.fspath(obj)} is not UTF-8 text ({e})") from None
    return obj


def _questions(dataset_json_or_path):
    """[(qas_id, [gold answer texts])] in file order from a SQuAD file, its parsed JSON or its 'data'."""
    data = _load(dataset_json_or_path, "dataset")
    if isinstance(data, dict):
        if "data" not in data:
            raise ValueError(f"{_describe(dataset_json_or_path)} has no 'data' field (not a SQuAD file?)")
        data = data["data"]
    try:
        questions = [(qa["id"], [a["text"] for a in qa["answers"]])
                     for article in data for paragraph in article["paragraphs"] for qa in paragraph["qas"]]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{_describe(dataset_json_or_path)} is not in SQuAD format (missing or wrong field: "
                         f"{e})") from None
    if not questions:
        raise ValueError(f"{_describe(dataset_json_or_path)} has no questions")
    return questions


def _describe(dataset_json_or_path):
    if isinstance(dataset_json_or_path, (str, os.PathLike)):
        return f"dataset {os.fspath(dataset_json_or_path)}"
    return "dataset"


def check_v1_answerable(dataset_json_or_path, name=None):
    """Refuse a dataset that v1.1 cannot score: every question needs at least one gold answer.

    Args:
      dataset_json_or_path: path to the SQuAD JSON, its parsed dict, or its "data" list.
      name: what the message calls the dataset (a CLI passes its flag and the path); default
        "dataset <path>".

    Returns:
      [(qas_id, [gold answer texts])] in file order, every list non-empty.

    Raises:
      ValueError: naming the file, how many questions lack answers and their first ids, and the fix
        (score it as SQuAD 2.0); also the format errors of `evaluate_v1`.
    """
    questions = _questions(dataset_json_or_path)
    name = name or _describe(dataset_json_or_path)
    unanswerable = [qid for qid, golds in questions if not golds]
    if unanswerable:
        shown = ", ".join(unanswerable[:5]) + (f" and {len(unanswerable) - 5} more" if len(unanswerable) > 5
                                               else "")
        raise ValueError(f"{name}: {len(unanswerable)} of {len(questions)} questions "
                         f"have no gold answer ({shown}), which SQuAD v1.1 cannot score; it is a SQuAD 2.0 "
                         f"file: score it with the v2.0 rules (run_squad.py --version-2-with-negative)")
    return questions


def _predictions(predictions, questions):
    preds = _load(predictions, "predictions")
    if not isinstance(preds, dict):
        raise ValueError(f"predictions must be a dict {{qas_id: text}}, got {type(preds).__name__}")
    ids = {qid for qid, _ in questions}
    missing = [qid for qid in ids if qid not in preds]
    if missing:
        logger.warning("%d of %d questions have no prediction and score 0 (e.g. %s)",
                       len(missing), len(ids), ", ".join(sorted(missing)[:3]))
    extra = len(set(preds) - ids)
    if extra:
        logger.warning("%d predictions are for questions not in the dataset; ignored", extra)
    return preds


# ---------------------------------------------------------------------------------------------- reports
def evaluate_v1(dataset_json_or_path, predictions):
    """Official SQuAD v1.1 evaluation.

    Args:
      dataset_json_or_path: path to the SQuAD JSON, its parsed dict, or its "data" list.
      predictions: {qas_id: answer text} or a path to such a JSON file.

    Returns:
      {"exact_match": float, "f1": float}, percentages over all questions.

    Raises:
      ValueError: the dataset or predictions are not in SQuAD format, or a question has no gold answer
        (see `check_v1_answerable`).
    """
    questions = check_v1_answerable(dataset_json_or_path)
    preds = _predictions(predictions, questions)
    exact = f1 = 0.0
    for qid, golds in questions:
        if qid in preds:
            exact += max(exact_match_score(preds[qid], g) for g in golds)
            f1 += max(f1_score_v1(preds[qid], g) for g in golds)
    return {"exact_match": 100.0 * exact / len(questions), "f1": 100.0 * f1 / len(questions)}


def _raw_scores_v2(questions, preds):
    """{qid: exact}, {qid: f1}, {qid: has_answer} before thresholding; missing predictions score 0."""
    exact, f1, has_ans = {}, {}, {}
    for qid, golds in questions:
        has_ans[qid] = bool(golds)
        golds = [g for g in golds if normalize_answer(g)] or [""]
        if qid not in preds:
            exact[qid] = f1[qid] = 0.0
            continue
        exact[qid] = max(exact_match_score(preds[qid], g) for g in golds)
        f1[qid] = max(f1_score_v2(preds[qid], g) for g in golds)
    return exact, f1, has_ans


def _apply_threshold(scores, na_probs, has_ans, threshold):
    return {qid: (float(not has_ans[qid]) if na_probs.get(qid, 0.0) > threshold else s)
            for qid, s in scores.items()}


def _summary(exact, f1, qids):
    return {"exact": 100.0 * sum(exact[q] for q in qids) / len(qids),
            "f1": 100.0 * sum(f1[q] for q in qids) / len(qids), "total": len(qids)}


def _best_threshold(preds, scores, na_probs, has_ans):
    """Official search: sweep questions by rising null probability; (best score %, its threshold).

    Start from "every question predicted null" (all no-answer questions right, except those without a
    prediction, which stay wrong), then let each question in turn keep its own prediction.
    """
    score = best = sum(1 for q in has_ans if not has_ans[q] and q in preds)
    best_thresh = 0.0
    for qid in sorted(na_probs, key=lambda q: na_probs[q]):
        if qid not in scores:
            continue
        if has_ans[qid]:
            score += scores[qid]
        elif preds.get(qid):
            score -= 1
        if score > best:
            best, best_thresh = score, na_probs[qid]
    return 100.0 * best / len(scores), best_thresh


def evaluate_v2(dataset_json_or_path, predictions, na_probs=None, na_prob_thresh=1.0):
    """Official SQuAD v2.0 evaluation.

    Args:
      dataset_json_or_path: path to the SQuAD JSON, its parsed dict, or its "data" list.
      predictions: {qas_id: answer text, "" for no answer} or a path to such a JSON file.
      na_probs: optional {qas_id: float} null probability / null odds (or a path); missing ids count 0.
      na_prob_thresh: float, predict "no answer" when na_probs[qid] exceeds it.

    Returns:
      dict with "exact", "f1", "total", then "HasAns_exact/_f1/_total" and "NoAns_exact/_f1/_total" when
      such questions exist, then "best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh" when
      na_probs is given. Scores are percentages.

    Raises:
      ValueError: the dataset, predictions or na_probs are not in the expected format.
    """
    questions = _questions(dataset_json_or_path)
    preds = _predictions(predictions, questions)
    probs = _load(na_probs, "na_probs") if na_probs is not None else {}
    if not isinstance(probs, dict):
        raise ValueError(f"na_probs must be a dict {{qas_id: float}}, got {type(probs).__name__}")
    exact_raw, f1_raw, has_ans = _raw_scores_v2(questions, preds)
    exact = _apply_threshold(exact_raw, probs, has_ans, na_prob_thresh)
    f1 = _apply_threshold(f1_raw, probs, has_ans, na_prob_thresh)
    report = _summary(exact, f1, [q for q, _ in questions])
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        qids = [q for q, _ in questions if has_ans[q] == wanted]
        if qids:
            report.update({f"{prefix}_{k}": v for k, v in _summary(exact, f1, qids).items()})
    if na_probs is not None:
        report["best_exact"], report["best_exact_thresh"] = _best_threshold(preds, exact_raw, probs, has_ans)
        report["best_f1"], report["best_f1_thresh"] = _best_threshold(preds, f1_raw, probs, has_ans)
    return report
