"""SQuAD v1.1 / v2.0 fine-tuning, evaluation, prediction and single-question answering with BERT.

Usage (from the repository root):

    python run_squad.py --mode train_eval --from-pretrained-params results/bert-large-uncased/phase2/1563 \
        --train-file squad/train-v1.1.json --predict-file squad/dev-v1.1.json \
        --vocab-file vocab/bert-large-uncased-vocab.txt --do-lower-case --output-dir results
    python run_squad.py --from-checkpoint results/bert-large-uncased/squad --vocab-file ... --do-lower-case \
        --output-dir results --question "Who wrote it?" --context-file page.txt

Owns the command line: the NVIDIA reference's run_squad.py flags with the same names and meanings
(`--do-train/--do-predict/--do-eval`, `--train-batch-size/--predict-batch-size`, ...), plus `--mode`
(run_squad.sh's mode word), `--batch-size` (both batch sizes), `--device`, `--infer-dtype`,
`--features-cache-dir`, `--question/--context/--context-file`; and `validate_args`, the one place that
rejects bad flags before any file is written, returning a frozen `tasks.finetune_config.FinetuneConfig`;
nothing below it reads the flags. The run is `tasks.finetune.FinetuneSession` with SQuAD's adapter
(`tasks.squad`). Prediction (eval,
prediction, --question) runs through `inference.predictor.QAPredictor` (Paddle Inference, oneDNN,
length-bucketed batches): a fine-tuned checkpoint is exported to a temporary directory and verified first;
`--from-checkpoint` may also be an `inference.export` directory (then `--infer-dtype int8` is possible).
Only `--benchmark` still times the training-time executor program, as the reference does.

Outputs, as the reference: `<output-dir>/<bert-model>/squad/` gets `<model-prefix>.pdparams` (+
`bert_config.json`) after training and predictions.json, nbest_predictions.json (null_odds.json for v2);
the DLLogger report (`--report-file`) gets e2e_train_time, training_sequences_per_second,
e2e_inference_time, inference_sequences_per_second, exact_match and F1.

Differences from the reference, on purpose: EM/F1 are computed in-process (`--eval-script` is accepted
and ignored); `--warmup-proportion` and `--optimizer` are honoured; a missing or unreadable init path is
an error, never a random initialisation; `--from-checkpoint` with `--from-pretrained-params` is an error;
`--from-pretrained-params` may also be a Hugging Face BERT checkpoint (`model.safetensors` [+
`config.json`]); the v2 null score is per example.

A single question's context (`--context`, `--context-file`) is at most MAX_CONTEXT_CHARS (2,000,000)
characters: about 3,200 windows of 384 tokens at the default --doc-stride 128 (English Wikipedia text) to
run the model over. A longer one is refused, and a file is not read beyond the limit; give the passage that
should hold the answer.
"""
import zlib  # noqa: F401  -- before paddle: libpaddle's own zlib symbols crash later zlib users
import utils.preflight  # noqa: F401  -- OMP threads default, MKL path; must stay before paddle

import logging
import os
import sys

import paddle

from data.features.squad import FeatureParams
from inference import model_dir as export_layout
from tasks import finetune_config as finetune
from tasks import flags as common
from tasks import outcome
from tasks.config import OptimConfig, PrecisionConfig, RunSettings, in_flag_terms, section, train_config
from tasks.finetune import FinetuneSession
from tasks.finetune_config import (FinetuneConfig, ModelInit, Modes, Outputs, Schedule, TextSettings,
                                   make_room_for_model)
from tasks.squad import SquadAdapter, SquadSettings, answer_question, describe_answer
from utils import runtime
from utils.cli import run_cli
from utils.runtime import DistEnv, init_runtime, resolve_device
from tasks.squad_metrics import check_v1_answerable

logger = logging.getLogger("run_squad")

MAX_CONTEXT_CHARS = 2_000_000  # --context / --context-file; see the module docstring
MODES = ("train", "eval", "prediction", "train_eval")
INFER_DTYPES = ("float32", "bfloat16", "int8")
PRECISION_OF_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "int8": "int8"}  # inference.predictor's names
DEFAULT_TRAIN_BATCH, DEFAULT_PREDICT_BATCH = 32, 8


