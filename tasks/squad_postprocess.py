"""SQuAD post-processing: start/end logits of every window -> answer text, n-best list and null odds.

Owns: choosing answer spans from logits and recovering their original text (Google BERT `run_squad.py`
`write_predictions` / `get_final_text` semantics, reimplemented from the algorithm), plus writing
predictions.json / nbest_predictions.json / null_odds.json when asked. Plain numpy: arrays in, dicts out.
Does not own: running the model, building windows (`data.features.squad`) or scoring (`tasks.squad_metrics`).

Per example, over all of its windows:
  * candidates are the n_best highest start logits x the n_best highest end logits of each window (ties
    broken by position), kept only if both ends are document tokens, end >= start, the span has at most
    max_answer_length tokens and the window is the start token's max-context window;
  * candidates are ranked by start_logit + end_logit (stable), de-duplicated by their final text, and the
    first n_best form the n-best list, whose probabilities are a softmax over those scores;
  * SQuAD 2.0: the null score is min over THIS example's windows of start_logit[0] + end_logit[0] (the
    NVIDIA reference reads it from a stale loop variable); the null span competes in the ranking and ""
    is always in the n-best; null odds = null score - best non-null score, and the prediction is "" iff
    null odds > null_score_diff_threshold.
Differences from Google, all in cases Google itself calls rare: an example with no valid span predicts ""
(Google predicts the literal text "empty"); in v2, an example whose n-best has no non-null answer
predicts "" with null odds `NO_SPAN_NULL_ODDS` (Google crashes there).
"""
import bisect
import collections
import itertools
import logging
import math
import os

import numpy as np

from tokenizer import BasicTokenizer
from utils.checks import is_int
from utils.fs import atomic_write_json

logger = logging.getLogger(__name__)

NO_SPAN_NULL_ODDS = 1e6  # finite, so null_odds.json stays strict JSON; larger than any real score gap


# ---------------------------------------------------------------------------------------- text recovery
def _project(pred_text, words, tok_text):
    """Map `pred_text`, found in `tok_text` (basic tokens of " ".join(words) joined by ' '), back onto
    " ".join(words); the whole joined text when the alignment fails.

    Alignment runs through the space-free versions of both strings, which must have equal length.
    Positions are converted arithmetically (a space-free offset k in word j sits at k + j in the joined
    text), which equals Google's character maps without building them.
    """
    begin, end = _project_span(pred_text, words, tok_text)
    return " ".join(words)[begin:end]


def _project_span(pred_text, words, tok_text):
    """`_project`'s answer as (begin, end) character offsets into " ".join(words) (end exclusive)."""
    orig_text = " ".join(words)
    start = tok_text.find(pred_text)
    if not pred_text or start == -1:
        logger.debug("could not find %r in %r", pred_text, orig_text)
        return 0, len(orig_text)
    end = start + len(pred_text) - 1
    word_starts = list(itertools.accumulate((len(w) for w in words), initial=0))
    if word_starts[-1] != len(tok_text) - tok_text.count(" "):
        logger.debug("length not equal after stripping spaces: %r vs %r", orig_text, tok_text)
        return 0, len(orig_text)
    if tok_text[start] == " " or tok_text[end] == " ":
        return 0, len(orig_text)

    def to_orig(tok_pos):
        ns = tok_pos - tok_text.count(" ", 0, tok_pos)
        return ns + bisect.bisect_right(word_starts, ns, hi=len(words)) - 1

    return to_orig(start), to_orig(end) + 1


