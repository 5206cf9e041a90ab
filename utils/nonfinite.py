"""What a careful trainer does when the loss or the gradients stop being finite numbers.

Owns: `NonFiniteGuard`, which reads the device's count of skipped updates (updates whose gradients held
NaN/inf are skipped inside the program: `optimizer.skip_nonfinite_updates` for fp32/bf16, Paddle's loss
scaler for fp16; `optimizer.count_nonfinite_updates` counts them), warns about them and stops a run that
keeps producing them; and `TrainingDiverged`, the error that stops it. Does not own detecting non-finite
values in the graph nor refusing to checkpoint NaN parameters (`utils.checkpoint`).

Why skip and count rather than stop at once: one bad batch (an overflow in a long warm-up, a corrupt
sample) should cost one update, not the run; but a model that has diverged produces nothing but
non-finite values, and training on silently for hours would waste the allocation and, worse, could
overwrite good checkpoints. So: skip, warn, and stop with a clear error after `max_consecutive`.
"""
import logging

from utils.checks import is_int

logger = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """Training produced non-finite values it cannot continue from (the message says what and what to do)."""


class NonFiniteGuard:
    """Watches the device's skipped-update counters; raises once `max_consecutive` updates in a row were skipped.

    The counters (`optimizer.count_nonfinite_updates`) are read when the run logs and before it saves,
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
