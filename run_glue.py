"""GLUE fine-tuning, evaluation and test-set prediction with BERT, for all nine tasks.

Usage (from the repository root):

    python run_glue.py --task-name MRPC --data-dir data/download/glue/MRPC --mode train_eval \
        --from-pretrained-params results/bert-large-uncased/phase2/1563 \
        --vocab-file vocab/bert-large-uncased-vocab.txt --do-lower-case --output-dir results
    python run_glue.py --task-name MRPC --data-dir data/download/glue/MRPC --mode prediction \
        --from-checkpoint results/bert-large-uncased/glue/MRPC --vocab-file ... --do-lower-case --output-dir results

Owns the command line: the PyTorch seed's run_glue.py flags in the project's hyphenated style (`--task-name`,
`--data-dir`, `--do-train/--do-eval/--do-predict`, `--train-batch-size/--eval-batch-size`,
`--gradient-merge-steps` for its `--gradient_accumulation_steps`, ...), `--mode` (run_glue.sh's mode words:
train, eval, prediction and their combinations, with `_` or spaces), and `validate_args`, the one place that
rejects bad flags and unreadable data before any file is written, returning a frozen
`tasks.finetune_config.FinetuneConfig`; nothing below it reads the flags. The run is
`tasks.finetune.FinetuneSession` with GLUE's adapter (`tasks.glue`).

Outputs in `<output-dir>/<bert-model>/glue/<Task>/`: `<model-prefix>.pdparams` + `bert_config.json` after
training (parameter names are Hugging Face's, so `utils.hf_import.to_hf_state` exports them); eval_results.json
(the metrics, as the seed's results.txt); `<Task>.tsv` (MNLI: MNLI-m.tsv, MNLI-mm.tsv), GLUE's submission
file for test.tsv, with `--mode prediction`. The DLLogger report (`--report-file`, default
`<that dir>/report.json`) gets the seed's keys (e2e_train_time, training_sequences_per_second,
e2e_inference_time, inference_sequences_per_second, exact_match = accuracy %, F1 = F1 %) plus every task
metric (eval_loss, acc, f1, mcc, pearson, spearmanr, corr, ...; MNLI's mismatched split prefixed `mm_`).

Evaluation and prediction run through `inference.predictor.ClassifierPredictor` (Paddle Inference, oneDNN,
length-bucketed batches of `--eval-batch-size`): the parameters in the scope are exported to a temporary
directory and verified against the training program first, as run_squad does; `--from-checkpoint` may also be
an `inference.export` directory of the task (then no program is built). Only `--benchmark` times the executor
program.

Differences from the seed, on purpose: `prediction` predicts test.tsv into the submission file (the seed
wrote dev-set predictions.json); all nine tasks; warm-up is linear over `--warmup-proportion` of the updates
actually run; a missing init path is an error, never a random initialisation.
"""
import zlib  # noqa: F401  -- before paddle: libpaddle's own zlib symbols crash later zlib users
import utils.preflight  # noqa: F401  -- OMP threads default, MKL path; must stay before paddle

import argparse
import logging
import os
import sys

import paddle

from data.features.glue import split_path, task_spec
from tasks import finetune_config as finetune
from tasks import flags as common
from tasks import glue, outcome
from tasks.config import OptimConfig, PrecisionConfig, RunSettings, section, train_config
from tasks.finetune import FinetuneSession
from tasks.finetune_config import (FinetuneConfig, ModelInit, Modes, Outputs, Schedule, TextSettings,
                                   make_room_for_model)
from tasks.glue import GlueSettings
from utils.cli import run_cli
from utils.runtime import DistEnv, init_runtime, resolve_device

logger = logging.getLogger("run_glue")

MODE_WORDS = ("train", "eval", "prediction")
DEFAULT_TRAIN_BATCH, DEFAULT_EVAL_BATCH = 32, 8


def _mode(value):
    """argparse type of --mode: words of MODE_WORDS joined by `_` or spaces, in any order ('train eval')."""
    words = value.replace(",", " ").replace("_", " ").split()
    if words == ["predict"]:
        words = ["prediction"]
    if not words or any(w not in MODE_WORDS for w in words) or len(set(words)) != len(words):
        raise argparse.ArgumentTypeError(f"expected train, eval, prediction or a combination such as train_eval, "
                                         f"train_prediction, eval_prediction, train_eval_prediction; got {value!r}")
    return "_".join(w for w in MODE_WORDS if w in words)


