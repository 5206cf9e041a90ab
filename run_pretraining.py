"""BERT pre-training (MLM + NSP) with one static Paddle program: `python run_pretraining.py --phase1 ...`.

Owns the command line: every flag of the NVIDIA reference's run_pretraining.py with the same names and
meanings, plus `--device`, `--amp-dtype`, `--keep-checkpoints`, `--num-workers`,
`--sequence-length-alignment`, and the one function (`validate_args`) that rejects bad combinations up front.
The work itself is `tasks.pretraining.PretrainSession`: init (resume / phase-1 final params /
pretrained params), the training loop, checkpoints and the report.

Multi-process: `python -m paddle.distributed.launch --gpus 0,1,... run_pretraining.py ...` (Fleet on GPUs);
`--nproc_per_node 2` on CPU runs gloo processes whose gradients are all-reduced (gloo_data_parallel).

Differences from the reference, on purpose: a missing init path is an error (the reference silently trains
from random weights); `--from-checkpoint` with `--from-pretrained-params` is an error (the reference ignores
one); `--warmup-start-lr` is honoured; `--last-step-of-checkpoint auto` with no checkpoint yet starts fresh.

Reliability: one run per phase directory (a lock naming the holder; a killed run's lock is taken over);
a fresh run into a directory holding checkpoints is refused unless `--replace-checkpoints`; resuming
from an older step moves the later checkpoints aside; `auto` verifies checksums and falls back past a
damaged newest checkpoint; a phase-1 checkpoint given to `--phase2 --from-checkpoint` is refused; a resume
that changes a setting outside `tasks.config.RESUME_MAY_CHANGE`, the vocab (SHA-256) or the shards' contents
is refused in one line naming what changed.
"""
import zlib  # noqa: F401  -- before paddle: libpaddle's own zlib symbols crash later zlib users
import utils.preflight  # noqa: F401  -- OMP threads default, MKL path; must stay before paddle

import logging
import os
import sys

from tasks import flags as common
from tasks.config import (Checkpointing, OptimConfig, PrecisionConfig, PretrainConfig, PretrainData, PretrainEval,
                          RunSettings, VocabInfo, check_fits_model, section, train_config)
from tasks.finetune_config import BERT_MODEL_DEFAULT_HELP
from utils.fs import refuse_output_over_inputs
from utils.weights import model_files, resolve_init_path

logger = logging.getLogger("run_pretraining")


