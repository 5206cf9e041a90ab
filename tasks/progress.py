"""Progress of a training loop people can plan with: a bar over optimizer updates, the ETA, sequences/s and
tokens/s.

Owns: `UpdateProgress`, which `tasks.engine.run_updates` advances once per optimizer update (so every task
that trains through it -- pretraining, SQuAD, GLUE -- gets the same bar without code of its own), and
`count_tokens`, the one definition of a "token" in tokens/s. Does not own what a task logs: a task reads
`eta_seconds()` / `rates()` for its own log lines (pretraining adds them to every DLLogger step record).

Definitions:
  * tokens are the non-padding positions of a batch (the sum of its attention mask): what the data holds,
    not the padded shape the device computed on. With several ranks, this rank's count is multiplied by
    the world size (the ranks' batches are drawn alike; exact counts would need an all-reduce per step).
  * rates are over the updates of this invocation (a resumed run measures only itself).
  * the ETA of the phase is the remaining updates (to `total_steps`, not to a `--steps-this-run` stop)
    times the mean time per update of this invocation so far.
"""
import time

import numpy as np

from utils.logger import progress as progress_bar


def count_tokens(feed):
    """Non-padding tokens of one feed dict: the sum of its "attention_mask" (int64 [B, 1, 1, L] or [B, L]);
    without a mask, the size of "input_ids"."""
    mask = feed.get("attention_mask")
    if mask is None:
        return int(np.asarray(feed["input_ids"]).size)
    return int(np.asarray(mask).sum())


class UpdateProgress:
    """The progress bar and throughput of one invocation of a training loop.

    Args:
      total_steps: int, the global step at which the phase (or fine-tuning) is done.
      start_step: int, updates already done before this invocation (a resumed run).
      desc: str, label of the bar (e.g. "phase 1", "squad").
      disable: True hides the bar (e.g. ranks other than 0); None draws it only on a terminal.
      clock: callable returning seconds (tests inject one).
    """

    def __init__(self, total_steps, start_step=0, desc="train", disable=None, clock=time.time):
        self.total_steps, self.start_step, self.step = int(total_steps), int(start_step), int(start_step)
        self.sequences, self.tokens = 0, 0
        self.last_sequences, self.last_tokens = 0, 0
        self._clock = clock
        self.started = clock()
        # `initial`: the resumed steps show as done without making tqdm's own rate and ETA look faster.
        # log=False: in a log, the task's own metric lines carry step/total, ETA and seq/s (`log_fields`).
        self._bar = progress_bar(total=self.total_steps, desc=desc, unit="step", disable=disable,
                                 initial=self.start_step, log=False)

    def record(self, step, sequences, tokens):
        """One optimizer update done: `sequences` and `tokens` trained by it (all ranks)."""
        self._bar.update(step - self.step)
        self.step = step
        self.last_sequences, self.last_tokens = sequences, tokens
        self.sequences += sequences
        self.tokens += tokens
        seq_rate, tok_rate = self.rates()
        self._bar.set_postfix_str(f"{seq_rate:.1f} seq/s, {tok_rate:.0f} tok/s", refresh=False)

    def elapsed(self):
        return max(self._clock() - self.started, 1e-9)

    def rates(self):
        """(sequences/s, tokens/s) over this invocation's updates so far."""
        elapsed = self.elapsed()
        return self.sequences / elapsed, self.tokens / elapsed

    def eta_seconds(self):
        """Seconds until `total_steps` at this invocation's mean time per update; None before one update."""
        done = self.step - self.start_step
        if done <= 0:
            return None
        return (self.total_steps - self.step) * self.elapsed() / done

    def log_fields(self):
        """The fields a task adds to its log record of an update: sequences/s and tokens/s so far, and the
        ETA (once one update is measured), under the names `utils.report` formats ("312.4 seq/s",
        "40012 tok/s", "ETA 1:02:05")."""
        seq_rate, tok_rate = self.rates()
        eta = self.eta_seconds()
        return {"seqs_per_sec": seq_rate, "tokens_per_sec": tok_rate, **({"eta_seconds": eta} if eta is not None else {})}

    def close(self):
        self._bar.close()
