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
rejects bad flags and unreadable data before any file is written. The work lives in `tasks.glue`.

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
import dataclasses
import logging
import os
import sys

import paddle

import program
from data.features.glue import split_path, task_spec
from inference import model_dir as export_layout
from inference.export import load_from_scope
from inference.predictor import ClassifierPredictor
from tasks import finetune
from tasks import flags as common
from tasks import glue, outcome
from tasks.config import OptimConfig, PrecisionConfig, train_config
from tasks.squad import TrainOptions, init_parameters, plan_updates, save_params
from tokenizer import BertTokenizer
from utils.amp_state import init_pure_fp16
from utils.cli import run_cli
from utils.fs import atomic_write_json
from utils.report import build_metric_logger
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
    g.add_argument("--max-seq-length", type=int, default=128, help="WordPieces per example, [CLS]/[SEP] included")
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


@dataclasses.dataclass(frozen=True)
class Plan:
    """What validate_args resolved from the flags (nothing here is read from args again).

    Fields: spec (data.features.glue.TaskSpec); do_train / do_eval / do_predict; max_steps (None = --epochs
    decide); model_cfg (modeling.BertConfig); init_path; require_head (False only when fine-tuning a
    pretrained encoder); device; optim (OptimConfig, None without training); precision (PrecisionConfig);
    out_dir (<output-dir>/<bert-model>/glue/<Task>); report_file; export_dir (--from-checkpoint when it is an
    `inference.export` directory, else None); replace_model (--replace-model on a run that saves a model:
    the old model directory is moved aside first).
    """
    spec: object
    do_train: bool
    do_eval: bool
    do_predict: bool
    max_steps: object
    model_cfg: object
    init_path: str
    require_head: bool
    device: str
    optim: object
    precision: object
    out_dir: str
    report_file: str
    export_dir: object = None
    replace_model: bool = False

    @property
    def amp(self):
        return self.precision.amp


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


def _splits_needed(spec, do_train, do_eval, do_predict):
    return ((["train"] if do_train else []) + (list(spec.dev_splits) if do_eval else [])
            + ([stem for stem, _ in spec.test_splits] if do_predict else []))


def _check_numbers(args):
    common.require_positive(args, "epochs", "learning_rate", "log_freq", "benchmark_steps", "train_batch_size",
                            "eval_batch_size", "max_seq_length")
    common.require_positive(args, "benchmark_warmup_steps", "warmup_start_lr",
                            allow_zero=("benchmark_warmup_steps", "warmup_start_lr"))
    if not 0.0 <= args.warmup_proportion <= 1.0:
        raise ValueError(f"--warmup-proportion must be in [0, 1], got {args.warmup_proportion}")
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
    minimum = 5 if spec.train.text_b is not None else 3
    if args.max_seq_length < minimum:
        raise ValueError(f"--max-seq-length must be >= {minimum} for {spec.name}, got {args.max_seq_length}")
    for split in _splits_needed(spec, do_train, do_eval, do_predict):
        if not os.path.isfile(split_path(args.data_dir, split)):
            use = {"train": "training", "dev": "evaluation", "test": "prediction"}[split.split("_")[0]]
            raise ValueError(f"--data-dir '{args.data_dir}' has no {split}.tsv, which {spec.name} {use} needs "
                             f"(python -m data.prep.download glue fetches the GLUE layout)")
    init_path, require_head = finetune.init_path(args.from_checkpoint, args.from_pretrained_params,
                                                 args.model_prefix, do_train, "GLUE")
    finetune.check_vocab(args.vocab_file, args.do_lower_case)
    model_cfg = finetune.model_config(args.bert_model, args.config_file, args.vocab_file, init_path)
    model_name = finetune.model_name(args.bert_model, args.config_file, args.vocab_file, model_cfg)
    out_dir = os.path.join(args.output_dir, model_name, "glue", spec.name)
    finetune.check_writable("--output-dir", args.output_dir, out_dir)
    saves_model = do_train and not args.benchmark
    finetune.check_model_output(out_dir, init_path, will_save=saves_model, replace=args.replace_model)
    if args.report_file:
        finetune.check_writable("--report-file", args.report_file, os.path.dirname(os.path.abspath(args.report_file)))
    if args.max_seq_length > model_cfg.max_position_embeddings:
        raise ValueError(f"--max-seq-length {args.max_seq_length} exceeds the model's "
                         f"max_position_embeddings ({model_cfg.max_position_embeddings})")
    export_dir = _check_export(args, init_path, do_train, spec)
    device = resolve_device(args.device)
    precision = PrecisionConfig.from_args(args, training=do_train)
    optim = OptimConfig.from_args(args) if do_train else None
    train_config(optim, precision, total_steps=1, seed=args.seed, device=device)  # optimizer / AMP values now
    return Plan(spec=spec, do_train=do_train, do_eval=do_eval, do_predict=do_predict,
                max_steps=None if args.max_steps in (None, -1) else args.max_steps, model_cfg=model_cfg,
                init_path=init_path, require_head=require_head, device=device, optim=optim, precision=precision,
                out_dir=out_dir, report_file=args.report_file or os.path.join(out_dir, "report.json"),
                export_dir=export_dir, replace_model=saves_model and args.replace_model)


