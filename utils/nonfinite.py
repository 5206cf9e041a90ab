"""The non-finite policy: what a run does when the loss or the gradients stop being finite numbers.

The policy, whole, and where each part of it runs:
  1. What counts: an update is non-finite when a gradient it applies holds NaN or +-inf (under fp16:
     when Paddle's loss scaler finds an overflow). Parameters are non-finite when a floating-point
     parameter holds NaN or +-inf (`nonfinite_names`).
  2. Skipped in the program: such an update changes no parameter, moment or beta power, identically on
     every rank (the flag is computed from the all-reduced gradients). The graph side is a rewrite the
     builder runs after `minimize`: `program_rewrites.skip_nonfinite_updates` for fp32/bf16, Paddle's
     loss scaler for fp16.
  3. Counted on the device: skipped updates in total and in a row
     (`program_rewrites.count_nonfinite_updates`), read only when the run logs and before it saves
     (`tasks.metric_window`), never after every update.
  4. Warned about and limited, here: `NonFiniteGuard` warns about every new skip and raises
     `TrainingDiverged` once `--max-nonfinite-steps` (default 25) updates in a row were skipped.
  5. Exit status 4 (`EXIT_DIVERGED`): `run_pretraining.cli` maps `TrainingDiverged` (so also
     `NonFiniteParameters`) to it, with one `error:` line.
  6. Never saving NaN parameters: `utils.checkpoint.CheckpointManager.save` refuses parameters that
     `nonfinite_names` names and raises `NonFiniteParameters`; nothing is written, so a checkpoint that
     cannot train on never replaces a good one.

Owns the host side: `TrainingDiverged`, `NonFiniteParameters`, `NonFiniteGuard`, `nonfinite_names`.
Does not own: editing the program (`program_rewrites`), reading the counters from the scope
(`tasks.metric_window`), deciding when to check (`tasks.pretraining`, `utils.checkpoint`) or writing
checkpoints. It sits in `utils/` because the checkpoint foundation raises its error.

Why skip and count rather than stop at once: one bad batch (an overflow in a long warm-up, a corrupt
sample) should cost one update, not the run; but a model that has diverged produces nothing but
non-finite values, and training on silently for hours would waste the allocation and, worse, could
overwrite good checkpoints. So: skip, warn, and stop with a clear error after `max_consecutive`.
"""
import logging

import numpy as np

from utils.checks import is_int

logger = logging.getLogger(__name__)

EXIT_DIVERGED = 4  # the exit status of a command whose training diverged (point 5)


class TrainingDiverged(RuntimeError):
    """Training produced non-finite values it cannot continue from (the message says what and what to do)."""


class NonFiniteParameters(TrainingDiverged):
    """A save was refused because parameters hold NaN/inf."""


def nonfinite_names(arrays):
    """Names of the floating-point arrays holding NaN or +-inf, sorted."""
    return sorted(n for n, v in arrays.items()
                  if np.issubdtype(np.asarray(v).dtype, np.floating) and not np.isfinite(v).all())


class NonFiniteGuard:
    """Watches the device's skipped-update counters; raises once `max_consecutive` updates in a row were skipped.

    The counters (`program_rewrites.count_nonfinite_updates`) are read when the run logs and before it saves,
    not after every update (that would cost a host synchronisation per update on a GPU), so a run stops
    at the first such read after the limit is reached.

    Args:
      max_consecutive: int >= 1.

    Raises:
      ValueError: `max_consecutive` < 1.
    """

    def __init__(self, max_consecutive):
        if not is_int(max_consecutive) or max_consecutive < 1:
            raise ValueError(f"--max-nonfinite-steps must be an integer >= 1, got {max_consecutive!r}")
        self.max_consecutive = max_consecutive
        self.total = 0

    def observe(self, step, total, consecutive):
        """Warn about updates skipped since the last observation; stop a run that keeps skipping.

        Args:
          step: the global step just completed.
          total: skipped updates since the program started (the device counter).
          consecutive: skipped updates in a row up to `step`.

        Raises:
          TrainingDiverged: `consecutive` >= max_consecutive.
        """
        new, self.total = total - self.total, total
        if new > 0:
            logger.warning("step %d: %d update(s) skipped since the last check for non-finite loss or "
                           "gradients (fp16 overflow or NaN/inf), %d in a row now, stopping at %d", step, new,
                           consecutive, self.max_consecutive)
        if consecutive >= self.max_consecutive:
            raise TrainingDiverged(
                f"training diverged: {consecutive} consecutive updates up to step {step} had non-finite "
                f"loss or gradients and were skipped. Resume from the last checkpoint with a lower "
                f"--learning-rate or longer warm-up (--warmup-proportion), or raise --max-nonfinite-steps")