def build_parser():
    """The argparse parser (groups as in the reference's --help)."""
    parser = common.Parser(
        description="BERT pre-training on LDDL-format Parquet shards (or NVIDIA HDF5 shards).")
    glob = parser.add_argument_group("Global")
    glob.add_argument("--input-dir", required=True,
                      help="directory of pre-training shards (ours/LDDL Parquet, or NVIDIA .hdf5)")
    glob.add_argument("--output-dir", required=True,
                      help="checkpoints go to <output-dir>/<bert-model>/phase<N>/<step>/")
    glob.add_argument("--max-steps", type=int, default=None, required=True,
                      help="optimizer updates of this phase")
    glob.add_argument("--log-freq", type=int, default=10, help="log every N updates")
    glob.add_argument("--num-steps-per-checkpoint", type=int, default=100,
                      help="save every N updates (and at the end)")
    glob.add_argument("--steps-this-run", type=int, default=None,
                      help="run at most N updates in this invocation, save a checkpoint and exit 0; run the same "
                           "command with --from-checkpoint <phase dir> --last-step-of-checkpoint auto to "
                           "continue exactly (fits a long phase into a cluster's job time limit)")
    glob.add_argument("--keep-checkpoints", type=int, default=3, help="checkpoints kept per phase (>= 2)")
    glob.add_argument("--from-pretrained-params", default=None,
                      help="initialise parameters (no optimizer state) from this .pdparams, step dir, or phase "
                           "dir (its latest complete step)")
    glob.add_argument("--from-checkpoint", default=None,
                      help="resume: a phase directory (with --last-step-of-checkpoint auto|N) or a step dir")
    glob.add_argument("--last-step-of-checkpoint", default=None,
                      help="None, auto (latest complete checkpoint; none yet = start fresh) or a step > 0")
    glob.add_argument("--from-phase1-final-params", default=None,
                      help="phase 2: phase 1's final step dir; used only when phase 2 has no checkpoint")
    glob.add_argument("--max-nonfinite-steps", type=int, default=25,
                      help="updates with NaN/inf loss or gradients are skipped (parameters untouched); "
                           "this many in a row stop the run with exit status 4")
    glob.add_argument("--replace-checkpoints", action="store_true",
                      help="start over although the phase directory holds another run's checkpoints: they "
                           "are moved aside to <phase dir>/superseded-<time>/ (without this flag such a "
                           "run is refused, so two runs never mix)")
    glob.add_argument("--num-workers", type=int, default=2, help="data loader worker processes")
    glob.add_argument("--sequence-length-alignment", type=int, default=64,
                      help="pad each batch's length up to a multiple of this")
    evaluation = parser.add_argument_group("Validation")
    evaluation.add_argument("--eval-dir", default=None,
                            help="held-out shards (same formats as --input-dir, e.g. preprocessing's "
                                 "--holdout-sink): masked-LM and NSP loss and accuracy on a fixed set of their "
                                 "batches, every --eval-freq updates and at the end, into the report")
    evaluation.add_argument("--num-eval-batches", type=int, default=None,
                            help="batches of --eval-dir evaluated each time (default: all of one pass)")
    evaluation.add_argument("--eval-freq", type=int, default=None,
                            help="evaluate every N updates (default: --num-steps-per-checkpoint); always at "
                                 "the end of the phase and of the invocation")
    evaluation.add_argument("--eval-batch-size", type=int, default=None,
                            help="sequences per evaluation batch (default: --batch-size)")
    common.add_model_args(parser, default_model=None, default_help=BERT_MODEL_DEFAULT_HELP)
    common.add_runtime_args(parser)
    common.add_optimizer_args(parser)
    train = parser.add_argument_group("Sequences")
    common.add_max_seq_length(train, 512, "longest sequence allowed")
    train.add_argument("--batch-size", type=int, default=32, help="sequences per micro-batch per process")
    train.add_argument("--phase1", action="store_true", help="phase 1 (exactly one of --phase1/--phase2)")
    train.add_argument("--phase2", action="store_true", help="phase 2")
    train.add_argument("--max-predictions-per-seq", type=int, default=80,
                       help="cap of masked tokens per sequence (dynamic masking)")
    common.add_amp_args(parser)
    return parser


def parse_last_step(value):
    """--last-step-of-checkpoint: None, "auto" or an int > 0."""
    if value is None or str(value).lower() == "none":
        return None
    if str(value).lower() == "auto":
        return "auto"
    try:
        step = int(value)
    except ValueError:
        step = 0
    if step < 1:
        raise ValueError(f"--last-step-of-checkpoint must be None, auto or an integer > 0, got {value!r}")
    return step


