"""Benchmark: SQuAD feature conversion and post-processing, ours vs a straightforward baseline.

Owns: a plain per-token / per-window Python baseline of the same algorithm (Google `run_squad.py`
semantics, written here from the algorithm as a second implementation), the timing of both in one run,
and the check that both give identical windows and identical predictions.
Does not own: the implementation under test (`data.features.squad`, `tasks.squad_postprocess`).

Ours: `tokenizer.BertTokenizer` on each distinct word once, numpy windows, vectorised candidates.
Baseline: `tokenizer.FullTokenizer` (pure Python) on every doc token, Python lists and dicts per window,
`_check_is_max_context`-style loops, per-candidate `get_final_text` with a fresh basic tokenization.
Logits are synthetic (seeded normal), so the predictions are meaningless but exercise every branch.

Usage (from the repo root):
  python -m benchmarks.bench_squad [--dev-file data/download/squad/v1.1/dev-v1.1.json] \
      [--vocab-file vocab/bert-base-uncased-vocab.txt] [--limit 2000] [--check-training 1000]
"""
import utils.preflight  # noqa: F401  -- zlib before paddle, OMP threads default; must stay first
import collections
import json
import math
import os
import sys
import tempfile
import time

import numpy as np

from benchmarks.default_inputs import default_squad_dev, default_vocab
from data.features.squad import FeatureParams, examples_to_features, read_examples
from tasks.squad_postprocess import postprocess_predictions
from tokenizer import BasicTokenizer, BertTokenizer, FullTokenizer
from utils.cli import ArgumentParser
from utils.logger import init_logging


# ------------------------------------------------------------------------------- baseline: features
def _baseline_max_context(spans, k, position):
    best_score, best_index = None, None
    for index, (start, length) in enumerate(spans):
        end = start + length - 1
        if position < start or position > end:
            continue
        score = min(position - start, end - position) + 0.01 * length
        if best_score is None or score > best_score:
            best_score, best_index = score, index
    return best_index == k


def _baseline_answer_span(example, all_doc_tokens, orig_to_tok, tokenizer):
    if example.is_impossible:
        return -1, -1
    start = orig_to_tok[example.start_position]
    end = (orig_to_tok[example.end_position + 1] - 1 if example.end_position < len(example.doc_tokens) - 1
           else len(all_doc_tokens) - 1)
    target = " ".join(tokenizer.tokenize(example.orig_answer_text))
    for s in range(start, end + 1):
        for e in range(end, s - 1, -1):
            if " ".join(all_doc_tokens[s:e + 1]) == target:
                return s, e
    return start, end


def _baseline_window(example, query, all_doc_tokens, tok_to_orig, spans, k, answer, tokenizer, p):
    start, length = spans[k]
    tokens = ["[CLS]"] + query + ["[SEP]"]
    segments = [0] * len(tokens)
    to_orig, max_ctx = {}, {}
    for i in range(length):
        to_orig[len(tokens)] = tok_to_orig[start + i]
        max_ctx[len(tokens)] = _baseline_max_context(spans, k, start + i)
        tokens.append(all_doc_tokens[start + i])
        segments.append(1)
    tokens.append("[SEP]")
    segments.append(1)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    mask = [1] * len(ids)
    while len(ids) < p.max_seq_length:
        ids.append(0)
        mask.append(0)
        segments.append(0)
    positions = (0, 0)
    if answer is not None and not example.is_impossible and start <= answer[0] and answer[1] <= start + length - 1:
        positions = (answer[0] - start + len(query) + 2, answer[1] - start + len(query) + 2)
    return {"tokens": tokens, "input_ids": ids, "input_mask": mask, "segment_ids": segments,
            "token_to_orig_map": to_orig, "token_is_max_context": max_ctx, "positions": positions}


def baseline_features(examples, tokenizer, p, is_training):
    """Google-style conversion: list of per-window dicts (plus example_index / doc_span_index)."""
    out = []
    for index, example in enumerate(examples):
        query = tokenizer.tokenize(example.question_text)[:p.max_query_length]
        tok_to_orig, orig_to_tok, all_doc_tokens = [], [], []
        for i, word in enumerate(example.doc_tokens):
            orig_to_tok.append(len(all_doc_tokens))
            for piece in tokenizer.tokenize(word):
                tok_to_orig.append(i)
                all_doc_tokens.append(piece)
        answer = _baseline_answer_span(example, all_doc_tokens, orig_to_tok, tokenizer) if is_training else None
        room, spans, start = p.max_seq_length - len(query) - 3, [], 0
        while start < len(all_doc_tokens):
            length = min(len(all_doc_tokens) - start, room)
            spans.append((start, length))
            if start + length == len(all_doc_tokens):
                break
            start += min(length, p.doc_stride)
        for k in range(len(spans)):
            window = _baseline_window(example, query, all_doc_tokens, tok_to_orig, spans, k, answer, tokenizer, p)
            window.update(example_index=index, doc_span_index=k)
            out.append(window)
    return out


