"""A verified Paddle Inference export of the parameters in the scope: what `python -m inference.export`
writes from a checkpoint and what fine-tuning predicts through (`tasks.finetune`).

Owns: `paddle.static.save_inference_model` of a bundle's eval program, writing the directory
(`inference.model_dir` layout: model, config, vocab, settings, manifest with the vocab's SHA-256), and the
parity check: the exported model, run by `inference.predictor` (Paddle Inference, oneDNN), must reproduce
the training program's outputs (static executor) on a few windows within a tolerance, or nothing is written;
`load_from_scope` gives a predictor of the scope's parameters through a temporary, verified export.
Does not own: the command line, reading a checkpoint into the scope (`inference.export`), the layout and
manifest (`inference.model_dir`), running answers and classifications (`inference.predictor`).
"""
import logging
import os
import shutil
import tempfile

import numpy as np
import paddle

from inference import model_dir as layout
from inference.predictor import DEFAULT_BATCH_SIZE, create_predictor, load_predictor, make_config
from utils.fs import atomic_write_json, sha256_file

logger = logging.getLogger("inference.export")


DEFAULT_TOLERANCE = 1e-3   # max |delta logit| exported vs executor (measured: ~1e-6 in fp32)
VERIFY_WINDOWS = 4


def save_program(exe, bundle, directory, fetch_names=layout.ExportSettings.fetch_names):
    """Write model.pdmodel / model.pdiparams of `bundle.eval_program` (outputs `fetch_names`, keys of
    `bundle.eval_fetches`) with the current scope's values."""
    program = bundle.eval_program
    feeds = [program.global_block().var(name) for name in bundle.eval_feed_names]
    fetches = [program.global_block().var(bundle.eval_fetches[k].name) for k in fetch_names]
    paddle.static.save_inference_model(os.path.join(directory, layout.MODEL_PREFIX), feeds, fetches, exe,
                                       program=program)


