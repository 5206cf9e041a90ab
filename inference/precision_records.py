"""How far each precision an export ships is from fp32, measured at export and recorded in its manifest.

Owns: the per-precision records under the manifest's "precisions" entry (`record_precisions`), which
`inference.precision_auto` reads to choose a precision:

    "precisions": {
      "bf16": {"verification": {"windows": 16, "agree": 16, "max_abs_logit_diff": 0.03},
               "squad": {"file", "questions", "fp32": {"exact_match", "F1"}, "bf16": {...},
                         "delta_exact_match", "delta_F1", "summary"},       # only with an eval file
               "summary": "..."},
      "int8": {... the same ...}
    }

bf16 is recorded whenever this Paddle and CPU can run it (it needs no files of its own: the fp32 model runs
in bf16), int8 when the export holds the quantized copy; an empty entry says neither ships. Two measures:
  * the verification batch (`verification_record`): PRECISION_CHECK_WINDOWS random windows of different
    lengths, run in fp32 and in the precision by Paddle Inference; max |delta logit| over real positions and
    how many windows give the same answer (SQuAD: argmax start and argmax end over real tokens; GLUE: the
    argmax label; STS-B: a score within SCORE_AGREEMENT);
  * with a SQuAD file with answers (`squad_accuracy`): EM/F1 of fp32 and the precision on its first
    questions, through the same `QAPredictor` users run.
Does not own: choosing a precision (`inference.precision_auto`), making the int8 copy (`inference.quantize`),
running a precision (`inference.predictor`).
"""
import json
import logging
import os
import tempfile

import numpy as np

from data.features.squad import FeatureParams, load_or_build_features
from inference import model_dir as layout
from inference.precision_auto import RECORDS_KEY
from inference.predictor import QAPredictor
from inference.verified_export import max_abs_difference, run_exported, verification_feed
from tasks import squad_metrics
from tasks.squad_postprocess import postprocess_predictions
from utils.runtime import cpu_bf16_support

logger = logging.getLogger("inference.export")

PRECISION_CHECK_WINDOWS = 16
PRECISION_CHECK_SEED = 1  # not the parity check's windows (seed 0): a second sample of inputs
# Two STS-B scores (0-5 scale) "agree" within this: a hundredth of the scale, far below what moves Pearson.
SCORE_AGREEMENT = 0.05


def shipped_precisions(manifest):
    """The precisions besides fp32 an export can be recorded in here: bf16 where this Paddle/CPU runs it
    (with the reason when it cannot), int8 where the export holds the quantized copy.

    Returns:
      (list of precision names, dict {precision: why it is not recorded}).
    """
    shipped, missing = [], {}
    support = cpu_bf16_support()
    if support.usable:
        shipped.append("bf16")
    else:
        missing["bf16"] = support.reason
    if all(n in manifest["files"] for n in layout.INT8_FILES):
        shipped.append("int8")
    return shipped, missing


def predicted_answers(settings, outputs, feed):
    """What each window's outputs predict.

    Args:
      settings: layout.ExportSettings of the export.
      outputs: list of float32 arrays, the program's outputs (SQuAD: start, end [B, L]; GLUE: logits [B, C]).
      feed: the feed dict they were computed on (its attention_mask int64 [B, 1, 1, L] marks real tokens).

    Returns:
      SQuAD: int64 [B, 2] (argmax start, argmax end over real tokens); GLUE: int64 [B] argmax label;
      STS-B: float32 [B] the score.
    """
    if settings.is_squad:
        real = feed["attention_mask"][:, 0, 0, :] > 0
        return np.stack([np.where(real, out, -np.inf).argmax(axis=1) for out in outputs[:2]], axis=1)
    logits = np.asarray(outputs[0])
    return logits[:, 0] if settings.regression else logits.argmax(axis=1)


def agreement(settings, reference, other, feed):
    """{"windows", "agree", "max_abs_logit_diff"} of `other`'s outputs against `reference`'s on `feed`."""
    want, got = predicted_answers(settings, reference, feed), predicted_answers(settings, other, feed)
    if settings.regression:
        same = np.abs(want - got) <= SCORE_AGREEMENT
    else:
        same = (want == got).reshape(len(want), -1).all(axis=1)
    return {"windows": len(same), "agree": int(same.sum()),
            "max_abs_logit_diff": max_abs_difference(reference, other, feed)}


def verification_record(model_dir, precision, windows=PRECISION_CHECK_WINDOWS):
    """`agreement` of `precision` against fp32 (both Paddle Inference on the CPU) on `windows` verification
    windows of the export's max_seq_length."""
    settings = layout.read_settings(model_dir)
    with open(os.path.join(model_dir, layout.CONFIG_FILE), encoding="utf-8") as f:
        vocab_size = json.load(f)["vocab_size"]
    feed = verification_feed(vocab_size, settings.max_seq_length, windows, seed=PRECISION_CHECK_SEED)
    prefix = layout.INT8_PREFIX if precision == "int8" else layout.MODEL_PREFIX
    return agreement(settings, run_exported(model_dir, feed), run_exported(model_dir, feed, precision, prefix), feed)


