"""Export a fine-tuned SQuAD or GLUE model to a self-contained Paddle Inference directory, verified before
success.

Usage (from the repository root):

    python -m inference.export --checkpoint results/bert-large-uncased/squad --output-dir export/squad \
        --vocab-file vocab/bert-large-uncased-vocab.txt --do-lower-case [--max-seq-length 384] \
        [--int8-calibration-file squad/train-v1.1.json --calibration-windows 300] [--eval-file squad/dev-v1.1.json]
    python -m inference.export --checkpoint results/bert-large-uncased/glue/MRPC --output-dir export/mrpc \
        --vocab-file vocab/bert-large-uncased-vocab.txt --do-lower-case [--task-name MRPC --max-seq-length 128]

The head is read from the checkpoint: `qa_outputs.*` parameters make a SQuAD export, `classifier.*` a GLUE
one, whose task comes from `--task-name`, else the run's eval_results.json, else the run_glue output
directory's name (`.../glue/<Task>`); the task, its labels and regression-or-not go into settings.json.

`--format hf` writes a Hugging Face model directory instead (`inference.hf_model`: model.safetensors,
config.json, the tokenizer files and a model card), from any checkpoint kind: a pretraining step or phase
directory (`BertForPreTraining`), a SQuAD model (`BertForQuestionAnswering`), a GLUE classifier
(`BertForSequenceClassification`, labels as above), or with `--encoder-only` just the encoder (`BertModel`):

    python -m inference.export --format hf --checkpoint results/bert-large-uncased/squad --output-dir hf/squad \
        --vocab-file vocab/bert-large-uncased-vocab.txt --do-lower-case

Owns the command: its flags and their checks (no output over an input, the vocab's casing, the window
settings), detecting the head, building the eval program, loading the checkpoint into it, and writing the
directory atomically through `inference.verified_export` (which also checks that the exported model
reproduces the training program's outputs within `--tolerance`, or nothing is written). With
`--int8-calibration-file` (SQuAD) it also adds a post-training-quantized copy (`inference.quantize`); then
every precision it ships besides fp32 (bf16 where this machine runs it, int8 with the copy) is measured
against fp32 and recorded in the manifest (`inference.precision_records`; with `--eval-file`, SQuAD EM/F1
too), which is what `precision="auto"` chooses from when the export is served.
Does not own: the HF directory's files (`inference.hf_model`), the export and its parity check (`inference.verified_export`), the directory layout and
manifest (`inference.model_dir`), running answers and classifications (`inference.predictor`).
"""
import zlib  # noqa: F401  -- before paddle: libpaddle's own zlib symbols crash later zlib users
import utils.preflight  # noqa: F401  -- OMP threads default, MKL path; must stay before paddle

import json
import logging
import os
import sys

import paddle

import program
from data.features.glue import task_spec
from data.features.squad import FeatureParams
from inference import hf_model
from inference import model_dir as layout
from inference.precision_auto import RECORDS_KEY
from inference.precision_records import record_precisions
from inference.quantize import add_int8_model
from inference.verified_export import DEFAULT_TOLERANCE, source_record, write_export
from modeling import TASK_HEADS
from tasks import finetune_config as finetune
from tasks import flags as common
from tasks.config import check_fits_model, in_flag_terms
from utils.cli import run_cli
from utils.fs import atomic_output_dir, probe_writable, refuse_output_over_inputs
from utils.hf_import import HF_CLASSIFIER, HF_ENCODER, HF_PRETRAINING, hf_architecture, is_hf_checkpoint
from utils.runtime import cpu_bf16_support
from utils.weights import (fp32_parameters, head_parameters, init_parameters, load_pretrained, parameter_shapes,
                           resolve_init_path)

logger = logging.getLogger("inference.export")

SQUAD_DEFAULTS = {"max_seq_length": 384, "doc_stride": 128, "max_query_length": 64}
GLUE_MAX_SEQ_LENGTH = 128  # run_glue.py's default
FORMATS = ("paddle-inference", "hf")
# Flags that shape a Paddle Inference export (its windows, parity check, int8 copy); an HF directory is the
# model alone, so giving one with --format hf is a mistake worth naming.
_PADDLE_INFERENCE_ONLY = ("max_seq_length", "doc_stride", "max_query_length", "int8_calibration_file",
                          "eval_file")


