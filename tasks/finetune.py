"""The fine-tuning layer: one `FinetuneSession` (build -> startup -> init -> train -> save -> predict through
the predictor) for every task, parameterised by a small task adapter, and the training loop it runs.

Owns: the steps of a fine-tuning run given a `tasks.finetune_config.FinetuneConfig` and a `TaskAdapter`;
planning the number of updates (`plan_updates`), the per-rank shuffled batch stream (`rank_batches`),
trimming batches to their longest row (`trim_batch`), the training loop (`train`, on
`tasks.engine.run_updates`), and the predictor that evaluates and predicts (the exported `--from-checkpoint`
itself, or the parameters in the scope exported and verified through a temporary directory).
Does not own: flags and their validation (the entry points and `tasks.finetune_config`), a task's features,
scoring and output files (its adapter: `tasks.squad.SquadAdapter`, `tasks.glue.GlueAdapter`), building
programs (`program`), or weight I/O (`utils.weights`).

Steps are the reference's: one pass over this rank's rows is `ceil(rows / batch_size)` micro-batches;
`epochs` passes, `gradient_merge_steps` micro-batches per optimizer update, and `max_steps > 0` caps the
updates (`min(max_steps, updates in epochs)`). The LR scheduler steps once per update, so warm-up and decay
follow `--warmup-proportion` of the updates actually run (the reference ignored it).
"""
import contextlib
import dataclasses
import itertools
import logging
import os
from typing import Protocol

import numpy as np
import paddle

from inference.verified_export import load_from_scope
from tasks.config import PrecisionConfig, train_config
from tasks.engine import run_updates
from tasks.progress import UpdateProgress
from utils.amp_state import init_pure_fp16
from utils.checkpoint import assign_to_scope
from utils.report import build_metric_logger
from utils.weights import fp32_parameters, init_parameters, save_params

logger = logging.getLogger(__name__)

SEQ_ALIGN = 8  # trimmed batches keep a multiple of this many columns
# What a fine-tuned model is exported and verified in, whatever it trained in: fp32, plain attention.
SERVING_PRECISION = PrecisionConfig(amp={"amp": "off"}, fuse_mha=False)


# ------------------------------------------------------------------------------------------ the loop


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """Training-loop settings (from a validated FinetuneConfig: `train_options`).

    Fields: epochs >= 1; max_steps None or > 0 (caps updates); batch_size per process; gradient_merge_steps
    micro-batches per update; log_freq in updates; benchmark, benchmark_steps, benchmark_warmup_steps as
    the reference (measure updates warmup+1 .. warmup+steps, then stop); seed of the shuffle.
    """
    epochs: int = 2
    max_steps: int = None
    batch_size: int = 32
    gradient_merge_steps: int = 1
    log_freq: int = 10
    benchmark: bool = False
    benchmark_steps: int = 20
    benchmark_warmup_steps: int = 20
    seed: int = 42


def train_options(cfg):
    """The TrainOptions of a FinetuneConfig that trains."""
    run = cfg.run
    return TrainOptions(epochs=cfg.schedule.epochs, max_steps=cfg.schedule.max_steps,
                        batch_size=cfg.schedule.train_batch_size,
                        gradient_merge_steps=cfg.optim.gradient_merge_steps, log_freq=run.log_freq,
                        benchmark=run.benchmark, benchmark_steps=run.benchmark_steps,
                        benchmark_warmup_steps=run.benchmark_warmup_steps, seed=run.seed)


def rows_per_rank(num_features, world_size):
    """Rows each process trains on per epoch: equal on every rank (the all-reduce needs equal steps)."""
    return num_features // world_size


