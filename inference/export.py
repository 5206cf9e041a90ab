"""Export a fine-tuned SQuAD or GLUE model to a self-contained Paddle Inference directory, verified before
success.

Usage (from the repository root):

    python -m inference.export --checkpoint results/bert-large-uncased/squad --output-dir export/squad \
        --vocab-file vocab/bert-large-uncased-vocab.txt --do-lower-case [--max-seq-length 384] \
        [--int8-calibration-file squad/train-v1.1.json --calibration-windows 300]
    python -m inference.export --checkpoint results/bert-large-uncased/glue/MRPC --output-dir export/mrpc \
        --vocab-file vocab/bert-large-uncased-vocab.txt --do-lower-case [--task-name MRPC --max-seq-length 128]

The head is read from the checkpoint: `qa_outputs.*` parameters make a SQuAD export, `classifier.*` a GLUE
one, whose task comes from `--task-name`, else the run's eval_results.json, else the run_glue output
directory's name (`.../glue/<Task>`); the task, its labels and regression-or-not go into settings.json.

Owns: detecting the head, building the eval program, loading the checkpoint into it,
`paddle.static.save_inference_model`, writing the directory (`inference.model_dir` layout) atomically, and
the parity check: the exported model, run by `inference.predictor` (Paddle Inference, oneDNN), must
reproduce the training program's outputs (static executor) on a few windows within `--tolerance`, or nothing
is written. With `--int8-calibration-file` (SQuAD) it also adds a post-training-quantized copy
(`inference.quantize`). Does not own: the directory layout and manifest (`inference.model_dir`), running
answers and classifications (`inference.predictor`).
"""
import zlib  # noqa: F401  -- before paddle: libpaddle's own zlib symbols crash later zlib users
import utils.preflight  # noqa: F401  -- OMP threads default, MKL path; must stay before paddle

import logging
import os
import shutil
import sys

import numpy as np

from inference import model_dir as layout
from utils.fs import atomic_write_json, sha256_file

logger = logging.getLogger("inference.export")

DEFAULT_TOLERANCE = 1e-3   # max |delta logit| exported vs executor (measured: ~1e-6 in fp32)
VERIFY_WINDOWS = 4


def save_program(exe, bundle, directory, fetch_names=layout.ExportSettings.fetch_names):
    """Write model.pdmodel / model.pdiparams of `bundle.eval_program` (outputs `fetch_names`, keys of
    `bundle.eval_fetches`) with the current scope's values."""
    import paddle

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


def max_logit_difference(exe, bundle, directory, feed, precision="fp32", prefix=layout.MODEL_PREFIX,
                         fetch_names=layout.ExportSettings.fetch_names):
    """max |delta| between the executor's eval-program outputs `fetch_names` and the exported model's (Paddle
    Inference) on `feed`: over real (unpadded) positions for per-token logits (SQuAD's [B, L]), over every
    value for per-sequence ones (GLUE's [B, num_labels])."""
    import paddle.inference as paddle_infer

    from inference.predictor import make_config

    names = [bundle.eval_fetches[k].name for k in fetch_names]
    want = exe.run(bundle.eval_program, feed=feed, fetch_list=names)
    predictor = paddle_infer.create_predictor(make_config(
        os.path.join(directory, prefix + ".pdmodel"), os.path.join(directory, prefix + ".pdiparams"),
        precision=precision))
    for name in predictor.get_input_names():
        handle = predictor.get_input_handle(name)
        handle.reshape(feed[name].shape)
        handle.copy_from_cpu(feed[name])
    predictor.run()
    got = [predictor.get_output_handle(n).copy_to_cpu() for n in predictor.get_output_names()]
    real = feed["attention_mask"][:, 0, 0, :] > 0
    per_token = [np.abs(np.asarray(w) - g) for w, g in zip(want, got)]
    return float(max((d[real] if d.shape == real.shape else d).max() for d in per_token))