def build_parser():
    """The argparse parser (reference groups, then ours)."""
    parser = common.Parser(description="BERT fine-tuning and prediction on SQuAD.")
    g = parser.add_argument_group("Global")
    g.add_argument("--train-file", help="SQuAD JSON for training, e.g. train-v1.1.json")
    g.add_argument("--predict-file", help="SQuAD JSON to predict (and evaluate), e.g. dev-v1.1.json")
    g.add_argument("--eval-script", default=None,
                   help="accepted for compatibility and ignored: EM/F1 are computed in-process with the "
                        "official scripts' semantics")
    g.add_argument("--epochs", type=int, default=3, help="training epochs")
    g.add_argument("--max-steps", type=int, default=None,
                   help="cap on optimizer updates; None or -1 = --epochs decide")
    g.add_argument("--output-dir", required=True, help="results go to <output-dir>/<bert-model>/squad/")
    finetune.add_replace_model_flag(g)
    g.add_argument("--log-freq", type=int, default=10, help="log the loss every N updates")
    g.add_argument("--num-steps-per-checkpoint", type=int, default=100,
                   help="accepted for compatibility: SQuAD fine-tuning saves once, at the end")
    g.add_argument("--from-pretrained-params", default=None,
                   help="BERT to fine-tune: our .pdparams / checkpoint step dir, or a Hugging Face "
                        "model.safetensors (file or directory with config.json)")
    g.add_argument("--from-checkpoint", default=None,
                   help="a fine-tuned SQuAD model (with QA head) to evaluate, predict with or train further")
    g.add_argument("--last-step-of-checkpoint", default=None,
                   help="accepted for compatibility; SQuAD has no resume (as the reference)")
    g.add_argument("--features-cache-dir", default=None,
                   help="cache windowed features here, keyed by file, vocab and lengths")
    common.add_model_args(parser, default_model=None, default_help=finetune.BERT_MODEL_DEFAULT_HELP)
    common.add_runtime_args(parser)
    common.add_optimizer_args(parser, optimizer="AdamW")
    _add_squad_args(parser)
    q = parser.add_argument_group("Single question")
    q.add_argument("--question", default=None, help="answer this question with a fine-tuned model")
    q.add_argument("--context", default=None,
                   help=f"the text to find the answer in (at most {MAX_CONTEXT_CHARS:,} characters)")
    q.add_argument("--context-file", default=None,
                   help=f"UTF-8 file holding the context (at most {MAX_CONTEXT_CHARS:,} characters)")
    common.add_amp_args(parser)
    return parser


def _add_squad_args(parser):
    t = parser.add_argument_group("SQuAD")
    t.add_argument("--mode", choices=MODES, default=None,
                   help="train | eval (predict + EM/F1) | prediction | train_eval; adds to --do-* flags")
    t.add_argument("--do-train", action="store_true", help="fine-tune on --train-file")
    t.add_argument("--do-predict", action="store_true", help="predict --predict-file")
    t.add_argument("--do-eval", action="store_true", help="score the predictions (implies --do-predict)")
    t.add_argument("--batch-size", type=int, default=None,
                   help="default for both --train-batch-size and --predict-batch-size")
    t.add_argument("--train-batch-size", type=int, default=None,
                   help=f"sequences per micro-batch per process (default {DEFAULT_TRAIN_BATCH})")
    t.add_argument("--predict-batch-size", type=int, default=None,
                   help=f"sequences per prediction batch (default {DEFAULT_PREDICT_BATCH})")
    common.add_max_seq_length(t, 384, "window length in WordPieces")
    t.add_argument("--doc-stride", type=int, default=128, help="distance between window starts")
    t.add_argument("--max-query-length", type=int, default=64, help="question WordPieces kept")
    t.add_argument("--n-best-size", type=int, default=20, help="n-best list size")
    t.add_argument("--max-answer-length", type=int, default=30, help="longest answer in WordPieces")
    t.add_argument("--do-lower-case", action="store_true", help="lower-case input (uncased vocab)")
    t.add_argument("--verbose-logging", action="store_true",
                   help="log data-processing details; print the n-best list with --question")
    t.add_argument("--version-2-with-negative", action="store_true", help="SQuAD 2.0 (unanswerable)")
    t.add_argument("--null-score-diff-threshold", type=float, default=0.0,
                   help="v2: predict no answer when null score - best score exceeds this")
    t.add_argument("--infer-dtype", choices=INFER_DTYPES, default="float32",
                   help="prediction precision; bfloat16 runs matmuls in bf16 (oneDNN CPUs with bf16); int8 "
                        "needs --from-checkpoint <export dir> with an int8 copy (python -m inference.export "
                        "--int8-calibration-file ...)")