def get_final_text(pred_text, orig_text, do_lower_case, basic_tokenizer=None):
    """Project a de-tokenized prediction back onto the original words' text.

    The prediction is normalised WordPiece text (lower-cased, punctuation split off); the original
    words keep case and attached punctuation. We basic-tokenize the original, find the prediction in it,
    and map the character positions back through the space-free versions of both strings. When that
    alignment fails (prediction not found, or lengths differ after removing spaces) the whole original
    text is returned, as Google does.

    Args:
      pred_text: str, e.g. "steve smith".
      orig_text: str, the original words the span covers, joined by " ", e.g. "Steve Smith's".
      do_lower_case: bool, as the model's tokenizer.
      basic_tokenizer: optional `tokenizer.BasicTokenizer(do_lower_case)` to reuse.

    Returns:
      str, a substring of orig_text (e.g. "Steve Smith") or orig_text itself.
    """
    if basic_tokenizer is None:
        basic_tokenizer = BasicTokenizer(do_lower_case=do_lower_case)
    return _project(pred_text, orig_text.split(" "), " ".join(basic_tokenizer.tokenize(orig_text)))


class _BasicTokensOfWords:
    """Basic tokens of each word of a document, computed once per document and per distinct word.

    Basic tokenization never looks across whitespace (cleaning, CJK spacing, case, accents and
    punctuation splitting are all per character or per word), so the tokens of " ".join(words) are the
    concatenation of each word's tokens; caching removes most of post-processing's cost.
    """

    def __init__(self, do_lower_case):
        self._tokenizer = BasicTokenizer(do_lower_case=do_lower_case)
        self._by_word = {}
        self._doc, self._doc_texts = None, None

    def _word(self, word):
        text = self._by_word.get(word)
        if text is None:
            text = self._by_word[word] = " ".join(self._tokenizer.tokenize(word))
        return text

    def text(self, doc_tokens, first, last):
        """" ".join of the basic tokens of doc_tokens[first:last + 1]."""
        if doc_tokens is not self._doc:  # questions of one paragraph share (and arrive with) its tuple
            self._doc, self._doc_texts = doc_tokens, [self._word(w) for w in doc_tokens]
        return " ".join(filter(None, self._doc_texts[first:last + 1]))


def _detokenize(word_pieces):
    text = " ".join(word_pieces).replace(" ##", "").replace("##", "")
    return " ".join(text.strip().split())


# ------------------------------------------------------------------------------------------- candidates
def best_indexes(logits, n_best_size):
    """Indexes of the n_best_size largest values, largest first, lower index first among ties.

    Args:
      logits: float array [L].
      n_best_size: int.

    Returns:
      int64 array [min(L, n_best_size)].
    """
    return np.argsort(-np.asarray(logits, dtype=np.float64), kind="stable")[:n_best_size]


def _window_candidates(start_logits, end_logits, to_orig, max_context, n_best_size, max_answer_length):
    """Valid (start, end) pairs of one window, in Google's loop order (start-major)."""
    starts = best_indexes(start_logits, n_best_size)[:, None]
    ends = best_indexes(end_logits, n_best_size)[None, :]
    valid = ((to_orig[starts] >= 0) & (to_orig[ends] >= 0) & max_context[starts]
             & (ends >= starts) & (ends - starts + 1 <= max_answer_length))
    return np.broadcast_to(starts, valid.shape)[valid], np.broadcast_to(ends, valid.shape)[valid]


def _ranked_candidates(rows, features, start_logits, end_logits, n_best_size, max_answer_length, null_row):
    """Candidates of one example as (row, start, end, start_logit, end_logit) tuples, best first.

    null_row: window whose [CLS] gives the null span (v2), or None.
    """
    parts = []
    for row in rows:
        s, e = _window_candidates(start_logits[row], end_logits[row], features.token_to_orig[row],
                                  features.token_is_max_context[row], n_best_size, max_answer_length)
        parts.append((np.full(len(s), row), s, e))
    if null_row is not None:
        parts.append((np.array([null_row]), np.array([0]), np.array([0])))
    row_ids = np.concatenate([p[0] for p in parts]).astype(np.int64)
    s_idx = np.concatenate([p[1] for p in parts]).astype(np.int64)
    e_idx = np.concatenate([p[2] for p in parts]).astype(np.int64)
    s_logit, e_logit = start_logits[row_ids, s_idx], end_logits[row_ids, e_idx]
    order = np.argsort(-(s_logit + e_logit), kind="stable")
    return [(int(row_ids[k]), int(s_idx[k]), int(e_idx[k]), float(s_logit[k]), float(e_logit[k]))
            for k in order]