def build_parser():
    parser = common.Parser(description="Export a fine-tuned SQuAD or GLUE model for Paddle Inference.")
    parser.add_argument("--checkpoint", required=True,
                        help="fine-tuned model: a directory with bert_paddle.pdparams (run_squad's "
                             "<output-dir>/<bert-model>/squad, run_glue's <output-dir>/<bert-model>/glue/<Task>), "
                             "a .pdparams file, or an HF QA / sequence-classification checkpoint")
    parser.add_argument("--output-dir", required=True, help="export directory to create")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output-dir")
    parser.add_argument("--format", choices=FORMATS, default="paddle-inference",
                        help="paddle-inference (default): a verified Paddle Inference directory of a fine-tuned "
                             "model; hf: a Hugging Face model directory (model.safetensors, config.json, tokenizer "
                             "files, README.md) that transformers' from_pretrained loads, from a pretraining step or "
                             "phase directory, a SQuAD or a GLUE model")
    parser.add_argument("--encoder-only", action="store_true",
                        help="--format hf: write the encoder alone (HF BertModel), whatever heads the checkpoint has")
    parser.add_argument("--task-name", default=None,
                        help="GLUE task of a classifier checkpoint (CoLA, SST-2, MRPC, STS-B, QQP, MNLI, QNLI, "
                             "RTE, WNLI); default: read from the run's eval_results.json or its glue/<Task> "
                             "directory name")
    common.add_model_args(parser, default_model=None, default_help=finetune.BERT_MODEL_DEFAULT_HELP)
    parser.add_argument("--do-lower-case", action="store_true", help="lower-case input (uncased vocab)")
    common.add_max_seq_length(parser, None, f"window length in WordPieces (default "
                                            f"{SQUAD_DEFAULTS['max_seq_length']} for SQuAD, {GLUE_MAX_SEQ_LENGTH} "
                                            "for GLUE: as the runners)")
    parser.add_argument("--doc-stride", type=int, default=None,
                        help=f"SQuAD: distance between window starts (default {SQUAD_DEFAULTS['doc_stride']})")
    parser.add_argument("--max-query-length", type=int, default=None,
                        help=f"SQuAD: question WordPieces kept (default {SQUAD_DEFAULTS['max_query_length']})")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="largest |delta logit| allowed between the export and the training program")
    q = parser.add_argument_group("reduced precisions (SQuAD models: int8 copy, EM/F1 of bf16 and int8)")
    q.add_argument("--int8-calibration-file", default=None,
                   help="SQuAD training JSON whose windows calibrate an int8 copy (model_int8.*)")
    q.add_argument("--calibration-windows", type=int, default=300, help="windows used for calibration")
    q.add_argument("--eval-file", "--int8-eval-file", dest="eval_file", default=None,
                   help="SQuAD JSON (with answers) to measure the EM/F1 change of bf16 (where this machine runs "
                        "it) and of the int8 copy against fp32 on (printed, and recorded in the manifest: "
                        "serving's precision auto needs it to choose int8)")
    q.add_argument("--eval-questions", "--int8-eval-questions", dest="eval_questions", type=int, default=500,
                   help="questions of --eval-file used for the EM/F1 comparison (0 = all)")
    return parser


def _recorded_task(init_path):
    """The GLUE task a run_glue output directory names: eval_results.json's "task", else the directory's
    own name (<output-dir>/<bert-model>/glue/<Task>); None when neither says."""
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
    heads = head_parameters(init_path)
    has_qa = any(k.startswith(TASK_HEADS["SQuAD"][0] + ".") for k in heads)
    width = heads.get(TASK_HEADS["GLUE"][0] + ".bias")
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
            ("--int8-calibration-file", args.int8_calibration_file), ("--eval-file", args.eval_file)]


def _check_common(args):
    """The checks every export makes first. Returns the --vocab-file's VocabInfo.

    Its casing is checked now, as run_squad/run_glue check it before training: the export's settings would
    otherwise record a lower-casing the vocab contradicts, and every later loader would refuse it.
    """
    vocab = finetune.read_vocab(args.vocab_file, args.do_lower_case)
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
    return vocab


