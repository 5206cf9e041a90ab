"""The one prediction interface: an exported model in Paddle Inference, text in, answers / labels out.

Owns: configuring Paddle Inference for a device and precision (`make_config`: oneDNN, IR optimisation and
math-library threads on CPU; the GPU config on GPU; bf16 and int8 where they apply), loading an export and
running it in length buckets (`ExportedModel`, shared by both heads; in the precision asked for, or with
"auto", the default, in the one `inference.precision_auto` chooses from the export's records), turning
(question, context) pairs into `Answer`s with character offsets into the context (`QAPredictor.answer`,
SQuAD), and texts or text pairs into labels with probabilities or a score (`ClassifierPredictor.classify`,
GLUE); `load_predictor` picks the class from the export's settings.
Does not own: windows / features (`data.features.squad`, `data.features.glue`), choosing spans from logits
(`tasks.squad_postprocess`), writing the model directory (`inference.export`) or serving HTTP
(`inference.server`). run_squad.py's evaluation, prediction and --question modes and the server all go
through these classes.

Length bucketing: windows are sorted by real length (stable), cut into batches, and each batch is padded
only to its longest row rounded up to `BUCKET_MULTIPLE` tokens; outputs go back to feature order. The
attention mask hides padding, so a window's logits do not depend on its batch (tests compare bucketed
with unbucketed full-length prediction).

A `QAPredictor` is safe to call from several threads: runs are serialised by a lock (a Paddle predictor
is not re-entrant); the server gathers requests into batches instead of running them side by side.
"""
import dataclasses
import logging
import os
import re
import sys
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import paddle.inference as paddle_infer

from data.features.glue import STSB_RANGE, GlueExample, task_spec
from data.features.glue import batch_of_rows as glue_batch
from data.features.glue import examples_to_features as glue_features
from data.features.squad import (PREDICT_ONLY_KEYS, SquadExample, batch_of_rows, examples_to_features,
                                 split_on_whitespace)
from inference import model_dir as layout
from inference.precision_auto import AUTO, choose_precision, cpu_facts
from tasks.squad_postprocess import postprocess_predictions
from tokenizer import BertTokenizer
from utils.logger import native_stderr, progress
from utils.preflight import default_threads as cores_share
from utils.runtime import cpu_bf16_support

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "int8")
DEVICES = ("cpu", "gpu")
DEFAULT_BATCH_SIZE = 8
BUCKET_MULTIPLE = 16     # windows are padded to a multiple of this many tokens within their bucket
NBEST_POOL = 20          # candidates the answer's probability is computed over (run_squad's --n-best-size)
PAD_LOGIT = -10000.0     # logit of padding positions (never a valid answer); as tasks.squad.PAD_LOGIT
GPU_MEMORY_POOL_MB = 256
# oneDNN int8 runs only the fully connected layers (the weight matmuls, ~90 % of BERT's work): an int8
# attention matmul with the fused mask add has only oneDNN's reference kernel on AVX2 CPUs (measured:
# 17 s per layer and batch instead of milliseconds), and the activations between them stay fp32.
INT8_OPS = ("fc",)


@dataclasses.dataclass
class Answer:
    """The best answer to one question.

    Fields:
      text: the answer, exactly `context[start:end]` ("" when the model found no span).
      score: its probability among the n-best candidates (softmax of start + end logits over
        the best NBEST_POOL distinct spans, as run_squad's n-best list).
      start, end: character offsets into the context (end exclusive).
      nbest: the first n_best candidates as dicts with text, probability, start, end, start_logit,
        end_logit (the answer first).
    """
    text: str
    score: float
    start: int
    end: int
    nbest: list = dataclasses.field(default_factory=list)

    def to_dict(self):
        return dataclasses.asdict(self)


def default_threads():
    """Math-library threads when none are asked for: OMP_NUM_THREADS (utils.preflight sets it)."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return cores_share()


def _check_precision(precision, device):
    """Raises ValueError when `precision` cannot run on `device` here (one sentence saying why)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision '{precision}' is not one of {', '.join(PRECISIONS)}")
    if device not in DEVICES:
        raise ValueError(f"device '{device}' is not one of {', '.join(DEVICES)}")
    if device == "gpu" and precision != "fp32":
        raise ValueError(f"precision '{precision}' is a CPU (oneDNN) route; use fp32 on GPU")
    if precision == "bf16":

        support = cpu_bf16_support()
        if not support.usable:
            raise ValueError(f"precision bf16: {support.reason}; use fp32 (or int8)")
        if not support.native:
            logger.warning("precision bf16: this CPU has no AVX512-BF16/AMX-BF16, oneDNN emulates bf16 and "
                           "may be slower than fp32")


