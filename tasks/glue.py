"""What a GLUE run does, as functions of explicit arguments: features, training, evaluation, prediction and
the submission file.

Owns: building a split's features (`load_split`), fine-tuning (`train`, on the shared loop via
`tasks.squad.train` -> `tasks.engine.run_updates`, with GLUE's batches), running the forward over a split
(`predict`), scoring a dev split (`evaluate`: the eval loss and `utils.glue_metrics.task_metrics`), and
writing GLUE's submission file (`write_submission`). Does not own: flags and their validation (run_glue.py),
building programs (`program.build_glue`), reading TSV files (`data.features.glue`) or initialising and saving
parameters (`tasks.squad.init_parameters` / `save_params`, shared by the fine-tuning tasks).

Steps are SQuAD's (`tasks.squad.plan_updates`): an epoch is `ceil(rows per process / batch)` micro-batches,
`gradient_merge_steps` of them per optimizer update, capped by `max_steps`; the LR schedule spans the updates
actually run, with `--warmup-proportion` of them warming up.
"""
import logging
import os
import time

import numpy as np

from data.features.glue import batch_of_rows, examples_to_features, read_examples, split_path
from tasks import glue_metrics
from tasks.squad import train as train_loop
from tasks.squad import trim_batch
from utils.fs import atomic_write_text
from utils.logger import progress

logger = logging.getLogger(__name__)

HEAD_PREFIX = "classifier"
STSB_CLIP = (0.0, 5.0)


def load_split(data_dir, spec, split, tokenizer, max_seq_length):
    """(examples, GlueFeatures) of `<data_dir>/<split>.tsv`. Raises ValueError naming file:line."""
    examples = read_examples(split_path(data_dir, split), spec, split)
    features = examples_to_features(examples, tokenizer, spec, max_seq_length)
    logger.info("%s %s: %d examples, longest %d tokens", spec.name, split, len(examples),
                int(features.seq_lengths.max()))
    return examples, features


def train(exe, bundle, features, opts, rank=0, world_size=1, metrics=None, program=None):
    """Fine-tune on GLUE features: `tasks.squad.train` (the shared loop) with GLUE's labelled batches.

    Args and Returns: as `tasks.squad.train` (features: data.features.glue.GlueFeatures with labels).
    """
    return train_loop(exe, bundle, features, opts, rank, world_size, metrics, program,
                      make_batch=lambda rows: batch_of_rows(features, rows, with_labels=True))


def predict(exe, program, logits_var, features, batch_size, benchmark=None):
    """The classifier outputs of every row, in row order.

    Args:
      exe: executor; parameters initialised.
      program: the for_test program (`ProgramBundle.eval_program` or its bf16 copy).
      logits_var: the "logits" Variable (looked up by name in `program`).
      features: GlueFeatures.
      batch_size: int >= 1.
      benchmark: None, or (warmup_batches, measured_batches): stop after both, time only the latter.

    Returns:
      (float32 [N, num_labels] outputs (with benchmark only the rows run), stats dict with
      e2e_inference_time (s) and inference_sequences_per_second).
    """
    outputs, begin = [], time.time()
    bench_begin, bench_rows, rows_done = begin, 0, 0
    starts = range(0, len(features), batch_size)
    for index, start in enumerate(progress(starts, desc="predict", unit="batch")):
        if benchmark and index == benchmark[0]:
            bench_begin, bench_rows = time.time(), rows_done
        if benchmark and index == benchmark[0] + benchmark[1]:
            break
        rows = np.arange(start, min(start + batch_size, len(features)))
        feed, _ = trim_batch(batch_of_rows(features, rows, with_labels=False))
        (logits,) = exe.run(program, feed=feed, fetch_list=[logits_var.name])
        outputs.append(np.asarray(logits, np.float32))
        rows_done += len(rows)
    elapsed = time.time() - begin
    stats = {"e2e_inference_time": elapsed, "inference_sequences_per_second": rows_done / max(elapsed, 1e-9)}
    if benchmark:
        stats["inference_sequences_per_second"] = (rows_done - bench_rows) / max(time.time() - bench_begin, 1e-9)
    width = outputs[0].shape[1] if outputs else 0
    return (np.concatenate(outputs) if outputs else np.zeros((0, width), np.float32)), stats


def decide(spec, outputs):
    """Predictions from classifier outputs: class ids (argmax), or STS-B scores clipped to [0, 5]."""
    if spec.is_regression:
        return np.clip(outputs[:, 0], *STSB_CLIP)
    return np.argmax(outputs, axis=1)


def evaluate(spec, outputs, features):
    """Eval loss and GLUE metrics of one labelled split.

    Returns:
      dict: eval_loss (the training objective on these outputs) and `utils.glue_metrics.task_metrics` of
      the predictions (fractions). STS-B is scored on the unclipped scores, as the seeds do.
    """
    predictions = outputs[:, 0] if spec.is_regression else decide(spec, outputs)
    result = {"eval_loss": glue_metrics.mean_loss(outputs, features.labels)}
    result.update(glue_metrics.task_metrics(spec.name, predictions, features.labels))
    _warn_undefined(spec, result, predictions, features.labels)
    return result


def _warn_undefined(spec, result, predictions, labels):
    """Say why a correlation came out NaN (a constant column has none), so that the null it becomes in
    eval_results.json is not taken for a bug or a zero."""
    undefined = sorted(k for k, v in result.items() if isinstance(v, float) and np.isnan(v))
    if not undefined:
        return
    constant = [what for what, values in (("gold scores", labels), ("predictions", predictions))
                if np.ptp(np.asarray(values, np.float64)) == 0]
    logger.warning("%s: %s undefined (%s over %d rows): written as null", spec.name, ", ".join(undefined),
                   " and ".join(constant) + " constant" if constant else "NaN inputs", len(labels))


def label_strings(spec, predictions):
    """What the submission file says for each prediction: the label string, or the score with 3 decimals."""
    if spec.is_regression:
        return [f"{float(v):.3f}" for v in predictions]
    return [spec.labels[int(i)] for i in predictions]


def write_submission(path, examples, spec, predictions):
    """GLUE's submission file: a header `index\\tprediction`, then one row per test example, written atomically.

    Args:
      path: e.g. `<out>/MRPC.tsv` (the names GLUE's server expects: see TaskSpec.test_splits).
      examples: the test split's GlueExamples (their `index` column is repeated).
      spec: TaskSpec.
      predictions: class ids or scores, one per example (see `decide`).

    Returns:
      str, path.

    Raises:
      ValueError: a different number of predictions and examples.
    """
    if len(predictions) != len(examples):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} test examples")
    lines = ["index\tprediction"] + [f"{e.index}\t{text}" for e, text in
                                     zip(examples, label_strings(spec, predictions))]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_text(path, "\n".join(lines) + "\n")
    logger.info("wrote %d predictions to %s", len(examples), path)
    return path