def plan_updates(num_features, opts, world_size=1):
    """(micro-batches per epoch, optimizer updates to run) for a training set.

    Raises:
      ValueError: the data is too small for a single update (naming the numbers).
    """
    rows = rows_per_rank(num_features, world_size)
    per_epoch = -(-rows // opts.batch_size)
    updates = per_epoch * opts.epochs // opts.gradient_merge_steps
    if opts.max_steps is not None and opts.max_steps > 0:
        updates = min(updates, opts.max_steps)
    if opts.benchmark:
        updates = opts.benchmark_warmup_steps + opts.benchmark_steps
    if updates < 1:
        raise ValueError(f"the training file gives {num_features} windows ({rows} per process): fewer "
                         f"than one update of --train-batch-size {opts.batch_size} x "
                         f"--gradient-merge-steps {opts.gradient_merge_steps}; add data or lower them")
    return per_epoch, updates


def trim_batch(batch, multiple=SEQ_ALIGN):
    """Cut the padding columns every row of a batch shares (keeps a multiple of `multiple` columns).

    Attention masks exclude padding, so the real positions' outputs are unchanged; the work shrinks with
    the longest row instead of max_seq_length.

    Args:
      batch: dict of int64 [B, L] / [B, 1, 1, L] arrays (a task's batch, e.g. `data.features.squad`'s).

    Returns:
      (new dict with [B, L'] arrays, L').
    """
    mask = batch["attention_mask"]
    longest = int(mask.reshape(mask.shape[0], -1).sum(axis=1).max())
    length = min(mask.shape[-1], -(-longest // multiple) * multiple)
    out = dict(batch)
    for key in ("input_ids", "token_type_ids"):
        out[key] = np.ascontiguousarray(batch[key][:, :length])
    out["attention_mask"] = np.ascontiguousarray(mask[..., :length])
    return out, length


def rank_batches(features, batch_size, rank, world_size, rng, make_batch):
    """One epoch of training feeds for one rank: a shared permutation, every world_size-th row.

    Args:
      features: the training set's features (its len() is the number of rows).
      batch_size: int, rows per micro-batch.
      rank, world_size: ints; every rank draws the same permutation (same rng state) and takes its slice.
      rng: numpy.random.Generator, advanced by one permutation.
      make_batch: sorted row indices -> the task's training feed dict.

    Yields:
      feed dicts (int64 arrays, trimmed with `trim_batch`) with the task's training feeds.
    """
    order = rng.permutation(len(features))[rank::world_size][:rows_per_rank(len(features), world_size)]
    for start in range(0, len(order), batch_size):
        rows = np.sort(order[start:start + batch_size])
        yield trim_batch(make_batch(rows))[0]


def train(exe, bundle, features, make_batch, opts, *, rank=0, world_size=1, metrics=None, program=None,
          desc="train", log=logger):
    """Fine-tune: run micro-batches until the planned number of optimizer updates is done.

    Args:
      exe: executor; parameters initialised.
      bundle: program.ProgramBundle built for training (its lr_scheduler is stepped once per update).
      features: the training set's features; make_batch: sorted row indices -> training feed dict.
      opts: TrainOptions.
      rank, world_size: this process's place (each rank trains on its slice of every epoch).
      metrics: utils.report.MetricLogger or None.
      program: what to run instead of bundle.main_program (e.g. a CompiledProgram), optional.
      desc: the progress bar's label (e.g. "MRPC training").
      log: the logging.Logger of the plan line (the entry point's, so a task's lines share one name).

    Every --log-freq updates (and at the last) `metrics` gets loss, learning_rate, seq/s, tok/s and the ETA
    (`tasks.progress.UpdateProgress.log_fields`), the fields pretraining logs: in a log (no terminal, no bar)
    those lines are the progress.

    Returns:
      dict: updates, micro_batches, sequences (all ranks), losses (mean loss of each update, list of float),
      e2e_train_time (s), training_sequences_per_second, final_loss; with benchmark, the measured throughput.
    """
    per_epoch, updates = plan_updates(len(features), opts, world_size)
    rng, k = np.random.default_rng(opts.seed), opts.gradient_merge_steps
    log.info("training: %d rows, %d micro-batches/epoch/process, %d updates of %d x %d x %d sequences",
             len(features), per_epoch, updates, opts.batch_size, k, world_size)
    losses, epoch = [], [0]

    def epochs():  # --epochs passes (a benchmark runs on until its updates are done)
        for index in itertools.count():
            if index >= opts.epochs and not opts.benchmark:
                return
            epoch[0] = index
            yield from rank_batches(features, opts.batch_size, rank, world_size, rng, make_batch)

    def after_update(step, fetched, lr):
        losses.append(float(np.mean([float(np.asarray(values[0]).reshape(-1)[0]) for values in fetched])))
        if metrics is not None and (step % opts.log_freq == 0 or step == updates):
            metrics.log({"loss": losses[-1], "learning_rate": lr, **bar.log_fields()}, (epoch[0], step))

    bar = UpdateProgress(updates, desc=desc, disable=None if rank == 0 else True)
    try:
        result = run_updates(exe, program or bundle.main_program, epochs(), start_step=0, total_steps=updates,
                             merge_steps=k, lr_scheduler=bundle.lr_scheduler, world_size=world_size,
                             fetch_list=[bundle.fetches["loss"]], after_update=after_update, progress=bar,
                             benchmark_warmup_steps=opts.benchmark_warmup_steps if opts.benchmark else None)
    finally:
        bar.close()
    return {"updates": len(losses), "micro_batches": result.micro_batches, "sequences": result.sequences,
            "losses": losses, "e2e_train_time": result.elapsed,
            "training_sequences_per_second": result.sequences_per_second, "final_loss": losses[-1]}


# ------------------------------------------------------------------------------------------ the session


class TaskAdapter(Protocol):
    """What a task adds to the session (see `tasks.squad.SquadAdapter`, `tasks.glue.GlueAdapter`)."""

    label: str  # what the run's bars and lines call the task, e.g. "SQuAD", "MRPC"

    def build(self, model_cfg, train_cfg, is_training):
        """The task's program.ProgramBundle."""

    def training_data(self):
        """(features, make_batch) of the training set: make_batch maps sorted row indices to a feed dict."""

    def export_settings(self, cfg):
        """The inference.model_dir.ExportSettings of a model of this run."""

    def load_export(self, export_dir, device):
        """The predictor of an `inference.export` directory of this task."""

    def predict(self, session, bundle, metrics):
        """Evaluate and / or predict as the config's modes say; returns the results dict."""


class FinetuneSession:
    """A fine-tuning run: build -> startup -> init -> train -> save -> predict, as `cfg` says.

    Args:
      cfg: tasks.finetune_config.FinetuneConfig.
      adapter: the task's TaskAdapter.
      rt: utils.runtime.Runtime (executor, place, device, ranks).
    """

    def __init__(self, cfg, adapter, rt):
        self.cfg, self.adapter, self.rt = cfg, adapter, rt
        self._serving = None  # the last serving bundle built: its parameters are exported without a copy

    def run(self):
        """Train, then evaluate / predict, as the config's modes say. Returns the results dict."""
        cfg, rt = self.cfg, self.rt
        if cfg.model.export_dir is not None:  # an exported model predicts by itself: no program to build
            with self.metrics() as metrics:
                return self.adapter.predict(self, None, metrics) if rt.dist.is_main else {}
        data = self.adapter.training_data() if cfg.modes.do_train else None
        bundle, opts = self.build(None if data is None else len(data[0]))
        self.initialise(bundle, cfg.model.require_head)
        results = {}
        total = None if opts is None else plan_updates(len(data[0]), opts, rt.dist.world_size)[1]
        with self.metrics(total) as metrics:
            if cfg.run.show_config:
                metrics.log_parameters(cfg.flags)
            if opts is not None:
                results.update(self.train(bundle, data, opts, metrics))
            if rt.dist.is_main and (cfg.modes.do_eval or cfg.modes.do_predict):
                results.update(self.adapter.predict(self, bundle, metrics))
        return results

    def build(self, train_rows=None):
        """(bundle, TrainOptions or None): the training bundle for `train_rows` rows, else a predict-only one:
        the serving program (the predictor exports it as it is, nothing is copied), or with --benchmark the
        eval program in the run's precision (what the reference times)."""
        cfg, rt = self.cfg, self.rt
        if train_rows is None and not cfg.run.benchmark:
            return self.serving_bundle(), None
        if train_rows is None:
            train_cfg = train_config(None, cfg.precision, total_steps=1, seed=cfg.run.seed, device=rt.device)
            return self.adapter.build(cfg.model.config, train_cfg, is_training=False), None
        opts = train_options(cfg)
        _, updates = plan_updates(train_rows, opts, rt.dist.world_size)
        train_cfg = train_config(cfg.optim, cfg.precision, total_steps=updates, seed=cfg.run.seed, device=rt.device,
                                 dist_kwargs=rt.train_config_kwargs())
        return self.adapter.build(cfg.model.config, train_cfg, is_training=True), opts

    def initialise(self, bundle, require_head):
        """Run the startup program and load the weights; under O2, cast to fp16 with fp32 masters after."""
        cfg, rt = self.cfg, self.rt
        rt.exe.run(bundle.startup_program)
        init_parameters(rt.exe, bundle.main_program, cfg.model.init_path, require_head=require_head,
                        vocab_size=cfg.model.config.vocab_size, task=cfg.task)
        if cfg.amp.get("use_pure_fp16"):  # O2: parameters to fp16, master weights from the loaded values
            init_pure_fp16(bundle, rt.place)

    def train(self, bundle, data, opts, metrics):
        """Train on (features, make_batch), log the summary and, on rank 0, save the model if the run saves."""
        cfg, rt = self.cfg, self.rt
        features, make_batch = data
        results = train(rt.exe, bundle, features, make_batch, opts, rank=rt.dist.rank, world_size=rt.dist.world_size,
                        metrics=metrics, program=rt.runnable(bundle.main_program, bundle.build_strategy),
                        desc=f"{self.adapter.label} training", log=self.logger())
        metrics.log_summary({k: results[k] for k in ("e2e_train_time", "training_sequences_per_second",
                                                     "final_loss") if k in results})
        if rt.dist.is_main and cfg.outputs.save_model:
            results["params_file"] = save_params(bundle.main_program, cfg.outputs.out_dir, cfg.model.model_prefix,
                                                 cfg.model.config)
        return results

    def predictor(self, bundle):
        """The task's predictor: the exported --from-checkpoint itself, or the parameters now in the scope
        exported (and verified against the executor, on the run's device) through a temporary directory.

        Whatever precision the run trained in (fp32, TF32, AMP O1 / O2 in fp16 or bf16, fused attention), the
        export is a fresh predict-only program in fp32 with plain attention (`serving_bundle`), holding the
        fp32 values of the parameters (O2's master weights): the program every device and every predictor
        precision can run, as `python -m inference.export` writes from a checkpoint.
        """
        cfg, rt = self.cfg, self.rt
        if cfg.model.export_dir is not None:
            return self.adapter.load_export(cfg.model.export_dir, rt.device)
        if bundle is self._serving:  # a predict-only run loaded its weights into it already
            return self._export(bundle)
        values = fp32_parameters(bundle.main_program)
        with paddle.static.scope_guard(paddle.static.Scope()):
            serving = self.serving_bundle()
            rt.exe.run(serving.startup_program)
            assign_to_scope(rt.exe, values, "the parameters in training")
            return self._export(serving)

    def _export(self, serving):
        """The predictor of `serving` (a serving bundle whose parameters are in the current scope)."""
        cfg, rt = self.cfg, self.rt
        return load_from_scope(rt.exe, serving, model_cfg=cfg.model.config, vocab_file=cfg.text.vocab_file,
                               settings=self.adapter.export_settings(cfg),
                               source={"path": os.path.abspath(cfg.model.init_path), "in_process": True},
                               precision=getattr(cfg.settings, "infer_precision", "fp32"), device=rt.device,
                               batch_size=cfg.schedule.predict_batch_size)

    def serving_bundle(self):
        """The task's predict-only program in fp32 with plain attention, on the run's device."""
        cfg = self.cfg
        train_cfg = train_config(None, SERVING_PRECISION, total_steps=1, seed=cfg.run.seed, device=self.rt.device)
        self._serving = self.adapter.build(cfg.model.config, train_cfg, is_training=False)
        return self._serving

    def logger(self):
        """The run's logger: named after its entry point (run_squad, run_glue), so that a GLUE run's lines
        never read as SQuAD's (or as the shared layer's)."""
        return logging.getLogger(_ENTRY_LOGGERS.get(self.cfg.task, __name__))

    def metrics(self, total_steps=None):
        """The run's metric logger (rank 0 writes the report), closed when the `with` block ends; its lines
        go to `logger()`, "step N/<total_steps>" when the number of updates is known. Keys the adapter
        lists in `report_only` (GLUE: the seeds' exact_match / F1, which repeat acc / f1 in percent) go
        to the report, not to the log lines."""
        return contextlib.closing(build_metric_logger(self.rt.dist.rank, self.cfg.outputs.report_file,
                                                      logger=self.logger(), total_steps=total_steps,
                                                      report_only=getattr(self.adapter, "report_only", ())))


_ENTRY_LOGGERS = {"SQuAD": "run_squad", "GLUE": "run_glue"}