def make_config(model_file, params_file, *, precision="fp32", device="cpu", threads=None, ir_optim=True):
    """A paddle.inference.Config for one exported program.

    CPU: oneDNN on, IR optimisation (operator fusion) on, `threads` math-library threads; bf16 adds
    `enable_mkldnn_bfloat16`, int8 (a model from `inference.quantize`) `enable_mkldnn_int8`, which turns
    its quantize/dequantize ops into oneDNN int8 kernels. GPU: the CUDA config with a memory pool.

    Raises:
      ValueError: as `_check_precision`.
    """
    _check_precision(precision, device)
    config = paddle_infer.Config(model_file, params_file)
    config.switch_ir_optim(ir_optim)
    config.enable_memory_optim()
    config.disable_glog_info()
    if device == "gpu":
        config.enable_use_gpu(GPU_MEMORY_POOL_MB, 0)
        return config
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(threads or default_threads())
    config.enable_mkldnn()
    if precision == "bf16":
        config.enable_mkldnn_bfloat16()
    elif precision == "int8":
        config.enable_mkldnn_int8(set(INT8_OPS))
    return config


# oneDNN's int8 and bf16 passes report every op type they looked at, on stderr from C++ ("---    quantized 0
# conv2d ops", "---    marked 84 operators to bfloat16", coloured), and `disable_glog_info` does not reach them.
_PASS_REPORT = re.compile(r"^(?:\x1b\[[0-9;]*m)?---\s+(quantized|squashed|marked|added) (\d+) (.*?)\s*"
                          r"(?:\x1b\[[0-9;]*m)?\s*$")


def create_predictor(config, precision="fp32"):
    """`paddle.inference.create_predictor`, with an int8 or bf16 model's oneDNN pass report (about 12-32 lines,
    most "quantized 0 <op type> ops" or "squashed 0 ...", nothing a user can act on) reduced to one summary.

    Returns:
      (predictor, summary str: e.g. "13 fc ops in int8", "84 ops in bf16"; "" in fp32). Anything else the
      passes write to stderr is written back unchanged.
    """
    if precision == "fp32":
        return paddle_infer.create_predictor(config), ""
    with native_stderr() as captured:
        predictor = paddle_infer.create_predictor(config)
    kept, converted = [], []
    for line in captured.text.splitlines():
        found = _PASS_REPORT.match(line)
        if found is None:
            kept.append(line)
        elif found.group(1) == "quantized" and int(found.group(2)) > 0:
            converted.append(f"{found.group(2)} {found.group(3)}")
        elif found.group(1) == "marked" and int(found.group(2)) > 0:  # "marked 84 operators to bfloat16"
            converted.append(f"{found.group(2)} ops")
    if kept:
        sys.stderr.write("\n".join(kept) + "\n")
    return predictor, (", ".join(converted) or "no op") + f" in {precision}"


def _word_starts(context, num_words):
    """Character offset of each whitespace-split word of `context` (as split_on_whitespace splits it)."""
    _, char_to_word = split_on_whitespace(context)
    # char_to_word is non-decreasing and first reaches j at word j's first character.
    return np.searchsorted(np.asarray(char_to_word, dtype=np.int64), np.arange(num_words), side="left")


def _context_span(doc_tokens, starts, begin, end):
    """(start, end) in the context of the joined-document span [begin, end) from squad_postprocess."""
    if end <= begin:
        return 0, 0
    joined_starts = np.cumsum([0] + [len(w) + 1 for w in doc_tokens[:-1]])

    def to_context(pos):  # pos is a character of a word (never a joining space)
        word = int(np.searchsorted(joined_starts, pos, side="right")) - 1
        return int(starts[word]) + pos - int(joined_starts[word])

    return to_context(begin), to_context(end - 1) + 1


