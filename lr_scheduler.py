"""Learning-rate schedule: linear warm-up, then polynomial decay (BERT's schedule).

Owns: `lr_at` (a pure function, what tests and resume logic reason about), the warm-up proportion
rule (`check_warmup_proportion`, used by every entry point through `tasks.config.OptimConfig`), and
`build_lr_scheduler`, a Paddle `LRScheduler` whose value is `lr_at(last_epoch)`.
Does not own: stepping the scheduler (the training loop calls `step()` once per optimizer update) or
saving its state (the checkpointer stores `state_dict()`).

Schedule, for step s (the number of optimizer updates already applied):
  s <  W:      warmup_start_lr + (base_lr - warmup_start_lr) * s / W
  W <= s < T:  end_lr + (base_lr - end_lr) * (1 - (s - W) / (T - W)) ** power
  s >= T:      end_lr
This is the NVIDIA reference's LinearWarmup(PolynomialDecay(decay_steps=T-W)) written as one function.
"""
import logging
import math

import paddle

from utils.checks import is_int

logger = logging.getLogger(__name__)


def _check_schedule(base_lr, warmup_start_lr, warmup_steps, total_steps, power, end_lr):
    for name, value in (("warmup_steps", warmup_steps), ("total_steps", total_steps)):
        if not is_int(value) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if warmup_steps > total_steps:
        raise ValueError(f"warmup_steps ({warmup_steps}) must not exceed total_steps ({total_steps})")
    for name, value in (("base_lr", base_lr), ("warmup_start_lr", warmup_start_lr),
                        ("end_lr", end_lr), ("power", power)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 \
                or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if power == 0:
        raise ValueError("power must be > 0 (power 0 would never decay)")
    # A warm-up climbs to the peak: starting above it would train the first steps at a rate the user
    # never meant as a peak (e.g. 5 -> 1e-3 diverges), so it is a typo, not a schedule.
    if warmup_start_lr > base_lr:
        raise ValueError(f"warmup_start_lr ({warmup_start_lr:g}) must not exceed base_lr ({base_lr:g}), the "
                         f"peak the warm-up climbs to")


def lr_at(step, *, base_lr, warmup_start_lr, warmup_steps, total_steps, power=1.0, end_lr=0.0):
    """Learning rate after `step` optimizer updates.

    Args:
      step: int >= 0.
      base_lr: peak learning rate, reached at step == warmup_steps.
      warmup_start_lr: learning rate at step 0 (when warmup_steps > 0).
      warmup_steps: int in [0, total_steps].
      total_steps: int >= 1, the step at which end_lr is reached.
      power: float > 0, exponent of the decay (1.0 = linear).
      end_lr: final learning rate, held for step >= total_steps.

    Returns:
      float.

    Raises:
      ValueError: negative step or an invalid schedule.
    """
    _check_schedule(base_lr, warmup_start_lr, warmup_steps, total_steps, power, end_lr)
    if not is_int(step) or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}")
    if step < warmup_steps:
        return warmup_start_lr + (base_lr - warmup_start_lr) * step / warmup_steps
    if step >= total_steps:
        return float(end_lr)
    remaining = 1.0 - (step - warmup_steps) / (total_steps - warmup_steps)
    return end_lr + (base_lr - end_lr) * remaining ** power


def check_warmup_proportion(proportion):
    """The warm-up range rule, the one place it lives: a proportion of the updates is in [0, 1].

    Why here: the schedule is what a proportion outside [0, 1] would break (more warm-up steps than
    updates, or a negative count). Callers that speak in flags (`tasks.config.OptimConfig`) reword the
    message with `tasks.config.in_flag_terms`, which turns "warmup proportion" into "--warmup-proportion".

    Raises:
      ValueError: "warmup proportion must be in [0, 1], got <repr>" (NaN and non-numbers included).
    """
    if not isinstance(proportion, (int, float)) or not 0.0 <= proportion <= 1.0:
        raise ValueError(f"warmup proportion must be in [0, 1], got {proportion!r}")


def warmup_steps_from_proportion(total_steps, proportion):
    """Number of warm-up steps for a proportion of training: floor(proportion * total_steps).

    The product is rounded to 9 decimals first so that e.g. 0.29 * 100 gives 29, not 28 (binary
    floating point makes it 28.999999999999996).

    Raises:
      ValueError: total_steps < 1 or proportion outside [0, 1] (`check_warmup_proportion`).
    """
    if not is_int(total_steps) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
    check_warmup_proportion(proportion)
    return int(math.floor(round(proportion * total_steps, 9)))


class PolyWarmupLR(paddle.optimizer.lr.LRScheduler):
    """Paddle LRScheduler evaluating `lr_at(self.last_epoch, ...)`.

    `last_epoch` counts optimizer updates: it is 0 after construction (the value used by the first
    update) and each `step()` advances it by one. `state_dict()` holds `last_epoch` and `last_lr`.
    """

    def __init__(self, *, base_lr, warmup_start_lr, warmup_steps, total_steps, power, end_lr,
                 last_step=0):
        _check_schedule(base_lr, warmup_start_lr, warmup_steps, total_steps, power, end_lr)
        self.schedule = dict(base_lr=base_lr, warmup_start_lr=warmup_start_lr,
                             warmup_steps=warmup_steps, total_steps=total_steps, power=power,
                             end_lr=end_lr)
        # The base class calls step() once, moving last_epoch from last_step - 1 to last_step.
        super().__init__(learning_rate=base_lr, last_epoch=last_step - 1)

    def get_lr(self):
        return lr_at(self.last_epoch, **self.schedule)

    def set_state_dict(self, state_dict):
        """Restore from `state_dict()`; the value is recomputed from this scheduler's schedule.

        Raises:
          ValueError: `last_epoch` missing or not a non-negative integer.
        """
        step = state_dict.get("last_epoch")
        if not is_int(step) or step < 0:
            raise ValueError(f"LR scheduler state needs a non-negative integer 'last_epoch', "
                             f"got {step!r}")
        self.last_epoch = step
        self.last_lr = self.get_lr()
        saved = state_dict.get("last_lr")
        if saved is not None and not math.isclose(saved, self.last_lr, rel_tol=1e-9, abs_tol=0.0):
            logger.warning("LR schedule changed since the checkpoint: step %d had lr %.6g, now %.6g",
                           step, saved, self.last_lr)

    set_dict = set_state_dict


def build_lr_scheduler(*, base_lr, warmup_start_lr=0.0, warmup_steps=0, total_steps, power=1.0,
                       end_lr=0.0, last_step=0):
    """Build the training LR scheduler.

    Args:
      base_lr, warmup_start_lr, warmup_steps, total_steps, power, end_lr: see `lr_at`.
      last_step: int >= 0, updates already applied (resume); prefer `set_state_dict` from a checkpoint.

    Returns:
      PolyWarmupLR whose current value is lr_at(last_step).

    Raises:
      ValueError: invalid schedule or negative last_step.
    """
    if not is_int(last_step) or last_step < 0:
        raise ValueError(f"last_step must be a non-negative integer, got {last_step!r}")
    return PolyWarmupLR(base_lr=base_lr, warmup_start_lr=warmup_start_lr, warmup_steps=warmup_steps,
                        total_steps=total_steps, power=power, end_lr=end_lr, last_step=last_step)
