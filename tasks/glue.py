"""GLUE on the fine-tuning layer: its settings, its adapter for `tasks.finetune.FinetuneSession`, and what a
GLUE run does with features: reading the splits, the executor's forward over a split (`--benchmark`),
scoring a dev split, and GLUE's submission file.

Owns: `GlueSettings` (the validated GLUE section of a FinetuneConfig), `GlueAdapter` (the GLUE program,
training batches, export settings, evaluation of the dev split(s) into eval_results.json and prediction of
the test split(s) into submission files), `read_splits` / `load_split` (features of a split), `predict`
(classifier outputs from the static executor), `evaluate` (the eval loss and
`tasks.glue_metrics.task_metrics`), `write_submission`. Does not own: flags and their validation
(run_glue.py), the session and its training loop (`tasks.finetune`), building programs
(`program.build_glue`), reading TSV files (`data.features.glue`) or weight I/O (`utils.weights`).

Steps are the fine-tuning layer's (`tasks.finetune.plan_updates`): an epoch is `ceil(rows per process / batch)`
micro-batches, `gradient_merge_steps` of them per optimizer update, capped by `max_steps`; the LR schedule
spans the updates actually run, with `--warmup-proportion` of them warming up.
"""
import dataclasses
import logging
import os
import time

import numpy as np

import program
from data.features.glue import TaskSpec, batch_of_rows, examples_to_features, read_examples, split_path
from inference import model_dir as export_layout
from inference.predictor import ClassifierPredictor
from tasks import glue_metrics, outcome
from tasks.finetune import trim_batch
from tokenizer import BertTokenizer
from utils.fs import atomic_write_json, atomic_write_text
from utils.logger import progress

logger = logging.getLogger(__name__)

STSB_CLIP = (0.0, 5.0)


@dataclasses.dataclass(frozen=True)
class GlueSettings:
    """The GLUE section of a FinetuneConfig, validated by run_glue.validate_args: spec (the task's
    data.features.glue.TaskSpec) and data_dir (its GLUE directory, every split the run needs present)."""
    spec: TaskSpec
    data_dir: str

    def inputs(self):
        """(flag, path) of the GLUE files a run may read: the task directory and each of its splits' files."""
        stems = ["train", *self.spec.dev_splits, *(stem for stem, _ in self.spec.test_splits)]
        return [("--data-dir", self.data_dir)] + [("--data-dir", split_path(self.data_dir, stem)) for stem in stems]


def splits_needed(spec, modes):
    """The split stems a run reads: train to train, the dev split(s) to evaluate, the test split(s) to predict."""
    return ((["train"] if modes.do_train else []) + (list(spec.dev_splits) if modes.do_eval else [])
            + ([stem for stem, _ in spec.test_splits] if modes.do_predict else []))


def read_splits(cfg):
    """{split: (examples, features)} of every split a FinetuneConfig's run needs, read and tokenised (before
    anything is built, so a malformed row stops the run first).

    Raises:
      ValueError: naming file:line.
    """
    spec, text = cfg.settings.spec, cfg.text
    tokenizer = BertTokenizer(text.vocab_file, do_lower_case=text.do_lower_case)
    return {split: load_split(cfg.settings.data_dir, spec, split, tokenizer, text.max_seq_length)
            for split in splits_needed(spec, cfg.modes)}


def load_split(data_dir, spec, split, tokenizer, max_seq_length):
    """(examples, GlueFeatures) of `<data_dir>/<split>.tsv`. Raises ValueError naming file:line."""
    examples = read_examples(split_path(data_dir, split), spec, split)
    features = examples_to_features(examples, tokenizer, spec, max_seq_length)
    logger.info("%s %s: %d examples, longest %d tokens", spec.name, split, len(examples),
                int(features.seq_lengths.max()))
    return examples, features