def _check_export(args, init_path, do_train, spec):
    """The export directory when --from-checkpoint is an `inference.export` directory (it then evaluates and
    predicts by itself), else None.

    Raises:
      ValueError: training or benchmarking an export, a damaged or changed one, an export of another task, or
        one made with another --max-seq-length / lower-casing than the flags (the features must match it).
    """
    if not export_layout.is_export_dir(init_path):
        return None
    if do_train:
        raise ValueError(f"--from-checkpoint '{init_path}' is an exported inference model, which cannot be "
                         "trained further; give the fine-tuned .pdparams it was exported from")
    if args.benchmark:
        raise ValueError("--benchmark times the training-time program; give the fine-tuned .pdparams instead of "
                         "an export")
    export_layout.read_manifest(init_path)  # a damaged or changed export fails here
    s = export_layout.read_settings(init_path)
    if s.task != spec.name:
        what = "a SQuAD model" if s.is_squad else f"a GLUE {s.task} classifier"
        raise ValueError(f"--from-checkpoint '{init_path}' is an export of {what}, not of {spec.name}")
    if s.max_seq_length != args.max_seq_length or s.do_lower_case != args.do_lower_case:
        raise ValueError(f"--from-checkpoint '{init_path}' was exported with --max-seq-length {s.max_seq_length}"
                         f"{' --do-lower-case' if s.do_lower_case else ' (cased)'}: give the same flags")
    return init_path


def _read_splits(args, plan):
    """{split: (examples, features)} of every split the run needs, read and tokenised before any build."""
    tokenizer = BertTokenizer(args.vocab_file, do_lower_case=args.do_lower_case)
    return {split: glue.load_split(args.data_dir, plan.spec, split, tokenizer, args.max_seq_length)
            for split in _splits_needed(plan.spec, plan.do_train, plan.do_eval, plan.do_predict)}


def main(argv=None):
    """Parse, validate, then train / evaluate / predict.

    Returns:
      dict of results: losses, params_file, the metrics of each dev split (fractions; MNLI's mismatched
      ones prefixed mm_), exact_match / F1 (percent, the seeds' keys), submission_files, throughputs.

    Raises:
      ValueError: bad flags or input files (run as a script: one `error:` line, exit status 2).
    """
    args = build_parser().parse_args(argv)
    plan = validate_args(args)
    data = _read_splits(args, plan)  # malformed rows fail here, before the runtime starts
    rt = init_runtime(plan.device, seed=args.seed)
    if rt.dist.is_main:
        finetune.make_room_for_model(plan.out_dir, plan.replace_model)
    with paddle.static.scope_guard(paddle.static.Scope()):
        return run(args, plan, rt, data)