def check_features_equal(ours, base):
    """Raise AssertionError at the first window where the two implementations differ."""
    assert len(ours) == len(base), f"window count: ours {len(ours)} vs baseline {len(base)}"
    for row, w in enumerate(base):
        n = int(ours.seq_lengths[row])
        to_orig = np.full(ours.max_seq_length, -1)
        max_ctx = np.zeros(ours.max_seq_length, bool)
        for pos, word in w["token_to_orig_map"].items():
            to_orig[pos], max_ctx[pos] = word, w["token_is_max_context"][pos]
        checks = {"tokens": ours.tokens(row) == w["tokens"],
                  "input_ids": ours.input_ids[row].tolist() == w["input_ids"],
                  "input_mask": n == sum(w["input_mask"]),
                  "segment_ids": ours.token_type_ids[row].tolist() == w["segment_ids"],
                  "token_to_orig": (ours.token_to_orig[row] == to_orig).all(),
                  "max_context": (ours.token_is_max_context[row] == max_ctx).all(),
                  "positions": (int(ours.start_positions[row]), int(ours.end_positions[row])) == w["positions"],
                  "indexes": (int(ours.example_index[row]), int(ours.doc_span_index[row]))
                  == (w["example_index"], w["doc_span_index"])}
        bad = [name for name, ok in checks.items() if not ok]
        assert not bad, f"window {row} (example {w['example_index']}) differs in {bad}"


# ---------------------------------------------------------------------------- baseline: post-process
def _baseline_final_text(pred_text, orig_text, basic):
    tok_text = " ".join(basic.tokenize(orig_text))
    start = tok_text.find(pred_text)
    if start == -1:
        return orig_text
    end = start + len(pred_text) - 1

    def strip(text):
        chars, ns_to_s = [], {}
        for i, c in enumerate(text):
            if c != " ":
                ns_to_s[len(chars)] = i
                chars.append(c)
        return "".join(chars), ns_to_s

    orig_ns, orig_map = strip(orig_text)
    tok_ns, tok_map = strip(tok_text)
    if len(orig_ns) != len(tok_ns):
        return orig_text
    tok_s_to_ns = {s: ns for ns, s in tok_map.items()}
    if start not in tok_s_to_ns or end not in tok_s_to_ns:
        return orig_text
    return orig_text[orig_map[tok_s_to_ns[start]]:orig_map[tok_s_to_ns[end]] + 1]


def _baseline_prelim(windows, rows, starts, ends, n_best, max_len):
    prelim = []
    for f_index, row in enumerate(rows):
        w, s_log, e_log = windows[row], starts[row].tolist(), ends[row].tolist()
        best_s = [i for i, _ in sorted(enumerate(s_log), key=lambda x: x[1], reverse=True)[:n_best]]
        best_e = [i for i, _ in sorted(enumerate(e_log), key=lambda x: x[1], reverse=True)[:n_best]]
        for s in best_s:
            for e in best_e:
                if s >= len(w["tokens"]) or e >= len(w["tokens"]):
                    continue
                if s not in w["token_to_orig_map"] or e not in w["token_to_orig_map"]:
                    continue
                if not w["token_is_max_context"].get(s, False) or e < s or e - s + 1 > max_len:
                    continue
                prelim.append((f_index, s, e, s_log[s], e_log[e]))
    return sorted(prelim, key=lambda x: x[3] + x[4], reverse=True)


def baseline_postprocess(examples, windows, starts, ends, n_best=20, max_len=30, do_lower_case=True):
    """Google-style write_predictions (v1.1): {qas_id: text}, {qas_id: n-best list}."""
    by_example = collections.defaultdict(list)
    for row, w in enumerate(windows):
        by_example[w["example_index"]].append(row)
    basic = BasicTokenizer(do_lower_case=do_lower_case)
    predictions, nbest_all = {}, {}
    for index, example in enumerate(examples):
        rows = by_example[index]
        nbest, seen = [], set()
        for f_index, s, e, s_logit, e_logit in _baseline_prelim(windows, rows, starts, ends, n_best, max_len):
            if len(nbest) >= n_best:
                break
            w = windows[rows[f_index]]
            tok_text = " ".join(w["tokens"][s:e + 1]).replace(" ##", "").replace("##", "")
            tok_text = " ".join(tok_text.strip().split())
            orig = " ".join(example.doc_tokens[w["token_to_orig_map"][s]:w["token_to_orig_map"][e] + 1])
            text = _baseline_final_text(tok_text, orig, basic)
            if text in seen:
                continue
            seen.add(text)
            nbest.append((text, s_logit, e_logit))
        if not nbest:
            nbest.append(("", 0.0, 0.0))
        top = max(s + e for _, s, e in nbest)
        exps = [math.exp(s + e - top) for _, s, e in nbest]
        nbest_all[example.qas_id] = [{"text": t, "probability": x / sum(exps), "start_logit": s, "end_logit": e}
                                     for (t, s, e), x in zip(nbest, exps)]
        predictions[example.qas_id] = nbest[0][0]
    return predictions, nbest_all