def predict(exe, eval_program, logits_var, features, batch_size, benchmark=None):
    """The classifier outputs of every row, in row order.

    Args:
      exe: executor; parameters initialised.
      eval_program: the for_test program (`ProgramBundle.eval_program` or its bf16 copy).
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
        (logits,) = exe.run(eval_program, feed=feed, fetch_list=[logits_var.name])
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
      dict: eval_loss (the training objective on these outputs) and `tasks.glue_metrics.task_metrics` of
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


class GlueAdapter:
    """GLUE for `tasks.finetune.FinetuneSession` (see `tasks.finetune.TaskAdapter`).

    Args:
      cfg: the FinetuneConfig; data: `read_splits(cfg)`.
    """

    # The seeds' DLLogger keys repeat acc / f1 in percent: the report keeps them, the log lines do not (a
    # GLUE reader would take "exact_match" for a SQuAD score).
    report_only = ("exact_match", "F1")

    def __init__(self, cfg, data):
        self.cfg, self.data, self.spec = cfg, data, cfg.settings.spec
        self.label = self.spec.name

    def build(self, model_cfg, train_cfg, is_training):
        return program.build_glue(model_cfg, train_cfg, self.spec.num_labels, is_training=is_training)

    def training_data(self):
        features = self.data["train"][1]
        return features, lambda rows: batch_of_rows(features, rows, with_labels=True)

    def export_settings(self, cfg):
        spec = self.spec
        return export_layout.ExportSettings(model_name=cfg.model.name, do_lower_case=cfg.text.do_lower_case,
                                            max_seq_length=cfg.text.max_seq_length, fetch_names=("logits",),
                                            task=spec.name, labels=tuple(spec.labels or ()),
                                            regression=spec.is_regression)

    def load_export(self, export_dir, device):
        # fp32, as the in-run export: the scores a run reports are the model's, comparable across runs and machines.
        return ClassifierPredictor.load(export_dir, precision="fp32", device=device,
                                        batch_size=self.cfg.schedule.predict_batch_size)

    def predict(self, session, bundle, metrics):
        """Evaluate the dev split(s) and / or write the submission file(s), as the modes say."""
        modes, benchmark = self.cfg.modes, self.cfg.run.benchmark
        predictor = None if benchmark else session.predictor(bundle)
        results = self._evaluate(session, bundle, metrics, predictor) if modes.do_eval else {}
        if modes.do_predict and not benchmark:
            results.update(self._predict_test(metrics, not modes.do_eval, predictor))
        return results

    def _outputs(self, predictor, features):
        """(classifier outputs [N, num_labels], the seeds' throughput keys) of one split through the predictor."""
        outputs, stats = predictor.predict_logits(features, show_progress=True)
        return outputs, {k: stats[k] for k in ("e2e_inference_time", "inference_sequences_per_second")}

    def _dev_outputs(self, session, bundle, predictor, split):
        run = self.cfg.run
        if not run.benchmark:
            return self._outputs(predictor, self.data[split][1])
        return predict(session.rt.exe, bundle.eval_program, bundle.eval_fetches["logits"], self.data[split][1],
                       self.cfg.schedule.predict_batch_size, (run.benchmark_warmup_steps, run.benchmark_steps))

    def _evaluate(self, session, bundle, metrics, predictor):
        """Metrics of every dev split (MNLI's mismatched ones prefixed mm_) + the seeds' keys, logged and written
        to eval_results.json; with --benchmark only the executor's throughput on the first split."""
        spec, benchmark, out_dir = self.spec, self.cfg.run.benchmark, self.cfg.outputs.out_dir
        results, scores = {}, {}
        for n, split in enumerate(spec.dev_splits):
            outputs, stats = self._dev_outputs(session, bundle, predictor, split)
            if n == 0:
                results.update(stats)
            if not benchmark:
                prefix = "mm_" if split == "dev_mismatched" else ""
                scores.update({prefix + k: v for k, v in evaluate(spec, outputs, self.data[split][1]).items()})
        if "acc" in scores:
            scores["exact_match"] = 100.0 * scores["acc"]  # the seeds' DLLogger keys, in percent
        if "f1" in scores:
            scores["F1"] = 100.0 * scores["f1"]
        results.update(scores)
        metrics.log_summary(dict(scores, e2e_inference_time=results["e2e_inference_time"],
                                 inference_sequences_per_second=results["inference_sequences_per_second"]))
        if not benchmark:
            results["eval_results_file"] = os.path.join(out_dir, "eval_results.json")
            os.makedirs(out_dir, exist_ok=True)
            # strict JSON: an undefined correlation (a constant column; `evaluate` warns) is null, not NaN
            atomic_write_json(results["eval_results_file"], outcome.json_scalars(dict(scores, task=spec.name)))
            for key, value in sorted(scores.items()):
                if key not in self.report_only:
                    logger.info("%s %s = %.4f", spec.name, key, value)
        return results

    def _predict_test(self, metrics, log_throughput, predictor):
        """GLUE's submission file(s) from the test split(s); the first split's throughput when asked."""
        spec, results, files = self.spec, {}, []
        for split, name in spec.test_splits:
            examples, features = self.data[split]
            outputs, stats = self._outputs(predictor, features)
            files.append(write_submission(os.path.join(self.cfg.outputs.out_dir, name), examples, spec,
                                          decide(spec, outputs)))
            if log_throughput and len(files) == 1:
                results.update(stats)
                metrics.log_summary(stats)
        results["submission_files"] = files
        return results
