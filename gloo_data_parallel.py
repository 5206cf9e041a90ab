"""Data parallelism for CPU processes (gloo), where Fleet's collective static mode does not run.

Why this exists: in Paddle 2.6 `fleet.distributed_optimizer(...).minimize` needs a device communicator
(`c_sync_comm_stream` has no CPU kernel), so `python -m paddle.distributed.launch --nproc_per_node 2` on
CPU cannot use Fleet. What does work with public APIs is: compute gradients (`optimizer.backward`),
`paddle.distributed.all_reduce` each one (a `c_allreduce_sum` op that runs on gloo), divide by the world
size, and `apply_gradients`. The result equals one process training on the concatenated batch whenever the
loss is a mean over equally sized per-rank batches (bit-equal for LAMB and SGD, measured).

Owns: `AllReduceGradients`, a thin optimizer wrapper doing exactly that. GPU runs use Fleet instead
(`program.build_dist_strategy`); single-process runs use neither.

Gradient merge composes: `GradientMergeOptimizer(AllReduceGradients(opt))` calls our `apply_gradients`
only on the k-th micro-batch with the merged gradients, so the all-reduce runs once per update.
"""
import paddle
import paddle.distributed as dist

from utils.checks import is_int


class AllReduceGradients:
    """Wrap a static-graph optimizer so that gradients are averaged over all ranks before the update.

    Args:
      inner: a paddle.optimizer.Optimizer (LAMB, AdamW, ...). Gradient clipping, weight decay and the LR
        schedule stay the inner optimizer's and act on the averaged gradients, as in one big process.
      world_size: int >= 1, number of ranks; the default parallel environment must be initialised
        (`paddle.distributed.init_parallel_env()`) when > 1.

    Raises:
      ValueError: world_size < 1.
    """

    def __init__(self, inner, world_size):
        if not is_int(world_size) or world_size < 1:
            raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
        self.inner = inner
        self.world_size = world_size

    def backward(self, loss, startup_program=None, parameter_list=None, no_grad_set=None,
                 callbacks=None):
        """Gradients of `loss`, as `inner.backward`; returns [(param, grad)]."""
        return self.inner.backward(loss, startup_program, parameter_list, no_grad_set, callbacks)

    def apply_gradients(self, params_grads):
        """All-reduce (sum) each gradient, divide by the world size, then let `inner` apply them."""
        averaged = []
        for param, grad in params_grads:
            if grad is not None and self.world_size > 1:
                dist.all_reduce(grad)  # in place: appends c_allreduce_sum to the current program
                grad = paddle.scale(grad, 1.0 / self.world_size)
            averaged.append((param, grad))
        return self.inner.apply_gradients(averaged)

    def apply_optimize(self, loss, startup_program, params_grads):
        """The hook GradientMergeOptimizer-style wrappers call; same as `apply_gradients`."""
        return self.apply_gradients(params_grads)

    def minimize(self, loss, startup_program=None, parameter_list=None, no_grad_set=None):
        """backward + apply_gradients. Returns (optimize ops, params_grads) like Paddle's optimizers."""
        params_grads = self.backward(loss, startup_program, parameter_list, no_grad_set)
        return self.apply_gradients(params_grads), params_grads

    def __getattr__(self, name):
        # Everything else (get_lr, _learning_rate, state_dict, ...) is the inner optimizer's.
        return getattr(self.inner, name)