def build_parser():
    """The argparse parser (the seed's flags, then the shared groups)."""
    parser = common.Parser(description="BERT fine-tuning, evaluation and test prediction on GLUE.")
    g = parser.add_argument_group("GLUE")
    g.add_argument("--task-name", required=True,
                   help="CoLA, SST-2, MRPC, STS-B, QQP, MNLI, QNLI, RTE or WNLI (any case)")
    g.add_argument("--data-dir", required=True,
                   help="the task's GLUE directory: train.tsv, dev.tsv (MNLI: dev_matched/dev_mismatched.tsv), "
                        "test.tsv (MNLI: test_matched/test_mismatched.tsv)")
    g.add_argument("--output-dir", required=True, help="results go to <output-dir>/<bert-model>/glue/<Task>/")
    finetune.add_replace_model_flag(g)
    g.add_argument("--mode", type=_mode, default=None,
                   help="train | eval | prediction or a combination (train_eval, train_prediction, "
                        "eval_prediction, train_eval_prediction; 'train eval' also works); adds to --do-*")
    g.add_argument("--do-train", action="store_true", help="fine-tune on train.tsv")
    g.add_argument("--do-eval", action="store_true", help="evaluate on the dev split(s)")
    g.add_argument("--do-predict", action="store_true", help="predict test.tsv into GLUE's submission file")
    g.add_argument("--from-pretrained-params", default=None,
                   help="BERT to fine-tune: our .pdparams / checkpoint step dir / phase dir, or a Hugging Face "
                        "model.safetensors (file or directory with config.json)")
    g.add_argument("--from-checkpoint", default=None,
                   help="a fine-tuned GLUE model (with its classifier) to evaluate, predict with or train further; "
                        "ours or a Hugging Face BertForSequenceClassification, or (eval / prediction) its "
                        "python -m inference.export directory")
    g.add_argument("--do-lower-case", action="store_true", help="lower-case input (uncased vocab)")
    common.add_max_seq_length(g, 128, "WordPieces per example, [CLS]/[SEP] included")
    g.add_argument("--train-batch-size", type=int, default=DEFAULT_TRAIN_BATCH,
                   help="sequences per micro-batch per process")
    g.add_argument("--eval-batch-size", type=int, default=DEFAULT_EVAL_BATCH, help="sequences per eval batch")
    g.add_argument("--epochs", type=int, default=3, help="training epochs")
    g.add_argument("--max-steps", type=int, default=None,
                   help="cap on optimizer updates; None or -1 = --epochs decide")
    g.add_argument("--log-freq", type=int, default=10, help="log the loss every N updates")
    g.add_argument("--skip-checkpoint", action="store_true", help="do not save the fine-tuned parameters")
    common.add_model_args(parser, default_model=None, default_help=finetune.BERT_MODEL_DEFAULT_HELP)
    common.add_runtime_args(parser)
    common.add_optimizer_args(parser, optimizer="AdamW", learning_rate=5e-5, warmup_proportion=0.1)
    common.add_amp_args(parser)
    return parser


def _modes(args):
    do_train, do_eval, do_predict = args.do_train, args.do_eval, args.do_predict
    if args.mode:
        words = args.mode.split("_")
        do_train |= "train" in words
        do_eval |= "eval" in words
        do_predict |= "prediction" in words
    if not (do_train or do_eval or do_predict):
        raise ValueError("nothing to do: give --mode (train, eval, prediction, train_eval, ...) or --do-train / "
                         "--do-eval / --do-predict")
    return do_train, do_eval, do_predict


def _check_numbers(args):
    common.require_positive(args, "epochs", "learning_rate", "log_freq", "benchmark_steps", "train_batch_size",
                            "eval_batch_size", "max_seq_length")
    common.require_positive(args, "benchmark_warmup_steps", "warmup_start_lr",
                            allow_zero=("benchmark_warmup_steps", "warmup_start_lr"))
    if args.max_steps is not None and args.max_steps != -1 and args.max_steps < 1:
        raise ValueError(f"--max-steps must be -1 (use --epochs) or > 0, got {args.max_steps}")


