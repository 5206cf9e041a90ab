"""SQuAD on the fine-tuning layer: its settings, its adapter for `tasks.finetune.FinetuneSession`, the
executor's prediction loop (`--benchmark`, the reference's measurement) and answering one question.

Owns: `SquadSettings` (the validated SQuAD section of a FinetuneConfig), `SquadAdapter` (the SQuAD program,
training batches, export settings, and evaluation: predictions.json / nbest / null_odds through
`tasks.squad_postprocess`, EM/F1 through `tasks.squad_metrics`), `predict_logits` (logits of every window
from the static executor) and the single-question helpers (`single_question_example`, `answer_question`,
`describe_answer`).
Does not own: flags and their validation (run_squad.py), the session and its training loop
(`tasks.finetune`), building programs (`program.build_squad`), features (`data.features.squad`), turning
logits into answers (`tasks.squad_postprocess`) or scoring (`tasks.squad_metrics`).
"""
import dataclasses
import json
import logging
import os
import time
from typing import Optional

import numpy as np

import program
from data.features.squad import (PREDICT_ONLY_KEYS, FeatureParams, SquadExample, batch_of_rows, iterate_batches,
                                 load_or_build_features, split_on_whitespace)
from inference import model_dir as export_layout
from inference.predictor import QAPredictor
from tasks import squad_metrics
from tasks.finetune import trim_batch
from tasks.squad_postprocess import postprocess_predictions

logger = logging.getLogger(__name__)

PAD_LOGIT = -10000.0  # logits of positions cut off by batch trimming (padding: never a valid answer)


@dataclasses.dataclass(frozen=True)
class SquadSettings:
    """The SQuAD section of a FinetuneConfig, validated by run_squad.validate_args.

    Fields: train_file / predict_file (None when not needed); features (data.features.squad.FeatureParams:
    window length, stride, question length; an export's own when predicting with one); version_2_with_negative;
    null_score_diff_threshold; n_best_size; max_answer_length; infer_precision ("fp32" | "bf16" | "int8",
    inference.predictor's names); features_cache_dir; question / context (the single question and its text,
    else None); verbose_logging (print the n-best list with --question).
    """
    train_file: Optional[str]
    predict_file: Optional[str]
    features: FeatureParams
    version_2_with_negative: bool
    null_score_diff_threshold: float
    n_best_size: int
    max_answer_length: int
    infer_precision: str
    features_cache_dir: Optional[str]
    question: Optional[str] = None
    context: Optional[str] = None
    verbose_logging: bool = False

    def inputs(self):
        """(flag, path) of the SQuAD files the run reads."""
        return [("--train-file", self.train_file), ("--predict-file", self.predict_file)]


class SquadAdapter:
    """SQuAD for `tasks.finetune.FinetuneSession` (see `tasks.finetune.TaskAdapter`)."""

    label = "SQuAD"

    def __init__(self, cfg):
        self.cfg = cfg
        self.settings = cfg.settings

    def features(self, path, is_training):
        """(examples, SquadFeatures) of a SQuAD JSON file, from the cache when it holds them."""
        s = self.settings
        return load_or_build_features(path, self.cfg.text.vocab_file, self.cfg.text.do_lower_case, s.features,
                                      s.features_cache_dir, is_training=is_training,
                                      version_2_with_negative=s.version_2_with_negative)

    def build(self, model_cfg, train_cfg, is_training):
        return program.build_squad(model_cfg, train_cfg, is_training=is_training)

    def training_data(self):
        features = self.features(self.settings.train_file, True)[1]
        return features, lambda rows: batch_of_rows(features, rows, is_training=True)

    def export_settings(self, cfg):
        fp = self.settings.features
        return export_layout.ExportSettings(model_name=cfg.model.name, do_lower_case=cfg.text.do_lower_case,
                                            max_seq_length=fp.max_seq_length, doc_stride=fp.doc_stride,
                                            max_query_length=fp.max_query_length)

    def load_export(self, export_dir, device):
        return QAPredictor.load(export_dir, precision=self.settings.infer_precision, device=device,
                                batch_size=self.cfg.schedule.predict_batch_size)

    def predict(self, session, bundle, metrics):
        """Predict --predict-file (predictions.json, nbest, v2 null_odds) and score it with --do-eval; with
        --benchmark only the executor's throughput."""
        cfg, s = self.cfg, self.settings
        examples, features = self.features(s.predict_file, False)
        if cfg.run.benchmark:
            stats = self._executor_benchmark(session.rt.exe, bundle, features)
            metrics.log_summary(stats)
            return stats
        start, end, stats = session.predictor(bundle).predict_logits(features, show_progress=True)
        stats = {k: stats[k] for k in ("e2e_inference_time", "inference_sequences_per_second")}
        metrics.log_summary(stats)
        preds, _, null_odds = postprocess_predictions(
            examples, features, start, end, n_best_size=s.n_best_size, max_answer_length=s.max_answer_length,
            do_lower_case=cfg.text.do_lower_case, version_2_with_negative=s.version_2_with_negative,
            null_score_diff_threshold=s.null_score_diff_threshold, output_dir=cfg.outputs.out_dir)
        results = dict(stats, predictions_file=os.path.join(cfg.outputs.out_dir, "predictions.json"),
                       predictions=preds)
        if cfg.modes.do_eval:
            scores = self._score(preds, null_odds)
            metrics.log_summary(scores)
            results.update(scores)
        return results

    def _executor_benchmark(self, exe, bundle, features):
        """--benchmark: the reference's measurement of the training-time program (warm-up, then timed batches)."""
        infer = bundle.eval_program if self.settings.infer_precision == "fp32" else program.to_bf16_inference(
            bundle.eval_program)
        run = self.cfg.run
        return predict_logits(exe, infer, bundle.eval_fetches, features, self.cfg.schedule.predict_batch_size,
                              (run.benchmark_warmup_steps, run.benchmark_steps))[2]

    def _score(self, preds, null_odds):
        """{"exact_match", "F1"} (+ the v2 breakdown), in percent."""
        s = self.settings
        if not s.version_2_with_negative:
            scores = squad_metrics.evaluate_v1(s.predict_file, preds)
            return {"exact_match": scores["exact_match"], "F1": scores["f1"]}
        scores = squad_metrics.evaluate_v2(s.predict_file, preds, na_probs=null_odds)
        extra = {k: v for k, v in scores.items() if k not in ("exact", "f1")}
        return dict(extra, exact_match=scores["exact"], F1=scores["f1"])