def _modes(args):
    """(do_train, do_predict, do_eval) from --mode and the --do-* flags."""
    do_train, do_predict, do_eval = args.do_train, args.do_predict, args.do_eval
    if args.mode:
        do_train |= args.mode in ("train", "train_eval")
        do_predict |= args.mode != "train"
        do_eval |= args.mode in ("eval", "train_eval")
    do_predict |= do_eval
    if args.question is not None:
        if do_train or do_predict:
            raise ValueError("--question answers one question with a fine-tuned model; do not combine it "
                             "with --mode / --do-train / --do-predict / --do-eval")
    elif not (do_train or do_predict):
        raise ValueError("nothing to do: give --mode {train,eval,prediction,train_eval} (or --do-train / "
                         "--do-predict), or --question")
    return do_train, do_predict, do_eval


def _check_files(args, do_train, do_predict):
    if do_train and not args.train_file:
        raise ValueError("training (--mode train/train_eval or --do-train) needs --train-file")
    if do_predict and not args.predict_file:
        raise ValueError("prediction (--mode eval/prediction/train_eval or --do-predict) needs --predict-file")
    for flag, path in (("--train-file", args.train_file if do_train else None),
                       ("--predict-file", args.predict_file if do_predict else None),
                       ("--vocab-file", args.vocab_file), ("--config-file", args.config_file)):
        if path is not None:
            common.require_existing(flag, path, "file")


def _init_path(args, do_train):
    """(path, require_qa_head) of the weights to start from; never None (no silent random init)."""
    found = finetune.init_path(args.from_checkpoint, args.from_pretrained_params, args.model_prefix, do_train,
                               "SQuAD")
    if args.last_step_of_checkpoint is not None:
        logger.warning("--last-step-of-checkpoint is ignored: SQuAD fine-tuning has no resume")
    return found


def _model_config(args, vocab, init_path):
    """BertConfig: --config-file, else the checkpoint's own config, else bert_configs/<--bert-model>.json."""
    return finetune.model_config(args.bert_model, args.config_file, vocab, init_path)


def _model_name(args, vocab, model_cfg):
    return finetune.model_name(args.bert_model, args.config_file, vocab, model_cfg)


def _check_vocab(args):
    """A readable BERT vocab (special tokens present) whose casing matches --do-lower-case."""
    return finetune.read_vocab(args.vocab_file, args.do_lower_case)


def _check_numbers(args):
    # The window lengths are checked by FeatureParams, the gradient merge by TrainConfig: once each.
    common.require_positive(args, "epochs", "n_best_size", "max_answer_length", "learning_rate", "log_freq",
                            "benchmark_steps")
    common.require_positive(args, "benchmark_warmup_steps", "warmup_start_lr",
                            allow_zero=("benchmark_warmup_steps", "warmup_start_lr"))
    for flag in ("batch_size", "train_batch_size", "predict_batch_size"):
        if getattr(args, flag) is not None:
            common.require_positive(args, flag)
    if args.max_steps is not None and args.max_steps != -1 and args.max_steps < 1:
        raise ValueError(f"--max-steps must be -1 (use --epochs) or > 0, got {args.max_steps}")
    try:
        return FeatureParams(args.max_seq_length, args.doc_stride, args.max_query_length)
    except ValueError as err:
        raise ValueError(in_flag_terms(str(err))) from None


_check_writable = finetune.check_writable


def _check_outputs(args, out_dir):
    """--output-dir (its `out_dir` below), the --report-file's directory and --features-cache-dir must be
    writable."""
    _check_writable("--output-dir", args.output_dir, out_dir)
    if args.report_file:  # the default lies under --output-dir, checked above
        _check_writable("--report-file", args.report_file, os.path.dirname(os.path.abspath(args.report_file)))
    if args.features_cache_dir:
        _check_writable("--features-cache-dir", args.features_cache_dir, args.features_cache_dir)


