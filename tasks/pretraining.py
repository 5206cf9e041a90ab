"""One pre-training run of one phase: set up, initialise, train, checkpoint, report.

Owns: the order of things in a run (runtime → config → program → startup → initialisation → loop), where
the initial weights come from (a checkpoint of this phase, phase 1's final parameters, or pretrained
parameters: never silently random when a path was given), the training loop with gradient merge, the
per-micro-batch dropout seeding that makes a resumed run equal an uninterrupted one, and the DLLogger
records. Does not own: flags (`run_pretraining.py`), building the program (`program.py`), the data loader
(`data.loader.lddl_loader`), the checkpoint format (`utils.checkpoint`), the report format (`utils.report`).

Exact resume. A checkpoint (written only at update boundaries) holds every persistable (parameters,
optimizer moments, LR variable, loss scale, gradient-merge counter) plus `progress.json` with the step, the
loader position and the LR-scheduler state. What is left is the randomness of dropout: Paddle's global
generator would have advanced differently in an interrupted run, so it is re-seeded before every
micro-batch from (seed, rank, micro-batch index). Together, a run killed at any point and resumed with
`--last-step-of-checkpoint auto` computes exactly what an uninterrupted run computes (tested on CPU fp32).
So that "resumed" cannot mean "continued as another training", each checkpoint also records the settings
outside `tasks.config.RESUME_MAY_CHANGE`, the vocab's SHA-256 and (in the loader state) the shards'
contents; a resume that changes any of them is refused before a tensor is loaded.
"""
import logging
import os
import time

import paddle

import program as program_lib
import program_rewrites
from data.loader.lddl_loader import get_bert_pretrain_data_loader
from optimizer import decay_exclusion_summary
from tasks import resume_agreement
from tasks.config import resume_settings, train_config
from tasks.engine import run_updates
from tasks.launch_query import global_batch
from tasks.metric_window import MetricWindow
from tasks.pretrain_eval import PretrainEvaluator, load_eval_batches
from tasks.progress import UpdateProgress
from utils.amp_state import init_pure_fp16
from utils.weights import load_pretrained
from utils.checkpoint import (PROGRESS_FILE, CheckpointManager, Progress, check_compatible,
                              fingerprint_config, phase_dir)
from utils.nonfinite import NonFiniteGuard
from utils.report import build_metric_logger
from utils.run_lock import RunLock
from utils.runtime import init_runtime

logger = logging.getLogger(__name__)

_MAX_SEED = 2 ** 31 - 1


def micro_batch_seed(seed, rank, micro_index):
    """Seed of Paddle's generator for one micro-batch: a pure function, so resume replays it."""
    return (seed * 1_000_003 + rank * 7_919 + micro_index * 104_729 + 1) % _MAX_SEED