def squad_accuracy(model_dir, eval_file, precisions, questions=500):
    """EM/F1 of fp32 and of each of `precisions` (all through QAPredictor) on the first `questions`
    questions of eval_file (0 = all).

    Returns:
      {precision: {file, questions, fp32 {exact_match, F1}, <precision> {exact_match, F1}, delta_exact_match,
      delta_F1, summary (one line for people)}}.
    """
    path = first_questions(eval_file, questions) if questions else eval_file
    try:
        s = layout.read_settings(model_dir)
        examples, features = load_or_build_features(
            path, os.path.join(model_dir, layout.VOCAB_FILE), s.do_lower_case,
            FeatureParams(s.max_seq_length, s.doc_stride, s.max_query_length), is_training=False)
        scores = {}
        for precision in ("fp32",) + tuple(precisions):
            predictor = QAPredictor.load(model_dir, precision=precision)
            start, end, _ = predictor.predict_logits(features, show_progress=True)
            preds, _, _ = postprocess_predictions(examples, features, start, end, do_lower_case=s.do_lower_case)
            got = squad_metrics.evaluate_v1(path, preds)
            scores[precision] = {"exact_match": got["exact_match"], "F1": got["f1"]}
    finally:
        if path != eval_file:
            os.unlink(path)
    fp32, records = scores["fp32"], {}
    for precision in precisions:
        mine = scores[precision]
        d_em, d_f1 = mine["exact_match"] - fp32["exact_match"], mine["F1"] - fp32["F1"]
        summary = (f"EM/F1 on {len(examples)} questions of {os.path.basename(eval_file)}: fp32 "
                   f"{fp32['exact_match']:.2f}/{fp32['F1']:.2f}, {precision} {mine['exact_match']:.2f}/"
                   f"{mine['F1']:.2f} (delta {d_em:+.2f}/{d_f1:+.2f})")
        records[precision] = {"file": os.path.abspath(eval_file), "questions": len(examples), "fp32": fp32,
                              precision: mine, "delta_exact_match": d_em, "delta_F1": d_f1, "summary": summary}
    return records


def first_questions(squad_file, questions):
    """A temporary SQuAD file with the first `questions` questions of `squad_file` (whole paragraphs kept)."""
    with open(squad_file, encoding="utf-8") as f:
        data = json.load(f)
    kept, count = [], 0
    for article in data.get("data", []):
        paragraphs = []
        for paragraph in article.get("paragraphs", []):
            if count >= questions:
                break
            qas = paragraph.get("qas", [])[:questions - count]
            count += len(qas)
            paragraphs.append(dict(paragraph, qas=qas))
        if paragraphs:
            kept.append(dict(article, paragraphs=paragraphs))
        if count >= questions:
            break
    handle, path = tempfile.mkstemp(suffix=".json", prefix="squad-subset-")
    with os.fdopen(handle, "w", encoding="utf-8") as f:
        json.dump(dict(data, data=kept), f)
    return path


def _summary(record):
    check = record["verification"]
    words = (f"agrees with fp32 on {check['agree']}/{check['windows']} verification answers (max |dlogit| "
             f"{check['max_abs_logit_diff']:.3g})")
    return f"{words}; {record['squad']['summary']}" if "squad" in record else words


def record_precisions(model_dir, *, eval_file=None, eval_questions=500):
    """Measure every precision the export ships against fp32 and write the records into its manifest (an
    export still being written: call it after the int8 copy, if any, is in place).

    Args:
      model_dir: str, the export directory.
      eval_file: str or None, a SQuAD JSON with answers (SQuAD exports): adds EM/F1 records.
      eval_questions: int, questions of eval_file used (0 = all).

    Returns:
      the new manifest dict (its RECORDS_KEY entry as the module docstring shows).
    """
    manifest, _ = layout.read_manifest(model_dir)
    shipped, missing = shipped_precisions(manifest)
    records = {p: {"verification": verification_record(model_dir, p)} for p in shipped}
    if eval_file and shipped:
        for precision, record in squad_accuracy(model_dir, eval_file, shipped, eval_questions).items():
            records[precision]["squad"] = record
    for precision, record in records.items():
        record["summary"] = _summary(record)
        logger.info("%s vs fp32: %s", precision, record["summary"])
    for precision, why in missing.items():
        logger.info("%s not recorded (auto will not choose it): %s", precision, why)
    return layout.update_manifest(model_dir, **{RECORDS_KEY: records})