def _context(args):
    if args.question is None:
        if args.context is not None or args.context_file is not None:
            raise ValueError("--context / --context-file need --question")
        return None
    if (args.context is None) == (args.context_file is None):
        raise ValueError("--question needs exactly one of --context and --context-file")
    if not args.question.strip():
        raise ValueError("--question is empty")
    if args.context is not None:
        text, where = args.context, "--context"
    else:
        common.require_existing("--context-file", args.context_file, "file")
        where = f"--context-file '{args.context_file}'"
        try:
            with open(args.context_file, encoding="utf-8") as f:
                text = f.read(MAX_CONTEXT_CHARS + 1)  # a larger file is refused below, not read whole
        except UnicodeDecodeError as e:
            raise ValueError(f"{where} is not UTF-8 text (byte {e.start}: {e.reason}); convert it, e.g. "
                             f"iconv -f latin1 -t utf-8") from None
    if not text.strip():
        raise ValueError(f"{where} is empty: there is no text to find the answer in")
    if len(text) > MAX_CONTEXT_CHARS:
        raise ValueError(f"{where} has more than {MAX_CONTEXT_CHARS:,} characters, the most one question is "
                         "answered from: give the passage that should hold the answer")
    return text


def _check_export(args, init_path, do_train, params):
    """(export dir or None, FeatureParams): an exported --from-checkpoint predicts with its own settings.

    Raises:
      ValueError: training an export, a damaged export, int8 without an int8 copy or without an export.
    """
    found = finetune.exported_model(init_path, do_train=do_train, benchmark=args.benchmark,
                                    benchmark_hint="give the fine-tuned .pdparams, or time an export with "
                                                   "python -m benchmarks.bench_inference")
    if found is None:
        if args.infer_dtype == "int8":
            raise ValueError("--infer-dtype int8 needs --from-checkpoint <export dir> holding an int8 copy: "
                             "python -m inference.export --checkpoint ... --int8-calibration-file "
                             "<SQuAD training JSON> --output-dir DIR")
        return None, params
    manifest, s = found
    if args.infer_dtype == "int8" and not all(n in manifest["files"] for n in export_layout.INT8_FILES):
        raise ValueError(f"--infer-dtype int8: '{init_path}' has no int8 copy; re-export with "
                         "--int8-calibration-file <SQuAD training JSON>, or use --infer-dtype float32")
    if not s.is_squad:
        raise ValueError(f"--from-checkpoint '{init_path}' is an export of a GLUE {s.task} classifier, not a SQuAD "
                         "model; evaluate it with run_glue.py, or serve it (python -m inference.server)")
    exported = FeatureParams(s.max_seq_length, s.doc_stride, s.max_query_length)
    if exported != params or s.do_lower_case != args.do_lower_case:
        logger.warning("'%s' was exported with --max-seq-length %d --doc-stride %d --max-query-length %d%s; "
                       "those settings are used", init_path, s.max_seq_length, s.doc_stride,
                       s.max_query_length, " --do-lower-case" if s.do_lower_case else "")
    return init_path, exported


def _check_bf16_cpu():
    """Refuse --infer-dtype bfloat16 where oneDNN has no bf16 kernels (it would fail in the first matmul)."""

    support = runtime.cpu_bf16_support()
    if not support.usable:
        raise ValueError(f"--infer-dtype bfloat16: {support.reason}; use --infer-dtype float32")
    if not support.native:
        logger.warning("--infer-dtype bfloat16: this CPU has no AVX512-BF16/AMX-BF16, oneDNN emulates bf16 "
                       "and may be slower than --infer-dtype float32")