def validate_args(args):
    """Check every flag, file and cross-flag rule, before any runtime is initialised or anything is read.

    Returns:
      tasks.config.PretrainConfig (the parsed Namespace is left as it was).

    Raises:
      ValueError: naming the flag (and file) and the fix.
    """
    if args.phase1 == args.phase2:
        raise ValueError("give exactly one of --phase1 and --phase2")
    phase = 1 if args.phase1 else 2
    if args.from_checkpoint and args.from_pretrained_params:
        raise ValueError("--from-checkpoint and --from-pretrained-params are exclusive: a checkpoint "
                         "already holds the parameters")
    if args.from_phase1_final_params and phase == 1:
        raise ValueError("--from-phase1-final-params is for --phase2")
    last_step = parse_last_step(args.last_step_of_checkpoint)
    common.require_positive(args, "max_steps", "max_nonfinite_steps", "log_freq", "num_steps_per_checkpoint",
                            "batch_size", "max_seq_length", "max_predictions_per_seq", "learning_rate", "sequence_length_alignment", "benchmark_steps")
    common.require_positive(args, "num_workers", "benchmark_warmup_steps", "warmup_start_lr",
                            allow_zero=("num_workers", "benchmark_warmup_steps", "warmup_start_lr"))
    if args.keep_checkpoints < 2:
        raise ValueError(f"--keep-checkpoints must be >= 2 (a crash while replacing the only one would "
                         f"leave none), got {args.keep_checkpoints}")
    common.require_existing("--input-dir", args.input_dir, "dir")
    for flag in ("from_pretrained_params", "from_phase1_final_params"):
        if getattr(args, flag):
            common.require_existing("--" + flag.replace("_", "-"), getattr(args, flag))
    pretrained = args.from_pretrained_params and resolve_init_path(args.from_pretrained_params, args.model_prefix)
    vocab = VocabInfo.read(args.vocab_file)
    for flag, path in (("--from-pretrained-params", pretrained),
                       ("--from-phase1-final-params", args.from_phase1_final_params)):
        if path:
            vocab.check_checkpoint(path, flag)
    steps_this_run, evaluation = _check_steps_this_run(args), _evaluation(args)
    if args.from_checkpoint and last_step != "auto":
        common.require_existing("--from-checkpoint", args.from_checkpoint, "dir")
    precision, optim = PrecisionConfig.from_args(args), OptimConfig.from_args(args)
    model_cfg, bert_model = _model(args, vocab, args.from_phase1_final_params or pretrained
                                   or _existing_checkpoint(args))
    check_fits_model(args.max_seq_length, model_cfg, args.config_file or f"bert_configs/{bert_model}.json")
    from utils.runtime import resolve_device
    train_config(optim, precision, total_steps=1, seed=args.seed, device=resolve_device(args.device))
    report_file = args.report_file or os.path.join(args.output_dir, bert_model, f"phase{phase}", "report.json")
    refuse_output_over_inputs("--report-file", report_file, [  # written at start: never one of the inputs
        ("--input-dir", args.input_dir), ("--vocab-file", args.vocab_file), ("--config-file", args.config_file),
        ("--from-checkpoint", args.from_checkpoint), ("--from-pretrained-params", args.from_pretrained_params),
        ("--from-phase1-final-params", args.from_phase1_final_params), ("--eval-dir", args.eval_dir),
        *((flag, f) for flag, path in (("--from-checkpoint", args.from_checkpoint),
                                       ("--from-pretrained-params", args.from_pretrained_params),
                                       ("--from-phase1-final-params", args.from_phase1_final_params))
          for f in model_files(path))],
        inside_allowed=True)
    return PretrainConfig(
        phase=phase, max_steps=args.max_steps, max_nonfinite_steps=args.max_nonfinite_steps, model=model_cfg,
        vocab=vocab, optim=optim, precision=precision, data=section(PretrainData, args),
        checkpointing=section(Checkpointing, args, last_step_of_checkpoint=last_step,
                              from_pretrained_params=pretrained, bert_model=bert_model),
        run=section(RunSettings, args, report_file=report_file),
        flags=dict(sorted({**vars(args), "phase": phase, "report_file": report_file,
                           "bert_model": bert_model}.items())),
        steps_this_run=steps_this_run, evaluation=evaluation)


def _existing_checkpoint(args):
    """The step directory --from-checkpoint resumes from, when it exists and no flag names the model (its
    bert_config.json does then), else None (the resume itself checks the rest)."""
    if args.bert_model or args.config_file or not args.from_checkpoint or not os.path.isdir(args.from_checkpoint):
        return None
    path = resolve_init_path(args.from_checkpoint, args.model_prefix)
    return path if os.path.isfile(os.path.join(path, "progress.json")) else None