def write_export(exe, bundle, directory, *, model_cfg, vocab_file, settings, source, tolerance=DEFAULT_TOLERANCE,
                 extra=None):
    """Fill `directory` (empty, e.g. from utils.fs.atomic_output_dir) with a verified export.

    The scope must hold the model's parameters (loaded, or just trained).

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
                                fetch_names=settings.fetch_names)
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
    import tempfile

    from inference.predictor import DEFAULT_BATCH_SIZE, load_predictor

    with tempfile.TemporaryDirectory(prefix=f"{settings.task.lower()}-export-") as tmp:
        write_export(exe, bundle, tmp, model_cfg=model_cfg, vocab_file=vocab_file, settings=settings,
                     source=source)
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


SQUAD_DEFAULTS = {"max_seq_length": 384, "doc_stride": 128, "max_query_length": 64}
GLUE_MAX_SEQ_LENGTH = 128  # run_glue.py's default


def build_parser():
    from tasks import finetune
    from tasks import flags as common

    parser = common.Parser(description="Export a fine-tuned SQuAD or GLUE model for Paddle Inference.")
    parser.add_argument("--checkpoint", required=True,
                        help="fine-tuned model: a directory with bert_paddle.pdparams (run_squad's "
                             "<output-dir>/<bert-model>/squad, run_glue's <output-dir>/<bert-model>/glue/<Task>), "
                             "a .pdparams file, or an HF QA / sequence-classification checkpoint")
    parser.add_argument("--output-dir", required=True, help="export directory to create")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output-dir")
    parser.add_argument("--task-name", default=None,
                        help="GLUE task of a classifier checkpoint (CoLA, SST-2, MRPC, STS-B, QQP, MNLI, QNLI, "
                             "RTE, WNLI); default: read from the run's eval_results.json or its glue/<Task> "
                             "directory name")
    common.add_model_args(parser, default_model=None, default_help=finetune.BERT_MODEL_DEFAULT_HELP)
    parser.add_argument("--do-lower-case", action="store_true", help="lower-case input (uncased vocab)")
    parser.add_argument("--max-seq-length", type=int, default=None,
                        help=f"window length in WordPieces (default {SQUAD_DEFAULTS['max_seq_length']} for SQuAD, "
                             f"{GLUE_MAX_SEQ_LENGTH} for GLUE: as the runners)")
    parser.add_argument("--doc-stride", type=int, default=None,
                        help=f"SQuAD: distance between window starts (default {SQUAD_DEFAULTS['doc_stride']})")
    parser.add_argument("--max-query-length", type=int, default=None,
                        help=f"SQuAD: question WordPieces kept (default {SQUAD_DEFAULTS['max_query_length']})")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="largest |delta logit| allowed between the export and the training program")
    q = parser.add_argument_group("int8 (post-training quantization, SQuAD models)")
    q.add_argument("--int8-calibration-file", default=None,
                   help="SQuAD training JSON whose windows calibrate an int8 copy (model_int8.*)")
    q.add_argument("--calibration-windows", type=int, default=300, help="windows used for calibration")
    q.add_argument("--int8-eval-file", default=None,
                   help="SQuAD JSON (with answers) to measure the int8 copy's EM/F1 change on (printed, "
                        "and recorded in the manifest)")
    q.add_argument("--int8-eval-questions", type=int, default=500,
                   help="questions of --int8-eval-file used for the EM/F1 comparison (0 = all)")
    return parser


def _recorded_task(init_path):
    """The GLUE task a run_glue output directory names: eval_results.json's "task", else the directory's
    own name (<output-dir>/<bert-model>/glue/<Task>); None when neither says."""
    import json

    from data.features.glue import task_spec

    directory = init_path if os.path.isdir(init_path) else os.path.dirname(os.path.abspath(init_path))
    try:
        with open(os.path.join(directory, "eval_results.json"), encoding="utf-8") as f:
            recorded = json.load(f).get("task")
        return task_spec(recorded)
    except (OSError, ValueError, AttributeError):  # no results file, unreadable, or not a task name
        pass
    try:
        return task_spec(os.path.basename(os.path.normpath(directory)))
    except ValueError:
        return None


def detect_task(init_path, task_name):
    """Which head to export: None for SQuAD, else the GLUE TaskSpec.

    `--task-name` wins; otherwise classifier.* parameters make a GLUE model whose task the run's directory
    records (see `_recorded_task`), and anything else is exported as SQuAD (whose loader then says when
    the answer head is missing).

    Raises:
      ValueError: --task-name on a SQuAD checkpoint, an unknown task, a classifier whose task nothing
        records, or one whose width is not the task's label count.
    """
    from data.features.glue import task_spec
    from tasks.squad import TASK_HEAD_PREFIXES, head_parameters

    heads = head_parameters(init_path)
    has_qa = any(k.startswith(TASK_HEAD_PREFIXES["SQuAD"]) for k in heads)
    width = heads.get(TASK_HEAD_PREFIXES["GLUE"] + "bias")
    if task_name is not None:
        spec = task_spec(task_name)
        if has_qa and width is None:
            raise ValueError(f"--checkpoint '{init_path}' is a SQuAD model (qa_outputs.*), not a GLUE "
                             f"classifier; drop --task-name {task_name}")
    elif width is None:
        return None
    else:
        spec = _recorded_task(init_path)
        if spec is None:
            raise ValueError(f"--checkpoint '{init_path}' has a classification head ({width[0]} outputs) but "
                             "no eval_results.json or glue/<Task> directory says which GLUE task it is; "
                             "give --task-name")
    if width is not None and width[0] != spec.num_labels:
        raise ValueError(f"--checkpoint '{init_path}' has a classifier with {width[0]} outputs, but {spec.name} "
                         f"has {spec.num_labels}; check --task-name")
    return spec


def _input_paths(args):
    """(flag, path) of everything an export reads: the output may be none of them, hold none, lie in none."""
    checkpoint = args.checkpoint if os.path.exists(args.checkpoint) else args.checkpoint + ".pdparams"
    return [("--checkpoint", checkpoint), ("--vocab-file", args.vocab_file), ("--config-file", args.config_file),
            ("--int8-calibration-file", args.int8_calibration_file), ("--int8-eval-file", args.int8_eval_file)]


def _check_common(args):
    from tasks import finetune
    from tasks import flags as common
    from utils.fs import probe_writable, refuse_output_over_inputs

    common.require_existing("--vocab-file", args.vocab_file, "file")
    # Casing now, as run_squad/run_glue check it before training: the export's settings would otherwise
    # record a lower-casing the vocab contradicts, and every later loader would refuse it.
    finetune.check_vocab(args.vocab_file, args.do_lower_case)
    if not (os.path.exists(args.checkpoint) or os.path.isfile(args.checkpoint + ".pdparams")):
        raise ValueError(f"--checkpoint '{args.checkpoint}' does not exist")
    refuse_output_over_inputs("--output-dir", args.output_dir, _input_paths(args))
    if os.path.exists(args.output_dir) and not args.overwrite:
        raise ValueError(f"--output-dir '{args.output_dir}' already exists; remove it or add --overwrite")
    try:
        probe_writable(os.path.abspath(args.output_dir))
    except OSError as err:
        raise ValueError(f"--output-dir '{args.output_dir}' cannot be written ({err})") from None
    if not args.tolerance > 0:
        raise ValueError(f"--tolerance must be > 0, got {args.tolerance}")


def _squad_settings(args, name):
    """ExportSettings of a SQuAD export from the flags (SQuAD's defaults filled in)."""
    from data.features.squad import FeatureParams
    from tasks import flags as common
    from tasks.config import in_flag_terms

    values = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in SQUAD_DEFAULTS.items()}
    try:
        params = FeatureParams(values["max_seq_length"], values["doc_stride"], values["max_query_length"])
    except ValueError as err:
        raise ValueError(in_flag_terms(str(err))) from None
    if args.int8_calibration_file:
        common.require_existing("--int8-calibration-file", args.int8_calibration_file, "file")
        common.require_positive(args, "calibration_windows")
    if args.int8_eval_file:
        if not args.int8_calibration_file:
            raise ValueError("--int8-eval-file measures the int8 copy: give --int8-calibration-file too")
        common.require_existing("--int8-eval-file", args.int8_eval_file, "file")
    return layout.ExportSettings(model_name=name, do_lower_case=args.do_lower_case,
                                 max_seq_length=params.max_seq_length, doc_stride=params.doc_stride,
                                 max_query_length=params.max_query_length)