# ------------------------------------------------------------------------------------------------ main
def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - t0


def _training_copy(dev_file, limit, tmp_dir):
    """A training-style file: the first `limit` questions, each keeping only its first gold answer."""
    with open(dev_file, encoding="utf-8") as f:
        data = json.load(f)
    kept = 0
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            paragraph["qas"] = [dict(qa, answers=qa["answers"][:1]) for qa in paragraph["qas"]]
            paragraph["qas"] = paragraph["qas"][:max(0, limit - kept)]
            kept += len(paragraph["qas"])
    path = os.path.join(tmp_dir, "train-like.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    return path


def check_training(dev_file, limit, fast, slow, params):
    """Training-mode windows (targets, improved spans) of both implementations must be identical."""
    with tempfile.TemporaryDirectory() as tmp:
        examples = read_examples(_training_copy(dev_file, limit, tmp), is_training=True)
    check_features_equal(examples_to_features(examples, fast, *params_tuple(params), is_training=True),
                         baseline_features(examples, slow, params, is_training=True))
    return len(examples)


def params_tuple(p):
    return p.max_seq_length, p.doc_stride, p.max_query_length


def parse_args(argv):
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dev-file", default=None, help="SQuAD v1.1 dev JSON (default: data/download/squad/v1.1/"
                        "dev-v1.1.json when downloaded, else the embedded sample data/samples/squad/dev-v1.1.json)")
    parser.add_argument("--vocab-file", default=None,
                        help="uncased BERT vocab (default: vocab/bert-base-uncased-vocab.txt when downloaded, "
                             "else a vocab built once from the embedded sample corpus)")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N questions (0 = all)")
    parser.add_argument("--check-training", type=int, default=1000,
                        help="also compare training-mode windows on the first N questions (0 = skip)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic logits")
    args = parser.parse_args(argv)
    args.dev_file = default_squad_dev() if args.dev_file is None else args.dev_file
    args.vocab_file = default_vocab() if args.vocab_file is None else args.vocab_file
    for name in ("dev_file", "vocab_file"):
        if not os.path.isfile(getattr(args, name)):
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)} does not exist")
    if args.limit < 0 or args.check_training < 0:
        parser.error("--limit and --check-training must be >= 0")
    return args


def main(argv=None):
    """Run the benchmark; returns a dict of timings (seconds) and counts."""
    init_logging()
    args = parse_args(argv)
    params = FeatureParams()
    fast, slow = BertTokenizer(args.vocab_file, do_lower_case=True), FullTokenizer(args.vocab_file, True)
    examples = read_examples(args.dev_file, is_training=False)
    examples = examples[:args.limit] if args.limit else examples
    ours, t_ours = _timed(examples_to_features, examples, fast, *params_tuple(params), is_training=False)
    base, t_base = _timed(baseline_features, examples, slow, params, is_training=False)
    check_features_equal(ours, base)
    rng = np.random.default_rng(args.seed)
    starts = rng.standard_normal((len(ours), params.max_seq_length)).astype(np.float32)
    ends = rng.standard_normal((len(ours), params.max_seq_length)).astype(np.float32)
    (pred, nbest, _), p_ours = _timed(postprocess_predictions, examples, ours, starts, ends)
    (bpred, bnbest), p_base = _timed(baseline_postprocess, examples, base, starts, ends)
    assert pred == bpred, "predictions differ"
    assert nbest == bnbest, "n-best lists differ"
    checked = check_training(args.dev_file, args.check_training, fast, slow, params) if args.check_training else 0
    result = {"questions": len(examples), "windows": len(ours), "features_ours_s": t_ours,
              "features_baseline_s": t_base, "postprocess_ours_s": p_ours, "postprocess_baseline_s": p_base,
              "training_questions_checked": checked}
    _report(result)
    return result


def _report(r):
    rows = [("feature conversion", r["features_ours_s"], r["features_baseline_s"]),
            ("post-processing", r["postprocess_ours_s"], r["postprocess_baseline_s"]),
            ("total", r["features_ours_s"] + r["postprocess_ours_s"],
             r["features_baseline_s"] + r["postprocess_baseline_s"])]
    print(f"{r['questions']} questions -> {r['windows']} windows; outputs identical "
          f"(training windows checked on {r['training_questions_checked']} questions)")
    print(f"{'stage':<20}{'ours s':>9}{'baseline s':>12}{'ours win/s':>12}{'base win/s':>12}{'speed-up':>10}")
    for name, ours, base in rows:
        print(f"{name:<20}{ours:>9.2f}{base:>12.2f}{r['windows'] / ours:>12.0f}{r['windows'] / base:>12.0f}"
              f"{base / ours:>9.1f}x")


if __name__ == "__main__":
    main(sys.argv[1:])