def validate_args(args):
    """Check every flag, file and cross-flag rule before any work; resolve them into a FinetuneConfig.

    Raises:
      ValueError: naming the flag (and file) and the fix.
    """

    do_train, do_predict, do_eval = _modes(args)
    _check_files(args, do_train, do_predict)
    if do_eval and not args.version_2_with_negative:  # found now, not after training and prediction

        check_v1_answerable(args.predict_file, name=f"--predict-file {args.predict_file}")
    params = _check_numbers(args)
    optim = OptimConfig.from_args(args)  # its own range checks (the warm-up), in every mode: refused, used or not
    context = _context(args)
    init_path, require_qa_head = _init_path(args, do_train)
    export_dir, params = _check_export(args, init_path, do_train, params)
    vocab = _check_vocab(args)
    model_cfg = _model_config(args, vocab, init_path)
    model_name = _model_name(args, vocab, model_cfg)
    out_dir = os.path.join(args.output_dir, model_name, "squad")
    if do_train or do_predict:  # a single --question writes nothing
        _check_outputs(args, out_dir)
    saves_model = do_train and not args.benchmark
    finetune.check_model_output(out_dir, init_path, will_save=saves_model, replace=args.replace_model)
    if args.eval_script:
        logger.info("--eval-script %s ignored: EM/F1 are computed in-process", args.eval_script)
    device = resolve_device(args.device)
    if args.infer_dtype == "bfloat16" and (do_predict or args.question is not None) and device == "cpu":
        _check_bf16_cpu()
    precision = PrecisionConfig.from_args(args, training=do_train)
    # the optimizer, schedule and AMP values, checked now rather than after feature building
    train_config(optim if do_train else None, precision, total_steps=1, seed=args.seed, device=device)
    batch, report_file = args.batch_size, args.report_file or os.path.join(out_dir, "report.json")
    return FinetuneConfig(
        task="SQuAD", modes=Modes(do_train=do_train, do_eval=do_eval, do_predict=do_predict),
        model=ModelInit(config=model_cfg, name=model_name, init_path=init_path, require_head=require_qa_head,
                        export_dir=export_dir, model_prefix=args.model_prefix),
        text=TextSettings(vocab_file=args.vocab_file, do_lower_case=args.do_lower_case,
                          max_seq_length=params.max_seq_length),
        schedule=Schedule(epochs=args.epochs, max_steps=None if args.max_steps in (None, -1) else args.max_steps,
                          train_batch_size=args.train_batch_size or batch or DEFAULT_TRAIN_BATCH,
                          predict_batch_size=args.predict_batch_size or batch or DEFAULT_PREDICT_BATCH),
        optim=optim if do_train else None, precision=precision, run=section(RunSettings, args, report_file=report_file), device=device,
        outputs=Outputs(out_dir=out_dir, report_file=report_file, save_model=saves_model,
                        replace_model=saves_model and args.replace_model),
        settings=SquadSettings(
            train_file=args.train_file if do_train else None, predict_file=args.predict_file if do_predict else None,
            features=params, version_2_with_negative=args.version_2_with_negative,
            null_score_diff_threshold=args.null_score_diff_threshold, n_best_size=args.n_best_size,
            max_answer_length=args.max_answer_length, infer_precision=PRECISION_OF_DTYPE[args.infer_dtype],
            features_cache_dir=args.features_cache_dir, question=args.question, context=context,
            verbose_logging=args.verbose_logging),
        flags=dict(sorted({**vars(args), "bert_model": model_name}.items())))


def main(argv=None):
    """Parse, validate, then train / predict / evaluate or answer one question.

    Returns:
      dict of results: e.g. losses, params_file, predictions_file, exact_match, F1, throughputs; or, with
      --question, answer, probability and nbest.

    Raises:
      ValueError: bad flags or input files (run as a script: one `error:` line, exit status 2).
    """
    cfg = validate_args(build_parser().parse_args(argv))
    if cfg.settings.verbose_logging:  # the reference's meaning: show every data-processing detail
        for name in ("data.features.squad", "tasks.squad_postprocess"):
            logging.getLogger(name).setLevel(logging.DEBUG)
    rt = init_runtime(cfg.device, seed=cfg.run.seed)
    if rt.dist.is_main:
        make_room_for_model(cfg.outputs.out_dir, cfg.outputs.replace_model)
    session = FinetuneSession(cfg, SquadAdapter(cfg), rt)
    with paddle.static.scope_guard(paddle.static.Scope()):
        if cfg.settings.question is not None:
            answer = answer_question(session)
            for line in describe_answer(answer["answer"], answer["probability"], answer["nbest"],
                                        cfg.settings.verbose_logging):
                print(line)
            return answer
        results = session.run()
    if rt.dist.is_main:
        logger.info("results: %s", outcome.write_results(cfg.outputs.report_file, results))
        for line in outcome.squad_next_steps(results, cfg.outputs.out_dir):
            logger.info("%s", line)
    return results


def cli(argv=None):
    """`main` as a command; returns the exit status (0, or 2 with one `error:` line for bad input)."""

    return run_cli(main, argv, rank=DistEnv.from_env().rank)


if __name__ == "__main__":
    sys.exit(cli())
