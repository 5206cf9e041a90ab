"""What a careful trainer does when the loss or the gradients stop being finite numbers.

Owns: `NonFiniteGuard`, the host-side count of consecutive updates whose gradients held NaN/inf (those
updates were skipped inside the program: see `optimizer.SkipNonFiniteUpdates`), and `TrainingDiverged`,
the error that stops a run. Does not own detecting non-finite gradients in the graph (the optimizer
wrapper, or the AMP loss scaler under fp16) nor refusing to checkpoint NaN parameters
(`utils.checkpoint`).

Why skip and count rather than stop at once: one bad batch (an overflow in a long warm-up, a corrupt
sample) should cost one update, not the run; but a model that has diverged produces nothing but
non-finite values, and training on silently for hours would waste the allocation and, worse, could
overwrite good checkpoints. So: skip, warn, and stop with a clear error after `max_consecutive`.
"""
import logging

logger = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """Training produced non-finite values it cannot continue from (the message says what and what to do)."""


class NonFiniteGuard:
    """Counts consecutive skipped (non-finite) updates; raises after `max_consecutive` of them.

    Args:
      max_consecutive: int >= 1, the run stops at this many non-finite updates in a row.

    Raises:
      ValueError: `max_consecutive` < 1.
    """

    def __init__(self, max_consecutive):
        if isinstance(max_consecutive, bool) or not isinstance(max_consecutive, int) or max_consecutive < 1:
            raise ValueError(f"--max-nonfinite-steps must be an integer >= 1, got {max_consecutive!r}")
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.total = 0

    def update(self, step, nonfinite, loss=None):
        """Record whether update `step` was skipped for non-finite gradients.

        Raises:
          TrainingDiverged: the `max_consecutive`-th skipped update in a row.
        """
        if not nonfinite:
            self.consecutive = 0
            return
        self.consecutive += 1
        self.total += 1
        logger.warning("step %d: non-finite loss or gradients (loss %s); update skipped (%d in a row, "
                       "stopping at %d)", step, loss, self.consecutive, self.max_consecutive)
        if self.consecutive >= self.max_consecutive:
            raise TrainingDiverged(
                f"training diverged: {self.consecutive} consecutive updates up to step {step} had non-finite "
                f"loss or gradients. Resume from the last checkpoint with a lower --learning-rate or "
                f"longer warm-up (--warmup-proportion), or raise --max-nonfinite-steps")
