"""Reading the on-device metric window of a pretraining program (see `program.TrainMetrics`).

Owns: `MetricWindow`, which, when a run logs, fetches the window's sums (averaged over ranks by the
window program), turns them into means, reads the learning rate, loss scale and skipped-update counters
from the scope, and zeroes the window for the next log interval. Also the host-side timing of the
interval (step time, sequences/s). Does not own building the window (`program.py`), deciding when to log
or what a skipped update means for the run (`tasks.pretraining`, `utils.nonfinite`).

The training loop runs its micro-batches with an empty fetch list, so on a GPU the host waits for the
device only here, once per `--log-freq` updates.
"""
import time

import numpy as np
import paddle


class MetricWindow:
    """The metrics of the updates since the last `read()`.

    Args:
      exe: the executor that runs the training program.
      metrics: `program.TrainMetrics` of the bundle.
      place: the executor's place (the zeroed window is written there).
      lr_var: name of the learning-rate variable; loss_scaling_var: of the AMP loss scale, or None.
      merge_steps: micro-batches per update (step time is per update).
    """

    def __init__(self, exe, metrics, place, lr_var, loss_scaling_var=None, merge_steps=1):
        self.exe, self.metrics, self.place = exe, metrics, place
        self.lr_var, self.loss_scaling_var, self.merge_steps = lr_var, loss_scaling_var, merge_steps
        self.started, self.sequences, self.tokens = time.time(), 0, 0

    def add_sequences(self, count, tokens=None):
        """Count sequences (and, when given, non-padding tokens) trained by all ranks, for the throughput
        of the interval."""
        self.sequences += count
        if tokens is not None:
            self.tokens += tokens

    @staticmethod
    def _scalar(name):
        return float(np.array(paddle.static.global_scope().find_var(name).get_tensor()).reshape(-1)[0])

    def counters(self):
        """(total, consecutive) skipped updates so far, as ints; (0, 0) without counters."""
        if self.metrics.nonfinite is None:
            return 0, 0
        return tuple(int(self._scalar(n)) for n in self.metrics.nonfinite)

    def read(self):
        """Means since the last read, then a new interval.

        Returns:
          dict with the window's metrics (loss, mlm_loss, nsp_loss, mlm_acc, nsp_acc: means over the
          micro-batches and ranks), learning_rate, step_time (s per update), seqs_per_sec, tokens_per_sec
          (when tokens were counted) and, under fp16, loss_scale; {} when no micro-batch ran since the
          last read.
        """
        sums = np.asarray(self.exe.run(self.metrics.program, fetch_list=[self.metrics.mean_sums])[0],
                          dtype=np.float64)
        count = sums[-1]
        tensor = paddle.static.global_scope().find_var(self.metrics.sums_var).get_tensor()
        tensor.set(np.zeros(sums.shape, np.float32), self.place)
        now = time.time()
        elapsed, sequences, tokens = max(now - self.started, 1e-9), self.sequences, self.tokens
        self.started, self.sequences, self.tokens = now, 0, 0
        if count <= 0:
            return {}
        out = {name: float(value) for name, value in zip(self.metrics.names, sums[:-1] / count)}
        out.update(learning_rate=self._scalar(self.lr_var),
                   step_time=elapsed / max(count / self.merge_steps, 1e-9), seqs_per_sec=sequences / elapsed)
        if tokens:
            out["tokens_per_sec"] = tokens / elapsed
        if self.loss_scaling_var is not None:
            out["loss_scale"] = self._scalar(self.loss_scaling_var)
        return out