class PretrainSession:
    """A configured pre-training run. `run()` trains; `close()` releases loader workers and the lock.

    Args:
      cfg: tasks.config.PretrainConfig (built by `run_pretraining.validate_args`).

    Raises:
      ValueError: a config/vocab problem, a sequence length the model cannot hold, bad shards.
    """

    def __init__(self, cfg):
        self.cfg = cfg
        self.start_time = time.time()
        self.rt = init_runtime(cfg.run.device, seed=cfg.run.seed, cpu_affinity=cfg.run.enable_cpu_affinity)
        self.rank, self.world = self.rt.dist.rank, self.rt.dist.world_size
        self.total_steps = cfg.total_steps
        self.global_batch = global_batch(cfg.data.batch_size, cfg.optim.gradient_merge_steps, self.world)
        self.fingerprint = fingerprint_config(cfg.model.to_dict())
        self.vocab_sha256 = cfg.vocab.sha256  # read once, by validation
        ckpt = cfg.checkpointing
        self.manager = CheckpointManager(phase_dir(ckpt.output_dir, ckpt.bert_model, cfg.phase),
                                         keep_last=ckpt.keep_checkpoints, rank=self.rank,
                                         model_prefix=ckpt.model_prefix, model_config=cfg.model.to_dict())
        self.lock = None
        self.guard = NonFiniteGuard(cfg.max_nonfinite_steps)
        self.source = self._resume_source()
        # Data first (bad shards are refused before anything is written), then the output directory
        # (a second run is refused before the slow build), then the program.
        data = cfg.data
        self.loader = get_bert_pretrain_data_loader(
            data.input_dir, vocab_file=data.vocab_file, batch_size=data.batch_size, rank=self.rank,
            world_size=self.world, seed=cfg.run.seed, num_workers=data.num_workers,
            sequence_length_alignment=data.sequence_length_alignment,
            max_predictions_per_seq=data.max_predictions_per_seq, max_seq_length=data.max_seq_length)
        self.eval_batches = self._eval_batches()
        self.evaluator = None  # built with the program, in run()
        try:
            self._claim_output(self.source)
            self.train_cfg = train_config(cfg.optim, cfg.precision, total_steps=self.total_steps,
                                          seed=cfg.run.seed, device=self.rt.device,
                                          dist_kwargs=self.rt.train_config_kwargs())
            self.bundle = program_lib.build_pretraining(cfg.model, self.train_cfg)
            self.settings = self._settings()
        except BaseException:
            self.close()
            raise

    def _settings(self):
        """What a resume must not change (`Progress.settings`): the flags outside RESUME_MAY_CHANGE, plus the
        optimizer's rules that no flag sets (they are code, and code changes between two invocations)."""
        params = [p.name for p in self.bundle.main_program.all_parameters()]
        settings = {**resume_settings(self.cfg.flags),
                    "gradient clipping (global norm)": self.train_cfg.grad_clip_norm,
                    "weight-decay exclusions": decay_exclusion_summary(params)}
        if self.train_cfg.device == "cpu":
            # The CPU dropout kernel draws other masks than Paddle's op from the same seed: a CPU resume that
            # switched between them (BERT_PADDLE_CPU_KERNELS) would not continue the same training. Not
            # recorded on GPU, where neither runs, so a resume may still move between devices.
            settings["CPU dropout masks"] = program_rewrites.dropout_implementation(self.bundle.main_program)
        return settings

    def _eval_batches(self):
        """The fixed evaluation set of --eval-dir (rank 0 only: it alone evaluates), or None."""
        ev, data = self.cfg.evaluation, self.cfg.data
        if ev is None or self.rank != 0:
            return None
        try:
            return load_eval_batches(ev.eval_dir, vocab_file=data.vocab_file, batch_size=ev.batch_size,
                                     num_batches=ev.num_eval_batches, max_seq_length=data.max_seq_length,
                                     max_predictions_per_seq=data.max_predictions_per_seq,
                                     sequence_length_alignment=data.sequence_length_alignment)
        except BaseException:
            self.loader.close()
            raise

    # ------------------------------------------------------------------------------------------------
    # Initialisation

    def _resume_source(self):
        """(CheckpointManager, step) to resume from, or None. Raises ValueError for a bad path/step."""
        path, step = self.cfg.checkpointing.from_checkpoint, self.cfg.checkpointing.last_step_of_checkpoint
        if not path:
            return None
        kwargs = dict(keep_last=self.cfg.checkpointing.keep_checkpoints, rank=self.rank,
                      model_prefix=self.cfg.checkpointing.model_prefix)
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
        if self.cfg.run.benchmark:
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
        if not self.cfg.checkpointing.replace_checkpoints:
            raise ValueError(
                f"--output-dir: {self.manager.root_dir} already holds checkpoints of another run (steps "
                f"{', '.join(map(str, existing))}). Resume it with --from-checkpoint {self.manager.root_dir} "
                f"--last-step-of-checkpoint auto, use another --output-dir, or pass --replace-checkpoints "
                f"to move them aside and start over")
        self.manager.supersede(existing, "--replace-checkpoints: this run starts over")

    def _check_resumable(self, progress, step_dir):
        """Refuse a checkpoint of the other phase or of other settings, before anything is loaded."""
        if progress.phase != self.cfg.phase:
            raise ValueError(
                f"--from-checkpoint: {step_dir} is a phase {progress.phase} checkpoint but this run is "
                f"--phase{self.cfg.phase}. To start phase 2 from phase 1's final parameters, pass "
                f"--from-phase1-final-params {step_dir}, and give --from-checkpoint the phase 2 directory "
                f"(or leave it out)")
        check_compatible(progress, config_fingerprint=self.fingerprint, world_size=self.world,
                         global_batch_size=self.global_batch, settings=self.settings,
                         vocab_sha256=self.vocab_sha256)

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
                        source[0].root_dir, self.cfg.phase)
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
        (`tasks.resume_agreement`).
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
            complete, damaged = self.manager.scan()  # damaged ones too: a replay must not meet them later
            later = sorted(s for s in [*complete, *damaged] if s > restored.global_step)
            self.manager.supersede(later, f"resuming from step {restored.global_step}: this run replays "
                                          f"those steps, and 'auto' must not pick the old ones")
        if self.cfg.checkpointing.from_phase1_final_params:
            logger.info("resuming phase 2 at step %d: --from-phase1-final-params is not used",
                        restored.global_step)

    def _load_initial_weights(self):
        path = self.cfg.checkpointing.from_phase1_final_params or self.cfg.checkpointing.from_pretrained_params
        if path:
            load_pretrained(self.rt.exe, self.bundle.main_program, path)

    def _amp_init(self):
        """Pure fp16: fp16 parameters whose fp32 master weights hold the current (loaded) values."""
        if self.train_cfg.use_pure_fp16:
            init_pure_fp16(self.bundle, self.rt.place)

    # ------------------------------------------------------------------------------------------------
    # Training

    def run(self):
        """Initialise, train to `total_steps` updates (or --steps-this-run more), save the final checkpoint,
        write the summary.

        Returns:
          dict of final metrics: global_step, finished (False when --steps-this-run stopped the phase
          early), e2e_train_time, raw_train_time, training_sequences_per_second,
          training_tokens_per_second, final_loss and the last logged interval's values; for a phase
          that was already finished, global_step and already_finished=True.
        """
        restored = self._initialise()
        step = restored.global_step if restored is not None else 0
        if self.eval_batches is not None:
            self.evaluator = PretrainEvaluator(self.rt.exe, self.bundle.eval_program, self.bundle.eval_fetches,
                                               self.eval_batches)
        append = restored is not None and os.path.exists(self.cfg.run.report_file)
        metrics = build_metric_logger(self.rank, self.cfg.run.report_file, append=append,
                                      total_steps=self.total_steps)
        try:
            if self.cfg.run.show_config:
                metrics.log_parameters(self.cfg.flags)
            if step >= self.total_steps:
                logger.info("phase %d already finished (step %d of %d)", self.cfg.phase, step,
                            self.total_steps)
                return {"global_step": step, "already_finished": True}
            stop = step + self.cfg.steps_this_run if self.cfg.steps_this_run else self.total_steps
            return self._train(step, min(stop, self.total_steps), metrics)
        finally:
            metrics.close()

    def _train(self, step, stop, metrics):
        """The loop (`tasks.engine.run_updates`) from `step` to `stop` (the phase's end, or sooner with
        --steps-this-run). Micro-batches run without fetching anything: the metrics accumulate on the
        device and are read every --log-freq updates (`tasks.metric_window`), so a GPU is never made to
        wait. Dropout is re-seeded before every micro-batch from its global index, which is what makes a
        resumed run (or one split by --steps-this-run) equal an uninterrupted one."""
        c = self.cfg
        window = MetricWindow(self.rt.exe, self.bundle.metrics, self.rt.place, self.bundle.fetches["lr"].name,
                              getattr(self.bundle.fetches.get("loss_scaling"), "name", None),
                              c.optim.gradient_merge_steps)
        self.guard.total = window.counters()[0]  # a resumed run restored the counters with the checkpoint
        progress = UpdateProgress(self.total_steps, step, desc=f"phase {c.phase}",
                                  disable=None if self.rank == 0 else True)
        last = {}

        def after_update(new_step, _fetched, _lr):
            nonlocal last
            window.add_sequences(progress.last_sequences, progress.last_tokens)
            last = self._after_update(new_step, stop, window, progress, last, metrics)

        try:
            result = run_updates(
                self.rt.exe, self.rt.runnable(self.bundle.main_program, self.bundle.build_strategy),
                self._batches(), start_step=step, total_steps=stop,
                merge_steps=c.optim.gradient_merge_steps, lr_scheduler=self.bundle.lr_scheduler,
                world_size=self.world,
                before_micro_batch=lambda micro: paddle.seed(micro_batch_seed(c.run.seed, self.rank, micro)),
                after_update=after_update, progress=progress,
                benchmark_warmup_steps=c.run.benchmark_warmup_steps if c.run.benchmark else None)
        finally:
            progress.close()
        return self._finish(result, last, metrics)

    def _batches(self):
        """The loader's batches, epoch after epoch (it advances its own epoch and shuffle)."""
        while True:
            empty = True
            for feed in self.loader:
                empty = False
                yield feed
            if empty and len(self.loader) == 0:
                raise ValueError(f"--input-dir '{self.cfg.data.input_dir}' gives no full batch of "
                                 f"{self.cfg.data.batch_size} on each of {self.world} process(es)")

    def _after_update(self, step, stop, window, progress, last, metrics):
        """Log every --log-freq updates (with the phase ETA and tokens/s), evaluate every --eval-freq
        updates, save checkpoints; all three also at `stop`. Returns the latest logged metrics."""
        c = self.cfg
        is_last = step == stop
        if step % c.run.log_freq == 0 or is_last:
            last = window.read() or last
            eta = progress.eta_seconds()
            metrics.log({**last, **({"eta_seconds": eta} if eta is not None else {})}, step=step)
            self.guard.observe(step, *window.counters())
        if self.evaluator is not None and (step % c.evaluation.eval_freq == 0 or is_last):
            self._evaluate(step, metrics)
        if not c.run.benchmark and self.manager.is_save_step(step, c.checkpointing.num_steps_per_checkpoint, is_last):
            self.guard.observe(step, *window.counters())  # never checkpoint a run that has diverged
            self.manager.save(self.rt.exe, self.bundle.main_program, self._progress(step, last))
        return last

    def _evaluate(self, step, metrics):
        """Validation metrics of the fixed --eval-dir set into the report, at the same step as training's."""
        result = self.evaluator.evaluate()
        metrics.log({k: v for k, v in result.items() if k.startswith("eval_")}, step=step)
        return result

    def _progress(self, step, last):
        return Progress(phase=self.cfg.phase, global_step=step, epoch=self.loader.epoch,
                        loader_state=self.loader.state_dict(),
                        lr_state=self.bundle.lr_scheduler.state_dict(),
                        seeds={"base": self.cfg.run.seed}, config_fingerprint=self.fingerprint,
                        world_size=self.world, global_batch_size=self.global_batch,
                        settings=self.settings, vocab_sha256=self.vocab_sha256,
                        extra={"config": self.cfg.model.to_dict(),
                               "loss": last.get("loss") if last else None})

    def _finish(self, result, last, metrics):
        summary = {"e2e_train_time": time.time() - self.start_time, "raw_train_time": result.elapsed,
                   "training_sequences_per_second": result.sequences_per_second,
                   "training_tokens_per_second": result.tokens_per_second,
                   "final_loss": last.get("loss") if last else None}
        metrics.log_summary({k: v for k, v in summary.items() if v is not None})
        if result.step < self.total_steps:
            logger.info("phase %d stopped at step %d of %d (--steps-this-run %d): continue with the same command "
                        "and --from-checkpoint %s --last-step-of-checkpoint auto", self.cfg.phase, result.step,
                        self.total_steps, self.cfg.steps_this_run or 0, self.manager.root_dir)
        else:
            logger.info("phase %d done at step %d: final loss %s, %.2f sequences/s, %.0f tokens/s", self.cfg.phase,
                        result.step, summary["final_loss"], summary["training_sequences_per_second"],
                        summary["training_tokens_per_second"])
        return {**(last or {}), **summary, "global_step": result.step,
                "finished": result.step >= self.total_steps}

    def close(self):
        """Stop loader workers and release the output lock (safe to call twice)."""
        self.loader.close()
        if self.lock is not None:
            self.lock.release()