def _train_options(args, plan):
    return TrainOptions.from_flags(args, max_steps=plan.max_steps, batch_size=args.train_batch_size)


def _build(args, plan, rt, train_features):
    """(bundle, TrainOptions or None): the training bundle when training, else a predict-only one."""
    num_labels = plan.spec.num_labels
    if train_features is None:
        cfg = train_config(None, plan.precision, total_steps=1, seed=args.seed, device=rt.device)
        return program.build_glue(plan.model_cfg, cfg, num_labels, is_training=False), None
    opts = _train_options(args, plan)
    _, updates = plan_updates(len(train_features), opts, rt.dist.world_size)
    cfg = train_config(plan.optim, plan.precision, total_steps=updates, seed=args.seed, device=rt.device,
                       dist_kwargs=rt.train_config_kwargs())
    return program.build_glue(plan.model_cfg, cfg, num_labels), opts


def run(args, plan, rt, data):
    """Train, evaluate and predict as the plan says. Returns the results dict (see `main`)."""
    if plan.export_dir is not None:  # an exported model predicts by itself: no program to build
        metrics = build_metric_logger(rt.dist.rank, plan.report_file, logger=logger)
        try:
            return _eval_and_predict(args, plan, rt, None, data, metrics) if rt.dist.is_main else {}
        finally:
            metrics.close()
    train_features = data["train"][1] if plan.do_train else None
    bundle, opts = _build(args, plan, rt, train_features)
    rt.exe.run(bundle.startup_program)
    init_parameters(rt.exe, bundle.main_program, plan.init_path, require_qa_head=plan.require_head,
                    vocab_size=plan.model_cfg.vocab_size, head_prefix=glue.HEAD_PREFIX,
                    head_name="classification head", task="GLUE")
    if plan.amp.get("use_pure_fp16"):  # O2: parameters to fp16, master weights from the loaded values
        init_pure_fp16(bundle, rt.place)
    results = {}
    metrics = build_metric_logger(rt.dist.rank, plan.report_file, logger=logger)
    try:
        if args.show_config:
            metrics.log_parameters(dict(vars(args), task_name=plan.spec.name,
                                        bert_model=os.path.basename(os.path.dirname(os.path.dirname(plan.out_dir)))))
        if opts is not None:
            results.update(glue.train(rt.exe, bundle, train_features, opts, rt.dist.rank, rt.dist.world_size,
                                      metrics, rt.runnable(bundle.main_program, bundle.build_strategy)))
            metrics.log_summary({k: results[k] for k in ("e2e_train_time", "training_sequences_per_second",
                                                         "final_loss") if k in results})
            if rt.dist.is_main and not (args.benchmark or args.skip_checkpoint):
                results["params_file"] = save_params(bundle.main_program, plan.out_dir, args.model_prefix,
                                                     plan.model_cfg)
        if rt.dist.is_main and (plan.do_eval or plan.do_predict):
            results.update(_eval_and_predict(args, plan, rt, bundle, data, metrics))
    finally:
        metrics.close()
    return results


def _eval_and_predict(args, plan, rt, bundle, data, metrics):
    """Evaluate the dev split(s) and / or write the submission file(s), as the plan says."""
    predictor = None if args.benchmark else _predictor(args, plan, rt, bundle)
    results = _evaluate(args, plan, rt, bundle, data, metrics, predictor) if plan.do_eval else {}
    if plan.do_predict and not args.benchmark:
        results.update(_predict_test(plan, data, metrics, not plan.do_eval, predictor))
    return results


