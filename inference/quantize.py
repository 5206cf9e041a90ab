"""Post-training int8 quantization of an exported SQuAD model.

Owns: calibrating `paddle.static.quantization.PostTrainingQuantization` on a few hundred training windows
(length-bucketed batches, so calibration sees the activation ranges of real lengths), writing the
quantized copy (model_int8.pdmodel / .pdiparams) into the export directory, with its calibration settings
in the manifest.
Does not own: measuring int8's accuracy against fp32 (`inference.precision_records`, which measures bf16's
the same way), running int8 (`inference.predictor`, precision "int8": oneDNN int8 kernels for the fully
connected layers, see `inference.predictor.INT8_OPS`).

What int8 does on an AVX2-only CPU (no AVX-512 VNNI / AVX-VNNI): oneDNN's int8 GEMM emulates the
8-bit dot products with 16-bit multiplies (vpmaddubsw), so int8 is NOT faster than fp32 there and the
quantize/dequantize steps around each layer add cost; `benchmarks.bench_inference` measures it.
"""
import contextlib
import io
import logging
import os
import sys
import time

import numpy as np
import paddle

from data.features.squad import PREDICT_ONLY_KEYS, FeatureParams, batch_of_rows, load_or_build_features
from inference import model_dir as layout
from inference.precision_records import first_questions  # noqa: F401  -- benchmarks.bench_squad_e2e's import
from inference.predictor import BUCKET_MULTIPLE

logger = logging.getLogger(__name__)

CALIBRATION_BATCH = 8
# Each activation's abs-max over the calibration windows: one pass. ("hist"/"KL" build histograms of
# every activation in numpy: over 13 minutes for 32 windows of a 4-layer bert-base here; Paddle 2.6's
# "avg" fails on the model's 0-d tensors.)
CALIBRATION_ALGO = "abs_max"
QUANTIZABLE_OPS = ("matmul", "matmul_v2", "mul")


def _calibration_batches(model_dir, squad_file, windows, seed=0):
    """Feed dicts of `windows` randomly chosen windows of `squad_file`, bucketed by length."""
    s = layout.read_settings(model_dir)
    _, features = load_or_build_features(squad_file, os.path.join(model_dir, layout.VOCAB_FILE), s.do_lower_case,
                                         FeatureParams(s.max_seq_length, s.doc_stride, s.max_query_length),
                                         is_training=False)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(features), size=min(windows, len(features)), replace=False)
    chosen = chosen[np.argsort(features.seq_lengths[chosen], kind="stable")]
    batches = []
    for i in range(0, len(chosen), CALIBRATION_BATCH):
        rows = chosen[i:i + CALIBRATION_BATCH]
        cols = min(s.max_seq_length, -(-int(features.seq_lengths[rows].max()) // BUCKET_MULTIPLE) * BUCKET_MULTIPLE)
        batch = batch_of_rows(features, rows, is_training=False)
        batches.append({k: np.ascontiguousarray(v[..., :cols]) for k, v in batch.items()
                        if k not in PREDICT_ONLY_KEYS})
    return batches


def _feeds_loader(batches):
    """The calibration batches in the form PostTrainingQuantization accepts.

    Paddle 2.6's PTQ asserts its data source is a `paddle.io.DataLoader`, then only calls it and takes
    its len(); a DataLoader over a Dataset cannot yield our per-batch (bucketed) lengths, so this
    subclass serves the prepared feed dicts directly.
    """
    class _Feeds(paddle.io.DataLoader):
        def __init__(self, feeds):  # noqa: super().__init__ would build workers for a Dataset we lack
            self._feeds = feeds

        def __call__(self):
            return iter(self._feeds)

        def __len__(self):
            return len(self._feeds)

    return _Feeds(batches)


def quantize(model_dir, squad_file=None, windows=300, out_dir=None, batches=None):
    """Write model_int8.* calibrated on `windows` windows of `squad_file` into `out_dir` (default model_dir).

    batches: instead of a file, the calibration feed dicts themselves (benchmarks with random weights).
    """
    from paddle.static.quantization import PostTrainingQuantization

    if batches is None:
        batches = _calibration_batches(model_dir, squad_file, windows)
    logger.info("int8 calibration on %d windows of %s (%d batches, algo %s)", sum(len(b["input_ids"]) for b in batches),
                squad_file or "given batches", len(batches), CALIBRATION_ALGO)
    paddle.enable_static()
    scope = paddle.static.Scope()
    exe = paddle.static.Executor(paddle.CPUPlace())
    ptq = PostTrainingQuantization(
        executor=exe, model_dir=model_dir, scope=scope, model_filename=layout.MODEL_PREFIX + ".pdmodel",
        params_filename=layout.MODEL_PREFIX + ".pdiparams", data_loader=_feeds_loader(batches),
        batch_nums=len(batches), algo=CALIBRATION_ALGO, quantizable_op_type=list(QUANTIZABLE_OPS),
        weight_quantize_type="channel_wise_abs_max", onnx_format=False, deploy_backend="mkldnn")
    begin = time.time()
    with paddle.static.scope_guard(scope), _ptq_bars_on_terminal_only():
        ptq.quantize()
        ptq.save_quantized_model(out_dir or model_dir, model_filename=layout.INT8_PREFIX + ".pdmodel",
                                 params_filename=layout.INT8_PREFIX + ".pdiparams")
    logger.info("int8 calibration done in %.0f s: %s.pdmodel / .pdiparams written", time.time() - begin,
                layout.INT8_PREFIX)


def _ptq_bars_on_terminal_only():
    """PostTrainingQuantization draws its own tqdm bars ("Sampling stage, Run batch:", "Adding quant op with
    weight:") on sys.stderr: a bar on a terminal, but in a log only their carriage-return frames; there they
    go nowhere (the calibration's start and end are logged)."""
    if sys.stderr.isatty():
        return contextlib.nullcontext()
    return contextlib.redirect_stderr(io.StringIO())


def add_int8_model(model_dir, calibration_file, *, windows=300):
    """Quantize an export in place (still under its temporary name) and rewrite its manifest.

    Its accuracy against fp32 is measured with the other precisions' (`inference.precision_records`).

    Returns:
      the new manifest dict; its "int8" entry holds the calibration settings.
    """
    quantize(model_dir, calibration_file, windows)
    record = {"calibration_file": os.path.abspath(calibration_file), "calibration_windows": windows,
              "algo": CALIBRATION_ALGO, "summary": f"calibrated on {windows} windows"}
    return layout.update_manifest(model_dir, int8=record)
