"""Evaluate a pretraining checkpoint on any shards: masked-LM and NSP loss and accuracy, and with --benchmark the
inference throughput (what the PyTorch seed's run_pretraining_inference.py does).

Usage (from the repo root):
    python run_pretraining_inference.py --init-checkpoint results/bert-tiny/phase2 \\
        --input-dir demo_output/pretrain/phase1/unbinned/parquet_holdout --vocab-file demo_output/vocab.txt \\
        --max-seq-length 128 --max-predictions-per-seq 20 --device cpu
    ... --benchmark --benchmark-warmup-steps 5 --benchmark-steps 20      # sequences/s of the forward pass

Owns: the command line and its validation (`validate_args`: flags in, one frozen
`tasks.config.PretrainInferenceConfig` out; nothing below it reads the flags). The evaluation itself -- the
fixed batches, the `for_test` program (no dropout), the token- and sequence-weighted metrics -- is
`tasks.pretrain_eval.evaluate_checkpoint`, the same code that run_pretraining.py --eval-dir runs during
training, so the numbers of the two agree for the same checkpoint and shards. `--init-checkpoint` takes a
`.pdparams` file (or prefix), a step directory, or a phase directory (its latest complete step), as
run_squad.py's `--from-pretrained-params` does.

Output: one log line with the metrics, the same as a DLLogger summary record in `--report-file` (default
`pretraining_inference_report.json` in the current directory); `main` returns them. The architecture is the
checkpoint's own (`bert_config.json` in its step directory), as for fine-tuning (`tasks.finetune_config.model_config`). Exit status 0, or 2 with one `error:` line for bad flags, files or checkpoints.
"""
import zlib  # noqa: F401  -- before paddle: libpaddle's own zlib symbols crash later zlib users
import utils.preflight  # noqa: F401  -- OMP threads default, MKL path; must stay before paddle

import logging
import os
import sys

from tasks import finetune_config as finetune
from tasks import flags as common
from tasks.config import PretrainData, PretrainInferenceConfig, RunSettings, VocabInfo, check_fits_model, section
from tasks.finetune_config import BERT_MODEL_DEFAULT_HELP
from utils.fs import refuse_output_over_inputs
from utils.weights import model_files, resolve_init_path

logger = logging.getLogger("run_pretraining_inference")

# Where the report goes without --report-file: this command has no output directory, and a checkpoint's
# directory is not ours to write into (it may be shared or read-only).
DEFAULT_REPORT = "pretraining_inference_report.json"


def build_parser():
    parser = common.Parser(description="Masked-LM / NSP evaluation of a pretraining checkpoint.")
    group = parser.add_argument_group("Evaluation")
    group.add_argument("--init-checkpoint", required=True,
                       help="parameters to evaluate: .pdparams, step dir, or phase dir (its latest complete step)")
    group.add_argument("--input-dir", required=True,
                       help="shards to evaluate (LDDL Parquet or NVIDIA HDF5, e.g. preprocessing's --holdout-sink)")
    group.add_argument("--batch-size", type=int, default=32, help="sequences per batch")
    group.add_argument("--num-eval-batches", type=int, default=None,
                       help="batches evaluated (default: one whole pass; with --benchmark: warm-up + measured)")
    common.add_max_seq_length(group, 512, "longest sequence allowed")
    group.add_argument("--max-predictions-per-seq", type=int, default=80,
                       help="cap of masked tokens per sequence (dynamic masking)")
    group.add_argument("--sequence-length-alignment", type=int, default=64,
                       help="pad each batch's length up to a multiple of this")
    common.add_model_args(parser, default_model=None, default_help=BERT_MODEL_DEFAULT_HELP)
    common.add_runtime_args(parser, benchmark_steps=20, benchmark_warmup=5,
                            report_default=f"{DEFAULT_REPORT} in the current directory")
    return parser


def validate_args(args):
    """Check flags and files before any runtime starts.

    Returns:
      tasks.config.PretrainInferenceConfig (the parsed Namespace is left as it was).

    Raises:
      ValueError: naming the flag and the fix.
    """
    common.require_positive(args, "batch_size", "max_seq_length", "max_predictions_per_seq",
                            "sequence_length_alignment", "benchmark_steps")
    common.require_positive(args, "benchmark_warmup_steps", allow_zero=("benchmark_warmup_steps",))
    if args.num_eval_batches is not None:
        common.require_positive(args, "num_eval_batches")
    common.require_existing("--input-dir", args.input_dir, "dir")
    if not (os.path.exists(args.init_checkpoint) or os.path.isfile(args.init_checkpoint + ".pdparams")):
        raise ValueError(f"--init-checkpoint '{args.init_checkpoint}' does not exist")
    vocab = VocabInfo.read(args.vocab_file)
    init_path = resolve_init_path(args.init_checkpoint, args.model_prefix)
    model_cfg = finetune.model_config(args.bert_model, args.config_file, vocab, init_path)
    check_fits_model(args.max_seq_length, model_cfg, args.config_file or f"the model of {init_path}")
    num_batches = args.num_eval_batches
    if args.benchmark:
        num_batches = args.benchmark_warmup_steps + args.benchmark_steps
    report_file = args.report_file or DEFAULT_REPORT
    refuse_output_over_inputs("--report-file", report_file, [  # truncated at start: never one of the inputs
        ("--init-checkpoint", args.init_checkpoint), ("--input-dir", args.input_dir), ("--vocab-file", args.vocab_file),
        ("--config-file", args.config_file), *(("--init-checkpoint", f) for f in model_files(args.init_checkpoint))],
        inside_allowed=True)
    finetune.check_writable("--report-file", report_file, os.path.dirname(os.path.abspath(report_file)))
    return PretrainInferenceConfig(
        model=model_cfg, vocab=vocab, init_path=init_path, num_batches=num_batches,
        data=section(PretrainData, args, num_workers=0),
        run=section(RunSettings, args, log_freq=None, report_file=report_file),
        flags=dict(sorted({**vars(args), "init_checkpoint_resolved": init_path, "report_file": report_file,
                           "bert_model": finetune.model_name(args.bert_model, args.config_file, vocab,
                                                             model_cfg)}.items())))


def main(argv=None):
    """Parse, validate, evaluate.

    Returns:
      dict: eval_loss, eval_mlm_loss, eval_mlm_acc, eval_nsp_loss, eval_nsp_acc, eval_sequences,
      eval_masked_tokens, e2e_inference_time, inference_sequences_per_second (with --benchmark over the
      measured batches only).

    Raises:
      ValueError: bad flags, shards or checkpoint (as a command: one `error:` line, exit status 2).
    """
    cfg = validate_args(build_parser().parse_args(argv))
    from tasks.pretrain_eval import evaluate_checkpoint

    result = evaluate_checkpoint(cfg)
    _report(cfg, result)
    logger.info("report: %s", cfg.run.report_file)
    return result


def _report(cfg, result):
    """The DLLogger records: every flag (with --show-config), then the metrics as the summary."""
    from utils.report import build_metric_logger

    metrics = build_metric_logger(0, cfg.run.report_file)
    try:
        if cfg.run.show_config:
            metrics.log_parameters(cfg.flags)
        metrics.log_summary(result)
    finally:
        metrics.close()


def cli(argv=None):
    """`main` as a command; returns the exit status (0, or 2 with one `error:` line)."""
    from utils.cli import run_cli

    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