def _span_text(example, features, row, start, end, word_tokens):
    """(answer text, (begin, end) character offsets of it in " ".join(example.doc_tokens))."""
    pieces = [features.id_to_token[i] for i in features.input_ids[row, start:end + 1]]
    first, last = int(features.token_to_orig[row, start]), int(features.token_to_orig[row, end])
    words = example.doc_tokens[first:last + 1]
    begin, stop = _project_span(_detokenize(pieces), words, word_tokens.text(example.doc_tokens, first, last))
    # the words before `first`, each followed by one space, come first in the joined document
    base = sum(len(w) for w in example.doc_tokens[:first]) + first
    return " ".join(words)[begin:stop], (base + begin, base + stop)


def _softmax(scores):
    # Plain Python, like the reference, so probabilities match it to the last bit.
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    return [x / total for x in exps]


# ------------------------------------------------------------------------------------------ per example
def _nbest(example, features, candidates, n_best_size, word_tokens, offsets=None):
    """First n_best_size candidates with distinct text, as [text, start_logit, end_logit] lists.

    offsets: None, or a dict filled with text -> (begin, end) in " ".join(example.doc_tokens).
    """
    nbest, seen = [], set()
    for row, start, end, s_logit, e_logit in candidates:
        if len(nbest) >= n_best_size:
            break
        if start > 0:
            text, span = _span_text(example, features, row, start, end, word_tokens)
            if text in seen:
                continue
            if offsets is not None:
                offsets[text] = span
        else:
            text = ""  # the null span ([CLS]); only ever one such candidate
        seen.add(text)
        nbest.append([text, s_logit, e_logit])
    return nbest


def _null_span(rows, start_logits, end_logits):
    """(row, start_logit, end_logit) of the example's window with the smallest [CLS] score (first wins)."""
    scores = start_logits[rows, 0] + end_logits[rows, 0]
    row = int(rows[int(np.argmin(scores))])
    return row, float(start_logits[row, 0]), float(end_logits[row, 0])


def _predict_example(example, rows, features, start_logits, end_logits, opts, word_tokens):
    """(prediction text, n-best json list, null odds or None) for one example."""
    v2 = opts["version_2_with_negative"]
    null = _null_span(rows, start_logits, end_logits) if (v2 and len(rows)) else None
    candidates = _ranked_candidates(rows, features, start_logits, end_logits, opts["n_best_size"],
                                    opts["max_answer_length"], null[0] if null else None) if len(rows) else []
    offsets = {} if opts.get("with_offsets") else None
    nbest = _nbest(example, features, candidates, opts["n_best_size"], word_tokens, offsets)
    if null and all(text for text, _, _ in nbest):
        nbest.append(["", null[1], null[2]])
    if not nbest:
        nbest.append(["", 0.0, 0.0])
    probs = _softmax([s + e for _, s, e in nbest])
    nbest_json = [{"text": t, "probability": p, "start_logit": s, "end_logit": e}
                  for (t, s, e), p in zip(nbest, probs)]
    if offsets is not None:  # the null answer "" has no place in the document: (0, 0)
        for entry in nbest_json:
            entry["doc_offsets"] = offsets.get(entry["text"], (0, 0))
    if not v2:
        return nbest[0][0], nbest_json, None
    best = next((entry for entry in nbest if entry[0]), None)
    if best is None or null is None:
        return "", nbest_json, NO_SPAN_NULL_ODDS
    score_diff = null[1] + null[2] - best[1] - best[2]
    return ("" if score_diff > opts["null_score_diff_threshold"] else best[0]), nbest_json, score_diff