def _predictor(args, plan, rt, bundle):
    """The ClassifierPredictor: the exported --from-checkpoint itself, or the parameters now in the scope
    exported (and verified against the executor) through a temporary directory, as run_squad's predictor."""
    if plan.export_dir is not None:
        return ClassifierPredictor.load(plan.export_dir, device=rt.device, batch_size=args.eval_batch_size)
    spec = plan.spec
    model_name = os.path.basename(os.path.dirname(os.path.dirname(plan.out_dir)))
    settings = export_layout.ExportSettings(model_name=model_name, do_lower_case=args.do_lower_case,
                                            max_seq_length=args.max_seq_length, fetch_names=("logits",),
                                            task=spec.name, labels=tuple(spec.labels or ()),
                                            regression=spec.is_regression)
    return load_from_scope(rt.exe, bundle, model_cfg=plan.model_cfg, vocab_file=args.vocab_file, settings=settings,
                           source={"path": os.path.abspath(plan.init_path), "in_process": True},
                           device=rt.device, batch_size=args.eval_batch_size)


def _outputs(predictor, features):
    """(classifier outputs [N, num_labels], the seeds' throughput keys) of one split through the predictor."""
    outputs, stats = predictor.predict_logits(features, show_progress=True)
    return outputs, {k: stats[k] for k in ("e2e_inference_time", "inference_sequences_per_second")}


def _evaluate(args, plan, rt, bundle, data, metrics, predictor):
    """Metrics of every dev split (MNLI's mismatched ones prefixed mm_) + the seeds' keys, logged and written
    to eval_results.json; with --benchmark only the executor's throughput on the first split."""
    spec = plan.spec
    bench = (args.benchmark_warmup_steps, args.benchmark_steps) if args.benchmark else None
    results, scores = {}, {}
    for n, split in enumerate(spec.dev_splits):
        if bench:
            outputs, stats = glue.predict(rt.exe, bundle.eval_program, bundle.eval_fetches["logits"],
                                          data[split][1], args.eval_batch_size, bench)
        else:
            outputs, stats = _outputs(predictor, data[split][1])
        if n == 0:
            results.update(stats)
        if not args.benchmark:
            prefix = "mm_" if split == "dev_mismatched" else ""
            scores.update({prefix + k: v for k, v in glue.evaluate(spec, outputs, data[split][1]).items()})
    if "acc" in scores:
        scores["exact_match"] = 100.0 * scores["acc"]  # the seeds' DLLogger keys, in percent
    if "f1" in scores:
        scores["F1"] = 100.0 * scores["f1"]
    results.update(scores)
    metrics.log_summary(dict(scores, e2e_inference_time=results["e2e_inference_time"],
                             inference_sequences_per_second=results["inference_sequences_per_second"]))
    if not args.benchmark:
        results["eval_results_file"] = os.path.join(plan.out_dir, "eval_results.json")
        os.makedirs(plan.out_dir, exist_ok=True)
        # strict JSON: an undefined correlation (a constant column; tasks.glue warns) is null, not NaN
        atomic_write_json(results["eval_results_file"], outcome.json_scalars(dict(scores, task=spec.name)))
        for key, value in sorted(scores.items()):
            logger.info("%s %s = %.4f", spec.name, key, value)
    return results


def _predict_test(plan, data, metrics, log_throughput, predictor):
    """GLUE's submission file(s) from the test split(s); the first split's throughput when asked."""
    spec, results, files = plan.spec, {}, []
    for split, name in spec.test_splits:
        examples, features = data[split]
        outputs, stats = _outputs(predictor, features)
        files.append(glue.write_submission(os.path.join(plan.out_dir, name), examples, spec,
                                           glue.decide(spec, outputs)))
        if log_throughput and len(files) == 1:
            results.update(stats)
            metrics.log_summary(stats)
    results["submission_files"] = files
    return results


def cli(argv=None):
    """`main` as a command; returns the exit status (0, or 2 with one `error:` line for bad input)."""
    return run_cli(main, argv, rank=DistEnv.from_env().rank)


if __name__ == "__main__":
    sys.exit(cli())