def validate_args(args):
    """Check every flag, file and cross-flag rule before any work; resolve them into a Plan.

    Every TSV file the run needs must exist; `main` then reads them all before the runtime starts, so a
    malformed row fails before anything is built or written.

    Raises:
      ValueError: naming the flag (and file:line) and the fix.
    """
    spec = task_spec(args.task_name)
    do_train, do_eval, do_predict = _modes(args)
    common.require_existing("--data-dir", args.data_dir, "dir")
    for flag, path in (("--vocab-file", args.vocab_file), ("--config-file", args.config_file)):
        if path is not None:
            common.require_existing(flag, path, "file")
    _check_numbers(args)
    optim = OptimConfig.from_args(args)  # its own range checks (the warm-up), in every mode: refused, used or not
    minimum = 5 if spec.train.text_b is not None else 3
    if args.max_seq_length < minimum:
        raise ValueError(f"--max-seq-length must be >= {minimum} for {spec.name}, got {args.max_seq_length}")
    modes = Modes(do_train=do_train, do_eval=do_eval, do_predict=do_predict)
    for split in glue.splits_needed(spec, modes):
        if not os.path.isfile(split_path(args.data_dir, split)):
            use = {"train": "training", "dev": "evaluation", "test": "prediction"}[split.split("_")[0]]
            raise ValueError(f"--data-dir '{args.data_dir}' has no {split}.tsv, which {spec.name} {use} needs "
                             f"(python -m data.prep.download glue fetches the GLUE layout)")
    init_path, require_head = finetune.init_path(args.from_checkpoint, args.from_pretrained_params,
                                                 args.model_prefix, do_train, "GLUE")
    vocab = finetune.read_vocab(args.vocab_file, args.do_lower_case)
    model_cfg = finetune.model_config(args.bert_model, args.config_file, vocab, init_path)
    model_name = finetune.model_name(args.bert_model, args.config_file, vocab, model_cfg)
    out_dir = os.path.join(args.output_dir, model_name, "glue", spec.name)
    finetune.check_writable("--output-dir", args.output_dir, out_dir)
    saves_model = do_train and not (args.benchmark or args.skip_checkpoint)
    finetune.check_model_output(out_dir, init_path, will_save=saves_model, replace=args.replace_model)
    if args.report_file:
        finetune.check_writable("--report-file", args.report_file, os.path.dirname(os.path.abspath(args.report_file)))
    export_dir = _check_export(args, init_path, do_train, spec)
    device = resolve_device(args.device)
    precision = PrecisionConfig.from_args(args, training=do_train)
    train_config(optim if do_train else None, precision, total_steps=1, seed=args.seed, device=device)
    report_file = args.report_file or os.path.join(out_dir, "report.json")
    return FinetuneConfig(
        task="GLUE", modes=modes,
        model=ModelInit(config=model_cfg, name=model_name, init_path=init_path, require_head=require_head,
                        export_dir=export_dir, model_prefix=args.model_prefix),
        text=TextSettings(vocab_file=args.vocab_file, do_lower_case=args.do_lower_case,
                          max_seq_length=args.max_seq_length),
        schedule=Schedule(epochs=args.epochs, max_steps=None if args.max_steps in (None, -1) else args.max_steps,
                          train_batch_size=args.train_batch_size, predict_batch_size=args.eval_batch_size),
        optim=optim if do_train else None, precision=precision, run=section(RunSettings, args, report_file=report_file), device=device,
        outputs=Outputs(out_dir=out_dir, report_file=report_file, save_model=saves_model,
                        replace_model=saves_model and args.replace_model),
        settings=GlueSettings(spec=spec, data_dir=args.data_dir),
        flags=_resolved_flags(args, spec.name, model_name, modes))


def _resolved_flags(args, task_name, model_name, modes):
    """The flags as the run uses them (the settings line and the report's PARAMETER record): --mode and the
    --do-* switches resolved into one mode word and three booleans that agree ("mode=train_eval |
    do_train=True | do_eval=True", never "mode=train_eval | do_train=False")."""
    words = [w for w, on in zip(MODE_WORDS, (modes.do_train, modes.do_eval, modes.do_predict)) if on]
    return dict(sorted({**vars(args), "task_name": task_name, "bert_model": model_name, "mode": "_".join(words),
                        "do_train": modes.do_train, "do_eval": modes.do_eval,
                        "do_predict": modes.do_predict}.items()))


def _check_export(args, init_path, do_train, spec):
    """The export directory when --from-checkpoint is an `inference.export` directory (it then evaluates and
    predicts by itself), else None.

    Raises:
      ValueError: training or benchmarking an export, a damaged or changed one, an export of another task, or
        one made with another --max-seq-length / lower-casing than the flags (the features must match it).
    """
    found = finetune.exported_model(init_path, do_train=do_train, benchmark=args.benchmark,
                                    benchmark_hint="give the fine-tuned .pdparams instead of an export")
    if found is None:
        return None
    s = found[1]
    if s.task != spec.name:
        what = "a SQuAD model" if s.is_squad else f"a GLUE {s.task} classifier"
        raise ValueError(f"--from-checkpoint '{init_path}' is an export of {what}, not of {spec.name}")
    if s.max_seq_length != args.max_seq_length or s.do_lower_case != args.do_lower_case:
        raise ValueError(f"--from-checkpoint '{init_path}' was exported with --max-seq-length {s.max_seq_length}"
                         f"{' --do-lower-case' if s.do_lower_case else ' (cased)'}: give the same flags")
    return init_path


def main(argv=None):
    """Parse, validate, then train / evaluate / predict.

    Returns:
      dict of results: losses, params_file, the metrics of each dev split (fractions; MNLI's mismatched
      ones prefixed mm_), exact_match / F1 (percent, the seeds' keys), submission_files, throughputs.

    Raises:
      ValueError: bad flags or input files (run as a script: one `error:` line, exit status 2).
    """
    cfg = validate_args(build_parser().parse_args(argv))
    data = glue.read_splits(cfg)  # malformed rows fail here, before the runtime starts
    rt = init_runtime(cfg.device, seed=cfg.run.seed)
    if rt.dist.is_main:
        make_room_for_model(cfg.outputs.out_dir, cfg.outputs.replace_model)
    with paddle.static.scope_guard(paddle.static.Scope()):
        results = FinetuneSession(cfg, glue.GlueAdapter(cfg, data), rt).run()
    if rt.dist.is_main:
        for line in outcome.glue_next_steps(results, cfg):
            logger.info("%s", line)
    return results


def cli(argv=None):
    """`main` as a command; returns the exit status (0, or 2 with one `error:` line for bad input)."""
    return run_cli(main, argv, rank=DistEnv.from_env().rank)


if __name__ == "__main__":
    sys.exit(cli())
