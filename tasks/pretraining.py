"""One pre-training run of one phase: set up, initialise, train, checkpoint, report.

Owns: the order of things in a run (runtime → config → program → startup → initialisation → loop), where
the initial weights come from (a checkpoint of this phase, phase 1's final parameters, or pretrained
parameters: never silently random when a path was given), the training loop with gradient merge, the
per-micro-batch dropout seeding that makes a resumed run equal an uninterrupted one, and the DLLogger
records. Does not own: flags (`run_pretraining.py`), building the program (`program.py`), the data loader
(`data.lddl_loader`), the checkpoint format (`utils.checkpoint`), the report format (`utils.report`).

Exact resume. A checkpoint (written only at update boundaries) holds every persistable (parameters,
optimizer moments, LR variable, loss scale, gradient-merge counter) plus `progress.json` with the step, the
loader position and the LR-scheduler state. What is left is the randomness of dropout: Paddle's global
generator would have advanced differently in an interrupted run, so it is re-seeded before every
micro-batch from (seed, rank, micro-batch index). Together, a run killed at any point and resumed with
`--last-step-of-checkpoint auto` computes exactly what an uninterrupted run computes (tested on CPU fp32).
"""
import logging
import os
import time

import paddle

import program as program_lib
from data.lddl_loader import get_bert_pretrain_data_loader
from lr_scheduler import warmup_steps_from_proportion
from utils.amp_state import init_pure_fp16
from utils.checkpoint import (PROGRESS_FILE, CheckpointManager, Progress, check_compatible,
                              fingerprint_config, load_pretrained, phase_dir)
from utils.logger import progress as progress_bar
from utils.metric_window import MetricWindow
from utils.nonfinite import NonFiniteGuard
from utils.report import build_metric_logger
from utils import resume_agreement
from utils.run_lock import RunLock
from utils.runtime import init_runtime

logger = logging.getLogger(__name__)

_MAX_SEED = 2 ** 31 - 1


def micro_batch_seed(seed, rank, micro_index):
    """Seed of Paddle's generator for one micro-batch: a pure function, so resume replays it."""
    return (seed * 1_000_003 + rank * 7_919 + micro_index * 104_729 + 1) % _MAX_SEED