# ------------------------------------------------------------------------------------------------ public
def _check_inputs(examples, features, all_start_logits, all_end_logits, n_best_size, max_answer_length):
    for name, value in (("n_best_size", n_best_size), ("max_answer_length", max_answer_length)):
        if not is_int(value) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    want = (len(features), features.max_seq_length)
    arrays = []
    for name, logits in (("all_start_logits", all_start_logits), ("all_end_logits", all_end_logits)):
        array = np.asarray(logits, dtype=np.float64)
        if array.shape != want:
            raise ValueError(f"{name} has shape {array.shape}; expected {want} (one row per window, in "
                             "feature order: predict without shuffle or drop_last)")
        arrays.append(array)
    if len(features) and int(features.example_index.max()) >= len(examples):
        raise ValueError(f"features refer to example {int(features.example_index.max())} but only "
                         f"{len(examples)} examples were given (features built from other examples?)")
    return arrays


def postprocess_predictions(examples, features, all_start_logits, all_end_logits, n_best_size=20,
                            max_answer_length=30, do_lower_case=True, version_2_with_negative=False,
                            null_score_diff_threshold=0.0, output_dir=None, with_offsets=False):
    """Turn per-window logits into one answer per question.

    Args:
      examples: list of data.features.squad.SquadExample (the list the features were built from).
      features: data.features.squad.SquadFeatures, N windows of length L.
      all_start_logits, all_end_logits: float array [N, L] (float32 or float64), row i = features row i.
      n_best_size: int, candidates per end and size of the n-best list.
      max_answer_length: int, longest answer in WordPiece tokens.
      do_lower_case: bool, as the tokenizer (for aligning text back to the original).
      version_2_with_negative: bool, SQuAD 2.0 null-answer handling.
      null_score_diff_threshold: float, predict "" when null odds exceed it (v2).
      output_dir: str or None; if given, write predictions.json, nbest_predictions.json and (v2)
        null_odds.json there, each atomically.
      with_offsets: bool; if True, every n-best entry also has "doc_offsets": (begin, end), where its text
        is `" ".join(example.doc_tokens)[begin:end]` ((0, 0) for the null answer), so a caller holding
        the original context can give character offsets into it (`inference.predictor` does).

    Returns:
      (predictions {qas_id: text}, nbest {qas_id: [{"text", "probability", "start_logit",
      "end_logit"}, ...]}, null_odds {qas_id: float}, empty unless v2), in example order.

    Raises:
      ValueError: non-positive sizes, logits whose shape does not match the features, or features that
        refer to examples not given.
    """
    start_logits, end_logits = _check_inputs(examples, features, all_start_logits, all_end_logits,
                                             n_best_size, max_answer_length)
    rows_of = collections.defaultdict(list)
    for row, ex_index in enumerate(features.example_index.tolist()):
        rows_of[ex_index].append(row)
    opts = {"n_best_size": n_best_size, "max_answer_length": max_answer_length,
            "version_2_with_negative": version_2_with_negative,
            "null_score_diff_threshold": null_score_diff_threshold, "with_offsets": with_offsets}
    word_tokens = _BasicTokensOfWords(do_lower_case)
    predictions, nbest_all, null_odds = {}, {}, {}
    for index, example in enumerate(examples):
        text, nbest, odds = _predict_example(example, np.asarray(rows_of[index], dtype=np.int64), features,
                                             start_logits, end_logits, opts, word_tokens)
        predictions[example.qas_id], nbest_all[example.qas_id] = text, nbest
        if odds is not None:
            null_odds[example.qas_id] = odds
    if output_dir is not None:
        write_predictions(output_dir, predictions, nbest_all, null_odds if version_2_with_negative else None)
    return predictions, nbest_all, null_odds


def write_predictions(output_dir, predictions, nbest, null_odds=None):
    """Write predictions.json, nbest_predictions.json and (if null_odds is not None) null_odds.json.

    Each file is written atomically, so a reader never sees a half-written prediction file.
    """
    os.makedirs(output_dir, exist_ok=True)
    atomic_write_json(os.path.join(output_dir, "predictions.json"), predictions)
    atomic_write_json(os.path.join(output_dir, "nbest_predictions.json"), nbest)
    if null_odds is not None:
        atomic_write_json(os.path.join(output_dir, "null_odds.json"), null_odds)
    logger.info("wrote %d predictions to %s", len(predictions), output_dir)