def verification_feed(vocab_size, max_seq_length, windows=VERIFY_WINDOWS, seed=0):
    """Windows of different real lengths (random ids, padding after them) to compare two runtimes on."""
    rng = np.random.default_rng(seed)
    lengths = np.linspace(max(4, max_seq_length // 4), max_seq_length, windows).astype(np.int64)
    ids = rng.integers(0, vocab_size, (windows, max_seq_length)).astype(np.int64)
    positions = np.arange(max_seq_length)[None, :]
    mask = (positions < lengths[:, None]).astype(np.int64)
    types = ((positions >= lengths[:, None] // 3) & (mask > 0)).astype(np.int64)
    return {"input_ids": ids * mask, "token_type_ids": types, "attention_mask": mask[:, None, None, :]}


def run_exported(directory, feed, precision="fp32", prefix=layout.MODEL_PREFIX, device="cpu"):
    """The outputs (list of float32 arrays, in the program's fetch order) of the exported program
    `directory`/`prefix`.pdmodel run once by Paddle Inference in `precision` on `device`, on `feed` (a dict
    of the program's feeds, whole: no bucketing)."""
    predictor, _ = create_predictor(make_config(
        os.path.join(directory, prefix + ".pdmodel"), os.path.join(directory, prefix + ".pdiparams"),
        precision=precision, device=device), precision)
    for name in predictor.get_input_names():
        handle = predictor.get_input_handle(name)
        handle.reshape(feed[name].shape)
        handle.copy_from_cpu(feed[name])
    predictor.run()
    return [predictor.get_output_handle(n).copy_to_cpu() for n in predictor.get_output_names()]


def max_abs_difference(want, got, feed):
    """max |delta| between two runs' outputs on `feed`: over real (unpadded) positions for per-token logits
    (SQuAD's [B, L]), over every value for per-sequence ones (GLUE's [B, num_labels])."""
    real = feed["attention_mask"][:, 0, 0, :] > 0
    per_token = [np.abs(np.asarray(w) - np.asarray(g)) for w, g in zip(want, got)]
    return float(max((d[real] if d.shape == real.shape else d).max() for d in per_token))


def max_logit_difference(exe, bundle, directory, feed, precision="fp32", prefix=layout.MODEL_PREFIX,
                         fetch_names=layout.ExportSettings.fetch_names, device="cpu"):
    """max |delta| (as `max_abs_difference`) between the executor's eval-program outputs `fetch_names` and
    the exported model's (Paddle Inference on `device`, the executor's own: a GPU run is compared with a GPU
    predictor, not with the CPU) on `feed`."""
    names = [bundle.eval_fetches[k].name for k in fetch_names]
    want = exe.run(bundle.eval_program, feed=feed, fetch_list=names)
    return max_abs_difference(want, run_exported(directory, feed, precision, prefix, device), feed)


def write_export(exe, bundle, directory, *, model_cfg, vocab_file, settings, source, tolerance=DEFAULT_TOLERANCE,
                 extra=None, device="cpu"):
    """Fill `directory` (empty, e.g. from utils.fs.atomic_output_dir) with a verified export.

    The scope must hold the model's parameters (loaded, or just trained) in the dtypes of `bundle`'s eval
    program, which must be one `device` can run (a predict-only fp32 build with plain attention can run
    anywhere; an AMP training bundle's fp16 eval program cannot run on a CPU: see `serving_bundle` in
    `tasks.finetune`). `device` ("cpu" | "gpu", the executor's) runs the verifying predictor.

    Returns:
      the manifest dict (with verified_max_abs_logit_diff).

    Raises:
      ValueError: the exported model's logits differ from the executor's by more than `tolerance`.
    """
    save_program(exe, bundle, directory, settings.fetch_names)
    atomic_write_json(os.path.join(directory, layout.CONFIG_FILE), model_cfg.to_dict())
    shutil.copyfile(vocab_file, os.path.join(directory, layout.VOCAB_FILE))
    atomic_write_json(os.path.join(directory, layout.SETTINGS_FILE), settings.to_dict())
    diff = max_logit_difference(exe, bundle, directory, verification_feed(model_cfg.vocab_size,
                                                                          settings.max_seq_length),
                                fetch_names=settings.fetch_names, device=device)
    logger.info("exported model vs training program: max |delta logit| = %.3g on %d windows (tolerance %g)",
                diff, VERIFY_WINDOWS, tolerance)
    if not diff <= tolerance:
        raise ValueError(f"the exported model's logits differ from the training program's by {diff:.3g} "
                         f"(> --tolerance {tolerance}); nothing was written")
    # The vocab's SHA-256 as pretraining records it (`utils.checkpoint.vocab_sha256`): `finetune.model_config`
    # has refused a --vocab-file whose hash differs from the source checkpoint's, so this is that hash.
    # Loading verifies the copied vocab.txt against the manifest's per-file SHA-256 (`read_manifest`).
    return layout.write_manifest(directory, source=source, task=settings.task,
                                 extra=dict(extra or {}, verified_max_abs_logit_diff=diff,
                                            vocab_sha256=sha256_file(vocab_file)))


def load_from_scope(exe, bundle, *, model_cfg, vocab_file, settings, source, precision="fp32", device="cpu",
                    threads=None, batch_size=None):
    """A predictor (QAPredictor or ClassifierPredictor, as `settings.task` says) for the parameters now in
    the scope (just trained, or loaded from a checkpoint): the program is exported and verified in a
    temporary directory, loaded, and the directory removed.

    Raises:
      ValueError: as `write_export` and `ExportedModel.load`.
    """
    with tempfile.TemporaryDirectory(prefix=f"{settings.task.lower()}-export-") as tmp:
        write_export(exe, bundle, tmp, model_cfg=model_cfg, vocab_file=vocab_file, settings=settings,
                     source=source, device=device)
        return load_predictor(tmp, precision=precision, device=device, threads=threads,
                              batch_size=batch_size or DEFAULT_BATCH_SIZE)


def source_record(path):
    """The manifest's description of a checkpoint: its path and the SHA-256 of its weights file(s)."""
    path = os.path.abspath(path)
    if os.path.isfile(path + ".pdparams"):
        path += ".pdparams"
    if os.path.isfile(path):
        files = [path]
    else:
        files = sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith((".pdparams", ".safetensors")))
    return {"path": path, "weights": {os.path.basename(f): sha256_file(f) for f in files}}