class PretrainSession:
    """A configured pre-training run. `run()` trains; `close()` releases loader workers and the report.

    Args:
      args: argparse.Namespace validated by `run_pretraining.validate_args`.

    Raises:
      ValueError: a config/vocab problem, a sequence length the model cannot hold, bad shards.
    """

    def __init__(self, args):
        self.args = args
        self.start_time = time.time()
        self.rt = init_runtime(args.device, seed=args.seed, cpu_affinity=args.enable_cpu_affinity)
        self.rank, self.world = self.rt.dist.rank, self.rt.dist.world_size
        self.model_cfg = args.model_cfg
        self.total_steps = (args.benchmark_warmup_steps + args.benchmark_steps if args.benchmark
                            else args.max_steps)
        self.global_batch = args.batch_size * args.gradient_merge_steps * self.world
        self.fingerprint = fingerprint_config(self.model_cfg.to_dict())
        self.manager = CheckpointManager(phase_dir(args.output_dir, args.bert_model, args.phase),
                                         keep_last=args.keep_checkpoints, rank=self.rank,
                                         model_prefix=args.model_prefix)
        self.lock, self.metrics = None, None
        self.guard = NonFiniteGuard(args.max_nonfinite_steps)
        self.source = self._resume_source()
        # Data first (bad shards are refused before anything is written), then the output directory
        # (a second run is refused before the slow build), then the program.
        self.loader = get_bert_pretrain_data_loader(
            args.input_dir, vocab_file=args.vocab_file, batch_size=args.batch_size, rank=self.rank,
            world_size=self.world, seed=args.seed, num_workers=args.num_workers,
            sequence_length_alignment=args.sequence_length_alignment,
            max_predictions_per_seq=args.max_predictions_per_seq, max_seq_length=args.max_seq_length)
        try:
            self._claim_output(self.source)
            self.train_cfg = self._train_config()
            self.bundle = program_lib.build_pretraining(self.model_cfg, self.train_cfg)
        except BaseException:
            self.close()
            raise

    def _train_config(self):
        a = self.args
        return program_lib.TrainConfig(
            optimizer=a.optimizer, learning_rate=a.learning_rate, warmup_start_lr=a.warmup_start_lr,
            warmup_steps=warmup_steps_from_proportion(self.total_steps, a.warmup_proportion),
            total_steps=self.total_steps, weight_decay=a.weight_decay, beta1=a.beta1, beta2=a.beta2,
            epsilon=a.epsilon, gradient_merge_steps=a.gradient_merge_steps, fuse_mha=a.fuse_mha,
            seed=a.seed, device=self.rt.device, **a.amp_fields, **self.rt.train_config_kwargs())

    # ------------------------------------------------------------------------------------------------
    # Initialisation

    def _resume_source(self):
        """(CheckpointManager, step) to resume from, or None. Raises ValueError for a bad path/step."""
        path, step = self.args.from_checkpoint, self.args.last_step_of_checkpoint
        if not path:
            return None
        kwargs = dict(keep_last=self.args.keep_checkpoints, rank=self.rank,
                      model_prefix=self.args.model_prefix)
        if os.path.isfile(os.path.join(path, PROGRESS_FILE)):  # a step directory itself
            name = os.path.basename(os.path.normpath(path))
            if not name.isdigit():
                raise ValueError(f"--from-checkpoint '{path}': a step directory must be named by its step")
            if step not in (None, "auto") and step != int(name):
                raise ValueError(f"--last-step-of-checkpoint {step} contradicts --from-checkpoint '{path}'")
            return CheckpointManager(os.path.dirname(os.path.normpath(path)), **kwargs), int(name)
        # A directory that does not exist yet (validate_args allows that for "auto") is still the source:
        # with several processes, whether there is anything to resume is agreed on, not decided per node.
        return CheckpointManager(path, **kwargs), ("auto" if step is None else step)

    def _claim_output(self, source):
        """Lock the phase directory and make sure this run will not mix with another run's checkpoints.

        A run resuming from the output directory itself continues its checkpoints. Any other run (a fresh
        start, or a resume from another directory) into a phase directory that already holds checkpoints
        is refused, because `--last-step-of-checkpoint auto` would later resume whichever is newest;
        `--replace-checkpoints` moves them aside instead (never deletes them).

        Raises:
          ValueError: the directory is locked by a live run, or holds another run's checkpoints.
        """
        if self.args.benchmark:
            return  # writes no checkpoint
        if self.rank == 0:
            try:
                self.lock = RunLock(self.manager.root_dir).acquire()
            except OSError as err:
                raise ValueError(f"--output-dir: cannot write checkpoints to {self.manager.root_dir}: "
                                 f"{err.strerror or err}") from err
        existing = self.manager.available_steps()
        if not existing or (source is not None and source[0].root_dir == self.manager.root_dir):
            return
        if not self.args.replace_checkpoints:
            raise ValueError(
                f"--output-dir: {self.manager.root_dir} already holds checkpoints of another run (steps "
                f"{', '.join(map(str, existing))}). Resume it with --from-checkpoint {self.manager.root_dir} "
                f"--last-step-of-checkpoint auto, use another --output-dir, or pass --replace-checkpoints "
                f"to move them aside and start over")
        self.manager.supersede(existing, "--replace-checkpoints: this run starts over")

    def _check_resumable(self, progress, step_dir):
        """Refuse a checkpoint of the other phase or of other settings, before anything is loaded."""
        if progress.phase != self.args.phase:
            raise ValueError(
                f"--from-checkpoint: {step_dir} is a phase {progress.phase} checkpoint but this run is "
                f"--phase{self.args.phase}. To start phase 2 from phase 1's final parameters, pass "
                f"--from-phase1-final-params {step_dir}, and give --from-checkpoint the phase 2 directory "
                f"(or leave it out)")
        check_compatible(progress, config_fingerprint=self.fingerprint, world_size=self.world,
                         global_batch_size=self.global_batch)

    def _initialise(self):
        """Run startup and load the initial state. Returns the resumed Progress or None.

        Under pure fp16 the order matters: a checkpoint holds fp16 parameters with their fp32 master
        weights, so `amp_init` (which casts the startup's fp32 parameters) runs BEFORE restoring it;
        pretrained or phase-1 parameters are fp32 values, so they are loaded first and `amp_init`
        then copies them into the master weights.
        """
        source = self.source
        self.rt.exe.run(self.bundle.startup_program)
        restored = self._restore(*source) if source is not None else None
        if source is not None and restored is None:
            logger.info("no complete checkpoint in '%s' yet: starting phase %d from step 0",
                        source[0].root_dir, self.args.phase)
        if restored is not None:
            self._continue_from(restored, source[0])
        else:
            self._load_initial_weights()
            self._amp_init()
        return restored

    def _restore(self, manager, requested):
        """Restore `requested` ("auto" or a step) from `manager`, or None when there is nothing to resume.

        A directory holding only damaged checkpoints is an error, not a fresh start. With several
        processes, rank 0 chooses the step and every process restores exactly that one
        (`utils.resume_agreement`).
        """
        if self.world > 1:
            return self._restore_agreed(manager, requested)
        steps, problems = manager.scan()
        if requested == "auto" and not steps and not problems:
            return None
        self._amp_init()
        return manager.restore(self.rt.exe, self.bundle.main_program, requested,
                               validate=self._check_resumable)

    def _restore_agreed(self, manager, requested):
        store = resume_agreement.global_store()
        step = resume_agreement.agree_on_step(store, self.rank, self.world, manager.root_dir,
                                              manager.available_steps(), lambda: manager.resolve_step(requested))
        if step is None:
            return None
        self._amp_init()
        restored, error = None, None
        try:
            restored = manager.restore(self.rt.exe, self.bundle.main_program, step,
                                       validate=self._check_resumable)
        except ValueError as err:
            error = str(err)
        resume_agreement.agree_loaded(store, self.rank, self.world, error)
        return restored

    def _continue_from(self, restored, source_manager):
        """Apply a restored Progress; move the same directory's later checkpoints aside (replayed anew)."""
        self.bundle.lr_scheduler.set_state_dict(restored.lr_state)
        self.loader.load_state_dict(restored.loader_state)
        if source_manager.root_dir == self.manager.root_dir:
            later = [s for s in self.manager.available_steps() if s > restored.global_step]
            self.manager.supersede(later, f"resuming from step {restored.global_step}: this run replays "
                                          f"those steps, and 'auto' must not pick the old ones")
        if self.args.from_phase1_final_params:
            logger.info("resuming phase 2 at step %d: --from-phase1-final-params is not used",
                        restored.global_step)

    def _load_initial_weights(self):
        path = self.args.from_phase1_final_params or self.args.from_pretrained_params
        if path:
            load_pretrained(self.rt.exe, self.bundle.main_program, path)

    def _amp_init(self):
        """Pure fp16: fp16 parameters whose fp32 master weights hold the current (loaded) values."""
        if self.train_cfg.use_pure_fp16:
            init_pure_fp16(self.bundle, self.rt.place)

    # ------------------------------------------------------------------------------------------------
    # Training

    def run(self):
        """Initialise, train to `total_steps` updates, save the final checkpoint, write the summary."""
        restored = self._initialise()
        step = restored.global_step if restored is not None else 0
        append = restored is not None and os.path.exists(self.args.report_file)
        self.metrics = build_metric_logger(self.rank, self.args.report_file, append=append,
                                           total_steps=self.total_steps)
        if self.args.show_config:
            self.metrics.log_parameters({k: v for k, v in sorted(vars(self.args).items())
                                         if k not in ("amp_fields", "model_cfg")})
        if step >= self.total_steps:
            logger.info("phase %d already finished (step %d of %d)", self.args.phase, step,
                        self.total_steps)
            return
        self._train(step)

    def _train(self, step):
        """The loop. Micro-batches run without fetching anything: the metrics accumulate on the device
        and are read every --log-freq updates (`utils.metric_window`), so a GPU is never made to wait."""
        a, k = self.args, self.args.gradient_merge_steps
        micro, last = step * k, {}
        window = MetricWindow(self.rt.exe, self.bundle.metrics, self.rt.place, self.bundle.fetches["lr"].name,
                              getattr(self.bundle.fetches.get("loss_scaling"), "name", None), k)
        self.guard.total = window.counters()[0]  # a resumed run restored the counters with the checkpoint
        raw_start, bench_start = time.time(), None
        bar = progress_bar(total=self.total_steps, desc=f"phase {a.phase}", unit="step",
                           disable=None if self.rank == 0 else True)
        bar.update(step)
        batches = iter(self.loader)
        runnable = self.rt.runnable(self.bundle.main_program, self.bundle.build_strategy)
        while step < self.total_steps:
            feed = self._next_batch(batches)
            if feed is None:
                batches = iter(self.loader)
                continue
            paddle.seed(micro_batch_seed(a.seed, self.rank, micro))
            self.rt.exe.run(runnable, feed=feed, fetch_list=[])
            micro += 1
            window.add_sequences(len(feed["input_ids"]) * self.world)
            if micro % k:
                continue
            step += 1
            self.bundle.lr_scheduler.step()
            bar.update(1)
            last = self._after_update(step, window, last)
            if a.benchmark and step == a.benchmark_warmup_steps:
                bench_start = time.time()
        bar.close()
        self._finish(step, raw_start, bench_start, last)

    def _next_batch(self, batches):
        """The next feed dict, or None at the end of an epoch (raises if an epoch is empty)."""
        try:
            return next(batches)
        except StopIteration:
            if len(self.loader) == 0:
                raise ValueError(f"--input-dir '{self.args.input_dir}' gives no full batch of "
                                 f"{self.args.batch_size} on each of {self.world} process(es)") from None
            return None

    def _after_update(self, step, window, last):
        """Log every --log-freq updates and save checkpoints. Returns the latest logged metrics."""
        a = self.args
        is_last = step == self.total_steps
        if step % a.log_freq == 0 or is_last:
            last = window.read() or last
            self.metrics.log(last, step=step)
            self.guard.observe(step, *window.counters())
        if not a.benchmark and self.manager.is_save_step(step, a.num_steps_per_checkpoint, is_last):
            self.guard.observe(step, *window.counters())  # never checkpoint a run that has diverged
            self.manager.save(self.rt.exe, self.bundle.main_program, self._progress(step, last))
        return last

    def _progress(self, step, last):
        return Progress(phase=self.args.phase, global_step=step, epoch=self.loader.epoch,
                        loader_state=self.loader.state_dict(),
                        lr_state=self.bundle.lr_scheduler.state_dict(),
                        seeds={"base": self.args.seed}, config_fingerprint=self.fingerprint,
                        world_size=self.world, global_batch_size=self.global_batch,
                        extra={"config": self.model_cfg.to_dict(),
                               "loss": last.get("loss") if last else None})

    def _finish(self, step, raw_start, bench_start, last):
        now = time.time()
        if self.args.benchmark and bench_start is not None:
            measured, steps = now - bench_start, self.args.benchmark_steps
        else:
            measured, steps = now - raw_start, step
        summary = {"e2e_train_time": now - self.start_time, "raw_train_time": measured,
                   "training_sequences_per_second": steps * self.global_batch / max(measured, 1e-9),
                   "final_loss": last.get("loss") if last else None}
        self.metrics.log_summary({k: v for k, v in summary.items() if v is not None})
        logger.info("phase %d done at step %d: final loss %s, %.2f sequences/s", self.args.phase, step,
                    summary["final_loss"], summary["training_sequences_per_second"])

    def close(self):
        """Stop loader workers, close the report, release the output lock (safe to call twice)."""
        self.loader.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.lock is not None:
            self.lock.release()