def _glue_settings(args, name, spec):
    """ExportSettings of a GLUE export (the task, its labels, the sequence length) from the flags."""
    for flag, value in (("--doc-stride", args.doc_stride), ("--max-query-length", args.max_query_length),
                        ("--int8-calibration-file", args.int8_calibration_file),
                        ("--int8-eval-file", args.int8_eval_file)):
        if value is not None:
            raise ValueError(f"{flag} applies to SQuAD exports; '{args.checkpoint}' is a GLUE {spec.name} "
                             f"classifier: drop {flag}")
    length = GLUE_MAX_SEQ_LENGTH if args.max_seq_length is None else args.max_seq_length
    minimum = 5 if spec.train.text_b is not None else 3
    if length < minimum:
        raise ValueError(f"--max-seq-length must be >= {minimum} for {spec.name}, got {length}")
    return layout.ExportSettings(model_name=name, do_lower_case=args.do_lower_case, max_seq_length=length,
                                 fetch_names=("logits",), task=spec.name, labels=tuple(spec.labels or ()),
                                 regression=spec.is_regression)


def export_checkpoint(args):
    """Validate the flags, detect the head, then load, export, verify and (SQuAD, optionally) quantize.

    Returns:
      the manifest dict of the new directory.

    Raises:
      ValueError: a bad flag or file, naming it; a parity failure (nothing is written).
    """
    import paddle

    import program
    from tasks import finetune
    from tasks.squad import init_parameters, resolve_init_path
    from utils.fs import atomic_output_dir

    _check_common(args)
    init_path = resolve_init_path(args.checkpoint, args.model_prefix)
    spec = detect_task(init_path, args.task_name)
    model_cfg = finetune.model_config(args.bert_model, args.config_file, args.vocab_file, init_path)
    name = finetune.model_name(args.bert_model, args.config_file, args.vocab_file, model_cfg)
    settings = _squad_settings(args, name) if spec is None else _glue_settings(args, name, spec)
    if settings.max_seq_length > model_cfg.max_position_embeddings:
        raise ValueError(f"--max-seq-length {settings.max_seq_length} exceeds the model's max_position_embeddings "
                         f"({model_cfg.max_position_embeddings})")
    paddle.enable_static()
    exe = paddle.static.Executor(paddle.CPUPlace())
    with paddle.static.scope_guard(paddle.static.Scope()):
        if spec is None:
            bundle = program.build_squad(model_cfg, program.TrainConfig(), is_training=False)
            head = {}
        else:
            from tasks.glue import HEAD_PREFIX

            bundle = program.build_glue(model_cfg, program.TrainConfig(), spec.num_labels, is_training=False)
            head = {"head_prefix": HEAD_PREFIX, "head_name": "classification head", "task": "GLUE"}
        exe.run(bundle.startup_program)
        init_parameters(exe, bundle.main_program, init_path, require_qa_head=True,
                        vocab_size=model_cfg.vocab_size, **head)
        with atomic_output_dir(args.output_dir, overwrite=args.overwrite) as tmp:
            manifest = write_export(exe, bundle, tmp, model_cfg=model_cfg, vocab_file=args.vocab_file,
                                    settings=settings, source=source_record(init_path), tolerance=args.tolerance)
            if args.int8_calibration_file:
                from inference.quantize import add_int8_model

                manifest = add_int8_model(tmp, args.int8_calibration_file, windows=args.calibration_windows,
                                          eval_file=args.int8_eval_file, eval_questions=args.int8_eval_questions)
    logger.info("exported %s (%s) to %s (%d files)", args.checkpoint, settings.task, args.output_dir,
                len(manifest["files"]))
    return manifest


def main(argv=None):
    args = build_parser().parse_args(argv)
    manifest = export_checkpoint(args)
    print(f"exported to {args.output_dir}: max |delta logit| vs the training program "
          f"{manifest['verified_max_abs_logit_diff']:.3g}")
    if "int8" in manifest:
        print(f"int8 copy: {manifest['int8']['summary']}")
    return manifest


def cli(argv=None):
    """`main` as a command: exit 0, or 2 with one `error:` line for bad input."""
    from utils.cli import run_cli

    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