def _squad_settings(args, name):
    """ExportSettings of a SQuAD export from the flags (SQuAD's defaults filled in)."""
    values = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in SQUAD_DEFAULTS.items()}
    try:
        params = FeatureParams(values["max_seq_length"], values["doc_stride"], values["max_query_length"])
    except ValueError as err:
        raise ValueError(in_flag_terms(str(err))) from None
    if args.int8_calibration_file:
        common.require_existing("--int8-calibration-file", args.int8_calibration_file, "file")
        common.require_positive(args, "calibration_windows")
    if args.eval_file:
        common.require_existing("--eval-file", args.eval_file, "file")
        if args.eval_questions < 0:
            raise ValueError(f"--eval-questions must be >= 0 (0 = all), got {args.eval_questions}")
        support = cpu_bf16_support()
        if not args.int8_calibration_file and not support.usable:
            raise ValueError(f"--eval-file measures bf16 and the int8 copy against fp32, but bf16 cannot run here "
                             f"({support.reason}) and there is no int8 copy: add --int8-calibration-file or "
                             "drop --eval-file")
    return layout.ExportSettings(model_name=name, do_lower_case=args.do_lower_case,
                                 max_seq_length=params.max_seq_length, doc_stride=params.doc_stride,
                                 max_query_length=params.max_query_length)


def _glue_settings(args, name, spec):
    """ExportSettings of a GLUE export (the task, its labels, the sequence length) from the flags."""
    for flag, value in (("--doc-stride", args.doc_stride), ("--max-query-length", args.max_query_length),
                        ("--int8-calibration-file", args.int8_calibration_file),
                        ("--eval-file", args.eval_file)):
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
    vocab = _check_common(args)
    init_path = resolve_init_path(args.checkpoint, args.model_prefix)
    spec = detect_task(init_path, args.task_name)
    model_cfg = finetune.model_config(args.bert_model, args.config_file, vocab, init_path)
    name = finetune.model_name(args.bert_model, args.config_file, vocab, model_cfg)
    settings = _squad_settings(args, name) if spec is None else _glue_settings(args, name, spec)
    check_fits_model(settings.max_seq_length, model_cfg, f"the model ({name})")
    paddle.enable_static()
    exe = paddle.static.Executor(paddle.CPUPlace())
    with paddle.static.scope_guard(paddle.static.Scope()):
        if spec is None:
            bundle = program.build_squad(model_cfg, program.TrainConfig(), is_training=False)
        else:
            bundle = program.build_glue(model_cfg, program.TrainConfig(), spec.num_labels, is_training=False)
        exe.run(bundle.startup_program)
        init_parameters(exe, bundle.main_program, init_path, require_head=True, vocab_size=model_cfg.vocab_size,
                        task="SQuAD" if spec is None else "GLUE")
        with atomic_output_dir(args.output_dir, overwrite=args.overwrite) as tmp:
            manifest = write_export(exe, bundle, tmp, model_cfg=model_cfg, vocab_file=args.vocab_file,
                                    settings=settings, source=source_record(init_path), tolerance=args.tolerance)
            if args.int8_calibration_file:
                add_int8_model(tmp, args.int8_calibration_file, windows=args.calibration_windows)
            manifest = record_precisions(tmp, eval_file=args.eval_file, eval_questions=args.eval_questions)
    logger.info("exported %s (%s) to %s (%d files)", args.checkpoint, settings.task, args.output_dir,
                sum(len(files) for _, _, files in os.walk(args.output_dir)))  # the manifest lists all but itself
    return manifest


def _check_hf_flags(args):
    """Refuse Paddle Inference's flags with --format hf, and --encoder-only without it."""
    if args.format != "hf":
        if args.encoder_only:
            raise ValueError("--encoder-only applies to --format hf: add --format hf or drop --encoder-only")
        return
    for attr in _PADDLE_INFERENCE_ONLY:
        if getattr(args, attr) is not None:
            flag = "--" + attr.replace("_", "-")
            raise ValueError(f"{flag} applies to Paddle Inference exports; --format hf writes the model alone "
                             f"(window settings are the user's in transformers): drop {flag}")


def _hf_target(init_path, args):
    """(HF architecture, GLUE TaskSpec or None) of the checkpoint (`utils.hf_import.hf_architecture`)."""
    if is_hf_checkpoint(init_path):
        raise ValueError(f"--checkpoint '{args.checkpoint}' is already a Hugging Face checkpoint: "
                         "transformers loads it as it is")
    architecture = hf_architecture(parameter_shapes(init_path), args.encoder_only)
    if architecture == HF_CLASSIFIER:
        return architecture, detect_task(init_path, args.task_name)
    if args.task_name is not None:
        raise ValueError(f"--task-name applies to a GLUE classifier; '{args.checkpoint}' exports as {architecture}: "
                         "drop --task-name")
    return architecture, None