def answer_question(session):
    """--question: the best answer from a fine-tuned model (the caller prints `describe_answer`).

    Returns:
      dict: answer, probability, start, end (character offsets into the context), nbest.
    """
    cfg, s = session.cfg, session.cfg.settings
    example = single_question_example(s.question, s.context)  # its errors name the flags
    bundle = None
    if cfg.model.export_dir is None:
        bundle, _ = session.build()
        session.initialise(bundle, require_head=True)
    answer = session.predictor(bundle).answer(
        [(example.question_text, s.context)], n_best=s.n_best_size, max_answer_length=s.max_answer_length,
        version_2_with_negative=s.version_2_with_negative, null_score_diff_threshold=s.null_score_diff_threshold)[0]
    return {"answer": answer.text, "probability": answer.score, "start": answer.start, "end": answer.end,
            "nbest": answer.nbest}


def predict_logits(exe, program, fetches, features, batch_size, benchmark=None):
    """Start/end logits of every window, in feature order.

    Args:
      exe: executor; parameters initialised.
      program: a for_test program (fp32 `eval_program` or its `to_bf16_inference` copy).
      fetches: dict with "start_logits" and "end_logits" Variables (names are looked up in `program`).
      features: SquadFeatures.
      batch_size: int.
      benchmark: None, or (warmup_batches, measured_batches): stop after both and time only the latter.

    Returns:
      (start float32 [N, L], end float32 [N, L], stats dict with e2e_inference_time and
      inference_sequences_per_second). With benchmark, the logit arrays cover only the batches run.
    """
    n, length = len(features), features.max_seq_length
    start_all = np.full((n, length), PAD_LOGIT, np.float32)
    end_all = np.full((n, length), PAD_LOGIT, np.float32)
    names = [fetches["start_logits"].name, fetches["end_logits"].name]
    row, begin = 0, time.time()
    bench_begin, bench_rows = begin, 0
    for index, batch in enumerate(iterate_batches(features, batch_size, is_training=False)):
        if benchmark and index == benchmark[0]:
            bench_begin, bench_rows = time.time(), row
        if benchmark and index == benchmark[0] + benchmark[1]:
            break
        feed, cols = trim_batch({k: v for k, v in batch.items() if k not in PREDICT_ONLY_KEYS})
        start, end = exe.run(program, feed=feed, fetch_list=names)
        rows = len(batch["unique_ids"])
        start_all[row:row + rows, :cols] = np.asarray(start, np.float32)
        end_all[row:row + rows, :cols] = np.asarray(end, np.float32)
        row += rows
    elapsed = time.time() - begin
    stats = {"e2e_inference_time": elapsed, "inference_sequences_per_second": row / elapsed}
    if benchmark:
        stats["inference_sequences_per_second"] = (row - bench_rows) / max(time.time() - bench_begin, 1e-9)
    return start_all, end_all, stats


def single_question_example(question, context, qas_id="question"):
    """A prediction-mode SquadExample for one question about one context (split as SQuAD contexts are).

    Raises:
      ValueError: empty question or context.
    """
    if not question.strip():
        raise ValueError("--question is empty")
    doc_tokens, _ = split_on_whitespace(context)
    if not doc_tokens:
        raise ValueError("the context is empty")
    return SquadExample(qas_id, question, doc_tokens)


def describe_answer(answer, probability, nbest, verbose=False):
    """Text lines for a single-question answer: the answer and its probability (+ the n-best list)."""
    lines = [f"answer: {answer if answer else '(no answer)'}\tprobability: {probability:.4f}"]
    if verbose:
        lines += [f"  {i + 1}. {json.dumps(e['text'])}\tp={e['probability']:.4f}\t"
                  f"start_logit={e['start_logit']:.3f}\tend_logit={e['end_logit']:.3f}"
                  for i, e in enumerate(nbest)]
    return lines