def _model(args, vocab, init_path):
    """(BertConfig, the name outputs go under): the flags', or the init checkpoint's own architecture when no
    flag names one (phase 2 of a bert-tiny phase 1 needs no --bert-model), by fine-tuning's rule
    (`tasks.finetune_config.model_config`); bert-large-uncased, the reference's default, otherwise."""
    from tasks import finetune_config as finetune

    model_cfg = finetune.model_config(args.bert_model, args.config_file, vocab, init_path)
    return model_cfg, finetune.model_name(args.bert_model, args.config_file, vocab, model_cfg)


def _check_steps_this_run(args):
    """--steps-this-run: None or an int > 0; a benchmark writes no checkpoint to continue from."""
    if args.steps_this_run is None:
        return None
    common.require_positive(args, "steps_this_run")
    if args.benchmark:
        raise ValueError("--steps-this-run stops with a checkpoint to continue from, and --benchmark writes "
                         "none: drop one of them")
    return args.steps_this_run


def _evaluation(args):
    """The validation settings (tasks.config.PretrainEval), or None without --eval-dir."""
    extra = [f for f in ("num_eval_batches", "eval_freq", "eval_batch_size") if getattr(args, f) is not None]
    if args.eval_dir is None:
        if extra:
            raise ValueError(f"--{extra[0].replace('_', '-')} needs --eval-dir (the held-out shards to evaluate)")
        return None
    common.require_existing("--eval-dir", args.eval_dir, "dir")
    common.require_positive(args, *extra)
    return PretrainEval(eval_dir=args.eval_dir, num_eval_batches=args.num_eval_batches,
                        eval_freq=args.eval_freq or args.num_steps_per_checkpoint,
                        batch_size=args.eval_batch_size or args.batch_size)


def main(argv=None):
    """Parse, validate and train one phase.

    Returns:
      dict of final metrics (see `tasks.pretraining.PretrainSession.run`).

    Raises:
      ValueError: bad flags, files or checkpoints (as a command: one `error:` line, exit status 2);
      utils.nonfinite.TrainingDiverged: training produced non-finite values (exit status 4).
    """
    cfg = validate_args(build_parser().parse_args(argv))
    from tasks.pretraining import PretrainSession

    session = PretrainSession(cfg)
    try:
        metrics = session.run()
    finally:
        session.close()
    _report_outcome(cfg, metrics)
    return metrics


def _report_outcome(cfg, metrics):
    """Rank 0: results.json beside the report, and the next command to run."""
    from tasks import outcome
    from utils.checkpoint import phase_dir
    from utils.runtime import DistEnv

    if DistEnv.from_env().rank != 0:
        return
    if not metrics.get("already_finished"):  # a re-run of a finished phase keeps the real run's figures
        logger.info("results: %s", outcome.write_results(cfg.run.report_file, metrics))
    ckpt = cfg.checkpointing
    step_dir = os.path.join(phase_dir(ckpt.output_dir, ckpt.bert_model, cfg.phase), str(metrics["global_step"]))
    for line in outcome.pretraining_next_steps(cfg, step_dir if os.path.isdir(step_dir) else None,
                                               metrics["global_step"]):
        logger.info("%s", line)


def cli(argv=None):
    """`main` as a command; returns the exit status.

    0 done; 2 bad input (one `error:` line on stderr); 3 disk full or read-only; 4 training diverged
    (non-finite loss or parameters; one `error:` line, no checkpoint of the bad state written).
    """
    from utils.cli import run_cli
    from utils.nonfinite import EXIT_DIVERGED, TrainingDiverged
    from utils.runtime import DistEnv

    return run_cli(main, argv, rank=DistEnv.from_env().rank, exit_codes={TrainingDiverged: EXIT_DIVERGED})


if __name__ == "__main__":
    sys.exit(cli())