def _checkpoint_state(init_path, model_cfg, architecture, spec):
    """{our name: float32 array} of every parameter the HF model has, loaded into the matching program, so
    that our loader's checks (every parameter present, shapes of `model_cfg`, fp32 masters of an O2 run)
    apply as they do for fine-tuning."""
    paddle.enable_static()
    exe = paddle.static.Executor(paddle.CPUPlace())
    with paddle.static.scope_guard(paddle.static.Scope()):
        if architecture == HF_PRETRAINING:
            bundle = program.build_pretraining(model_cfg, program.TrainConfig())
        elif architecture == HF_CLASSIFIER:
            bundle = program.build_glue(model_cfg, program.TrainConfig(), spec.num_labels, is_training=False)
        else:  # a QA model, or the encoder of any checkpoint (its head, if any, is dropped below)
            bundle = program.build_squad(model_cfg, program.TrainConfig(), is_training=False)
        exe.run(bundle.startup_program)
        head = TASK_HEADS["SQuAD"][0]
        load_pretrained(exe, bundle.main_program, init_path,
                        allow_missing_prefixes=(head,) if architecture == HF_ENCODER else ())
        state = fp32_parameters(bundle.main_program)
    return {k: v for k, v in state.items() if not (architecture == HF_ENCODER and k.startswith(head + "."))}


def export_hf(args):
    """--format hf: validate the flags, read the checkpoint, write the HF directory atomically.

    Returns:
      dict: output_dir, architecture, task (GLUE or None), tensors ({HF name: shape}), trimmed_vocab_rows.

    Raises:
      ValueError: a bad flag or file (naming it), an HF checkpoint given, or a checkpoint that does not fit
        the model configuration.
    """
    _check_hf_flags(args)
    vocab = _check_common(args)
    init_path = resolve_init_path(args.checkpoint, args.model_prefix)
    architecture, spec = _hf_target(init_path, args)
    model_cfg = finetune.model_config(args.bert_model, args.config_file, vocab, init_path)
    state = _checkpoint_state(init_path, model_cfg, architecture, spec)
    trimmed = model_cfg.padded_vocab_size - model_cfg.vocab_size
    directory = init_path if os.path.isdir(init_path) else os.path.dirname(os.path.abspath(init_path))
    card = hf_model.model_card(architecture, model_cfg, hf_model.training_record(directory), source=args.checkpoint,
                               task=spec.name if spec else None, trimmed_rows=trimmed)
    with atomic_output_dir(args.output_dir, overwrite=args.overwrite) as tmp:
        tensors = hf_model.write_hf_model(
            tmp, state, model_cfg, architecture, vocab_file=args.vocab_file, do_lower_case=args.do_lower_case,
            pad_token_id=vocab.special_ids()["pad"], card=card, labels=spec.labels if spec else None,
            regression=bool(spec and spec.is_regression))
    logger.info("exported %s as %s to %s (%d tensors; %d padded vocab rows trimmed)", args.checkpoint, architecture,
                args.output_dir, len(tensors), trimmed)
    return {"output_dir": args.output_dir, "architecture": architecture, "task": spec.name if spec else None,
            "tensors": tensors, "trimmed_vocab_rows": trimmed}


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.format == "hf":
        summary = export_hf(args)
        print(f"exported {summary['architecture']} to {args.output_dir} ({len(summary['tensors'])} tensors): "
              f"load it with transformers' from_pretrained('{args.output_dir}')")
        return summary
    _check_hf_flags(args)
    manifest = export_checkpoint(args)
    print(f"exported to {args.output_dir}: max |delta logit| vs the training program "
          f"{manifest['verified_max_abs_logit_diff']:.3g}")
    if "int8" in manifest:
        print(f"int8 copy: {manifest['int8']['summary']}")
    for precision, record in manifest[RECORDS_KEY].items():
        print(f"{precision} vs fp32: {record['summary']}")
    return manifest


def cli(argv=None):
    """`main` as a command: exit 0, or 2 with one `error:` line for bad input."""
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