class ExportedModel:
    """What every exported model shares, whatever its head: the manifest-checked load, the Paddle Inference
    config (device, precision, threads), the tokenizer, one locked `run` and length-bucketed batches.
    `QAPredictor` (SQuAD) and `ClassifierPredictor` (GLUE) add what their outputs mean; `load_predictor`
    picks the right one for a directory.

    Attributes:
      info: dict with model_name, task, precision (the one running), precision_choice (why: "asked for", or
        auto's reason), device, threads, max_seq_length, do_lower_case, source_checkpoint, manifest_sha256,
        model_dir, batch_size, and the head's own fields (see the subclasses).
      settings: inference.model_dir.ExportSettings.
      batch_size: sequences per run.
      bucket_multiple: a bucket's sequences are padded to a multiple of this (BUCKET_MULTIPLE).
    """

    def __init__(self, predictor, settings, tokenizer, info, batch_size=DEFAULT_BATCH_SIZE):
        self._predictor = predictor
        self._inputs = {name: predictor.get_input_handle(name) for name in predictor.get_input_names()}
        self._outputs = [predictor.get_output_handle(name) for name in predictor.get_output_names()]
        self._lock = threading.Lock()
        self.settings, self.tokenizer, self.info, self.batch_size = settings, tokenizer, info, batch_size
        self.bucket_multiple = BUCKET_MULTIPLE

    @classmethod
    def _check_task(cls, settings, model_dir):
        """Raises ValueError when the export's head is not the one this class runs."""

    @classmethod
    def _task_info(cls, settings):
        """The head's own entries of `info`."""
        return {}

    @classmethod
    def load(cls, model_dir, *, threads=None, precision=AUTO, device="cpu", batch_size=DEFAULT_BATCH_SIZE):
        """Load an export directory (checked against its manifest first).

        Args:
          model_dir: str, written by `python -m inference.export`.
          threads: int or None (OMP_NUM_THREADS); math-library threads on CPU.
          precision: "auto" (the fastest precision this CPU runs natively whose accuracy the export recorded
            within tolerance of fp32: `inference.precision_auto`; one log line and info["precision_choice"]
            say which and why) | "fp32" | "bf16" (CPUs with oneDNN bf16) | "int8" (exports with a quantized
            model).
          device: "cpu" | "gpu".
          batch_size: sequences (windows) per run.

        Raises:
          ValueError: a bad or changed directory (see `inference.model_dir.read_manifest`), an export of
            another task than this class runs (naming the class that runs it), an unknown or unavailable
            precision (saying why), int8 without a quantized model, bad threads/batch size.
        """
        for name, value in (("threads", threads), ("batch_size", batch_size)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        manifest, manifest_sha = layout.read_manifest(model_dir)
        settings = layout.read_settings(model_dir)
        cls._check_task(settings, model_dir)
        choice = choose_precision(precision, manifest, device=device,
                                  cpu=cpu_facts() if precision == AUTO else None)
        if precision == AUTO:
            logger.info("%s", choice.reason)
        precision = choice.precision
        prefix = layout.MODEL_PREFIX
        if precision == "int8":
            if not all(n in manifest["files"] for n in layout.INT8_FILES):
                raise ValueError(f"'{model_dir}' has no int8 model: export it with --int8-calibration-file "
                                 f"<SQuAD training JSON> (python -m inference.export), or use fp32")
            prefix = layout.INT8_PREFIX
        threads = threads or default_threads()
        config = make_config(os.path.join(model_dir, prefix + ".pdmodel"),
                             os.path.join(model_dir, prefix + ".pdiparams"), precision=precision,
                             device=device, threads=threads)
        predictor, converted = create_predictor(config, precision)
        tokenizer = BertTokenizer(os.path.join(model_dir, layout.VOCAB_FILE), do_lower_case=settings.do_lower_case)
        info = {"model_name": settings.model_name, "task": settings.task, "precision": precision,
                "precision_choice": choice.reason, "device": device,
                "threads": threads, "max_seq_length": settings.max_seq_length, **cls._task_info(settings),
                "do_lower_case": settings.do_lower_case, "source_checkpoint": manifest.get("source_checkpoint"),
                "manifest_sha256": manifest_sha, "model_dir": os.path.abspath(model_dir), "batch_size": batch_size}
        logger.info("loaded %s %s (%s, %s, %d threads%s) from %s", settings.model_name, settings.task, precision,
                    device, threads, f"; {converted}" if converted else "", model_dir)
        return cls(predictor, settings, tokenizer, info, batch_size)

    # ------------------------------------------------------------------------------------------ running
    def run(self, feed):
        """The program's outputs (a tuple of float32 arrays, in settings.fetch_names order) for one feed
        dict (input_ids, token_type_ids int64 [B, L], attention_mask int64 [B, 1, 1, L])."""
        with self._lock:
            for name, handle in self._inputs.items():
                handle.reshape(feed[name].shape)
                handle.copy_from_cpu(np.ascontiguousarray(feed[name]))
            self._predictor.run()
            return tuple(out.copy_to_cpu() for out in self._outputs)

    def batches(self, seq_lengths, length, batch_size=None, *, bucket=True):
        """How a run over sequences of `seq_lengths` (real tokens each, arrays `length` wide) is cut.

        bucket=True sorts the rows by length (stable) and pads each batch only to its longest row, rounded up
        to `bucket_multiple`; False keeps feature order at full length (the reference behaviour).

        Returns:
          list of (row indices int array, columns to keep).
        """
        batch_size = batch_size or self.batch_size
        order = np.argsort(seq_lengths, kind="stable") if bucket else np.arange(len(seq_lengths))
        out = []
        for i in range(0, len(order), batch_size):
            rows = order[i:i + batch_size]
            cols = length
            if bucket:
                longest = int(seq_lengths[rows].max())
                cols = min(length, -(-longest // self.bucket_multiple) * self.bucket_multiple)
            out.append((rows, cols))
        return out


class QAPredictor(ExportedModel):
    """A fine-tuned SQuAD model exported by `inference.export`, run by Paddle Inference.

    Attributes: as ExportedModel; `info` adds doc_stride and max_query_length.
    """

    @classmethod
    def _check_task(cls, settings, model_dir):
        if not settings.is_squad:
            raise ValueError(f"'{model_dir}' is a GLUE {settings.task} classifier, not a SQuAD model: it "
                             "classifies text (inference.predictor.ClassifierPredictor, the server's "
                             "/v1/classify), it does not answer questions")

    @classmethod
    def _task_info(cls, settings):
        return {"doc_stride": settings.doc_stride, "max_query_length": settings.max_query_length}

    def predict_logits(self, features, batch_size=None, *, bucket=True, show_progress=False):
        """Start/end logits of every window, in feature order (every position past a window's real
        length holds PAD_LOGIT, however its batch was padded).

        Args:
          features: data.features.squad.SquadFeatures (built with this model's settings).
          batch_size: windows per run (default self.batch_size).
          bucket: True sorts windows by length and pads each batch to its longest row (rounded up to
            BUCKET_MULTIPLE); False runs them in order at full length (the reference behaviour).
          show_progress: draw a progress bar with an ETA (long files).

        Returns:
          (start float32 [N, L], end float32 [N, L], stats dict: e2e_inference_time (s),
          inference_sequences_per_second, padded_tokens / real_tokens of the run).
        """
        n, length = len(features), features.max_seq_length
        start_all = np.full((n, length), PAD_LOGIT, np.float32)
        end_all = np.full((n, length), PAD_LOGIT, np.float32)
        begin, padded = time.perf_counter(), 0
        batches = self.batches(features.seq_lengths, length, batch_size, bucket=bucket)
        for rows, cols in progress(batches, desc="predicting", unit="batch", disable=None if show_progress else True):
            feed = {k: np.ascontiguousarray(v[..., :cols]) for k, v in
                    batch_of_rows(features, rows, is_training=False).items() if k not in PREDICT_ONLY_KEYS}
            start, end = self.run(feed)
            # Positions past a window's real length hold whatever the model computed there, which depends
            # on how far its batch was padded: masked, so an answer and its score never depend on the batch
            # it shared (or on bucketing).
            padding = np.arange(cols)[None, :] >= features.seq_lengths[rows][:, None]
            start_all[rows, :cols] = np.where(padding, PAD_LOGIT, start)
            end_all[rows, :cols] = np.where(padding, PAD_LOGIT, end)
            padded += cols * len(rows)
        elapsed = time.perf_counter() - begin
        stats = {"e2e_inference_time": elapsed, "inference_sequences_per_second": n / max(elapsed, 1e-9),
                 "padded_tokens": padded, "real_tokens": int(features.seq_lengths.sum())}
        return start_all, end_all, stats

    # ------------------------------------------------------------------------------------------ answers
    def featurize(self, examples):
        """Windows of prediction examples with this model's tokenizer and lengths."""
        s = self.settings
        return examples_to_features(list(examples), self.tokenizer, s.max_seq_length, s.doc_stride,
                                    s.max_query_length, is_training=False)

    def answer(self, items: Sequence[Tuple[str, str]], *, n_best: int = 1, max_answer_length: int = 30,
               version_2_with_negative: bool = False, null_score_diff_threshold: float = 0.0) -> List[Answer]:
        """Answer questions about contexts.

        Args:
          items: sequence of (question, context) strings.
          n_best: candidates kept in each Answer.nbest (>= 1).
          max_answer_length: longest answer in WordPieces (>= 1).
          version_2_with_negative, null_score_diff_threshold: SQuAD 2.0 models: answer "" (start = end =
            0) when the null score beats the best span by more than the threshold.

        Returns:
          one Answer per item, in order.

        Raises:
          ValueError: not a sequence of string pairs, an empty question or context (naming the item), or
            non-positive n_best / max_answer_length.
        """
        for name, value in (("n_best", n_best), ("max_answer_length", max_answer_length)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        examples, starts = [], []
        for index, item in enumerate(items):
            if (not isinstance(item, (tuple, list)) or len(item) != 2
                    or not all(isinstance(x, str) for x in item)):
                raise ValueError(f"item {index}: expected a (question, context) pair of strings")
            question, context = item
            if not question.strip():
                raise ValueError(f"item {index}: the question is empty")
            doc_tokens, _ = split_on_whitespace(context)
            if not doc_tokens:
                raise ValueError(f"item {index}: the context is empty")
            examples.append(SquadExample(str(index), question, doc_tokens))
            starts.append(_word_starts(context, len(doc_tokens)))
        if not examples:
            return []
        features = self.featurize(examples)
        start, end, _ = self.predict_logits(features)
        preds, nbest, _ = postprocess_predictions(
            examples, features, start, end, n_best_size=max(n_best, NBEST_POOL), max_answer_length=max_answer_length,
            do_lower_case=self.settings.do_lower_case, version_2_with_negative=version_2_with_negative,
            null_score_diff_threshold=null_score_diff_threshold, with_offsets=True)
        answers = []
        for example, word_starts, (_, context) in zip(examples, starts, items):
            entries = []
            for entry in nbest[example.qas_id]:
                a, b = _context_span(example.doc_tokens, word_starts, *entry["doc_offsets"])
                entries.append({"text": context[a:b], "probability": entry["probability"], "start": a, "end": b,
                                "start_logit": entry["start_logit"], "end_logit": entry["end_logit"],
                                "_chosen": entry["text"] == preds[example.qas_id]})
            best = next(e for e in entries if e["_chosen"])  # the prediction is always one of the n-best
            for e in entries:
                del e["_chosen"]
            answers.append(Answer(best["text"], best["probability"], best["start"], best["end"], entries[:n_best]))
        return answers


@dataclasses.dataclass
class Classification:
    """The model's verdict on one text or text pair.

    Fields:
      label: the predicted label string (a GLUE label, e.g. "1" or "entailment"); None for regression.
      probabilities: {label: softmax probability} over every label, in label order (empty for regression).
      score: the regression task's (STS-B) similarity in [0, 5], clipped as GLUE's submission file is; None
        for classification.
    """
    label: Optional[str]
    probabilities: Dict[str, float] = dataclasses.field(default_factory=dict)
    score: Optional[float] = None

    def to_dict(self):
        """The JSON form: {"label", "probabilities"} or {"score"}."""
        if self.score is not None:
            return {"score": self.score}
        return {"label": self.label, "probabilities": dict(self.probabilities)}


def softmax(logits):
    """Row-wise softmax of [N, C] logits in float64 (max subtracted first, so large logits do not overflow)."""
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


class ClassifierPredictor(ExportedModel):
    """A fine-tuned GLUE model (classification, or STS-B regression) exported by `inference.export`.

    Texts become features through run_glue's own code (`data.features.glue.examples_to_features`:
    `[CLS] a [SEP] (b [SEP])`, the longer side of a pair truncated first), run in length buckets; the
    attention mask hides padding, so an output does not depend on the batch it shared.

    Attributes: as ExportedModel; `info` adds labels, regression and pair (True: the task classifies
    sentence pairs).
    """

    @classmethod
    def _check_task(cls, settings, model_dir):
        if settings.is_squad:
            raise ValueError(f"'{model_dir}' is a SQuAD question-answering model, not a GLUE classifier: it "
                             "answers questions (inference.predictor.QAPredictor, the server's /v1/answer)")

        spec = task_spec(settings.task)
        if tuple(spec.labels or ()) != tuple(settings.labels) or spec.is_regression != settings.regression:
            raise ValueError(f"'{model_dir}': settings.json's labels {list(settings.labels)} are not "
                             f"{spec.name}'s {list(spec.labels or ())}; re-export the model")

    @classmethod
    def _task_info(cls, settings):

        return {"labels": list(settings.labels), "regression": settings.regression,
                "pair": task_spec(settings.task).train.text_b is not None}

    @property
    def spec(self):
        """data.features.glue.TaskSpec of the exported task."""
        return task_spec(self.settings.task)

    @property
    def is_pair(self):
        """True when the task classifies sentence pairs (MRPC, MNLI, ...), False for single sentences."""
        return self.info["pair"]

    def featurize(self, items):
        """GlueFeatures of `items` with this model's tokenizer and max_seq_length.

        Args:
          items: sequence of strings (single-sentence tasks) or (text_a, text_b) string pairs (pair tasks).

        Raises:
          ValueError: an item of the wrong kind for this task, or an empty text (naming the item).
        """
        examples = []
        for index, item in enumerate(items):
            if self.is_pair:
                if (not isinstance(item, (tuple, list)) or len(item) != 2
                        or not all(isinstance(x, str) for x in item)):
                    raise ValueError(f"item {index}: {self.spec.name} classifies sentence pairs: expected a "
                                     "(text_a, text_b) pair of strings")
                text_a, text_b = item
            else:
                if not isinstance(item, str):
                    raise ValueError(f"item {index}: {self.spec.name} classifies single sentences: expected a "
                                     "string")
                text_a, text_b = item, None
            for name, text in (("text_a", text_a), ("text_b", text_b)):
                if text is not None and not text.strip():
                    raise ValueError(f"item {index}: {name if self.is_pair else 'the text'} is empty")
            examples.append(GlueExample(str(index), text_a, text_b))
        return glue_features(examples, self.tokenizer, self.spec, self.settings.max_seq_length)

    def predict_logits(self, features, batch_size=None, *, bucket=True, show_progress=False):
        """The classifier's outputs of every row, in feature order.

        Args:
          features: data.features.glue.GlueFeatures (built with this model's max_seq_length).
          batch_size: rows per run (default self.batch_size).
          bucket: as `ExportedModel.batches`.
          show_progress: draw a progress bar with an ETA (long files).

        Returns:
          (float32 [N, num_labels] logits (STS-B: [N, 1] scores), stats dict: e2e_inference_time (s),
          inference_sequences_per_second, padded_tokens / real_tokens of the run).
        """
        n, length = len(features), features.max_seq_length
        out = np.zeros((n, self.spec.num_labels), np.float32)
        begin, padded = time.perf_counter(), 0
        batches = self.batches(features.seq_lengths, length, batch_size, bucket=bucket)
        for rows, cols in progress(batches, desc="classifying", unit="batch", disable=None if show_progress else True):
            feed = {k: np.ascontiguousarray(v[..., :cols]) for k, v in
                    glue_batch(features, rows, with_labels=False).items()}
            (out[rows],) = self.run(feed)
            padded += cols * len(rows)
        elapsed = time.perf_counter() - begin
        stats = {"e2e_inference_time": elapsed, "inference_sequences_per_second": n / max(elapsed, 1e-9),
                 "padded_tokens": padded, "real_tokens": int(features.seq_lengths.sum())}
        return out, stats

    def decide(self, logits):
        """Classifications of [N, num_labels] outputs: argmax label + softmax probabilities, or the
        STS-B score clipped to [0, 5]."""
        if self.settings.regression:
            return [Classification(None, score=float(np.clip(v, *STSB_RANGE))) for v in logits[:, 0]]
        labels = self.settings.labels
        return [Classification(labels[int(np.argmax(row))], {label: float(p) for label, p in zip(labels, row)})
                for row in softmax(logits)]

    def classify(self, items):
        """Classify texts (single-sentence tasks) or (text_a, text_b) pairs (pair tasks).

        Returns:
          one Classification per item, in order ([] for no items).

        Raises:
          ValueError: as `featurize`.
        """
        items = list(items)
        if not items:
            return []
        logits, _ = self.predict_logits(self.featurize(items))
        return self.decide(logits)


def load_predictor(model_dir, **kwargs):
    """The predictor of whatever head an export holds: QAPredictor (SQuAD) or ClassifierPredictor (GLUE).

    Args:
      model_dir: str, written by `python -m inference.export`.
      **kwargs: as `ExportedModel.load` (threads, precision, device, batch_size).

    Raises:
      ValueError: as `ExportedModel.load`.
    """
    if not layout.is_export_dir(model_dir):
        layout.read_manifest(model_dir)  # raises the message that says what the directory is missing
    cls = QAPredictor if layout.read_settings(model_dir).is_squad else ClassifierPredictor
    return cls.load(model_dir, **kwargs)
