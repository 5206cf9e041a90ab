"""On-device metric window (issue 15 item 13): micro-batches fetch nothing, the log reads the window.

Checked against the values fetched the old way (every micro-batch) from the same program and batches.
"""
import numpy as np
import paddle
import pytest

import program as P
from test_program import TINY, pretraining_batch, train_cfg
from utils import checkpoint_io
from tasks.metric_window import MetricWindow

pytestmark = pytest.mark.usefixtures("static_graph")


def _bundle(**kwargs):
    with paddle.utils.unique_name.guard():
        return P.build_pretraining(TINY, train_cfg(**kwargs))


@pytest.mark.parametrize("merge_steps", [1, 2])
def test_window_means_equal_the_mean_of_per_micro_batch_fetches(merge_steps):
    bundle = _bundle(gradient_merge_steps=merge_steps)
    exe, place = paddle.static.Executor(paddle.CPUPlace()), paddle.CPUPlace()
    names = bundle.metrics.names
    with paddle.static.scope_guard(paddle.static.Scope()):
        exe.run(bundle.startup_program)
        window = MetricWindow(exe, bundle.metrics, place, bundle.fetches["lr"].name, merge_steps=merge_steps)
        fetched = []
        for seed in range(4):  # the oracle: fetch every value of every micro-batch
            values = exe.run(bundle.main_program, feed=pretraining_batch(seed),
                             fetch_list=[bundle.fetches[n] for n in names])
            fetched.append([float(np.asarray(v).reshape(-1)[0]) for v in values])
            window.add_sequences(4)
        means = window.read()
        assert window.read() == {}  # the window was zeroed
        assert window.counters() == (0, 0)
    expected = np.mean(np.array(fetched), axis=0)
    for name, value in zip(names, expected):
        np.testing.assert_allclose(means[name], value, rtol=1e-6, err_msg=name)
    assert means["learning_rate"] == pytest.approx(0.0)  # warm-up from 0; the scheduler was not stepped
    assert means["step_time"] > 0 and means["seqs_per_sec"] > 0


def test_no_per_micro_batch_all_reduce_of_the_loss_and_one_per_log_in_the_window_program():
    bundle = _bundle(allreduce_world_size=2)
    reduced = [op.input("X")[0] for block in bundle.main_program.blocks for op in block.ops
               if op.type == "c_allreduce_sum"]
    assert reduced and all("@GRAD" in name for name in reduced)  # gradients only, no loss copy
    window_ops = [op.type for op in bundle.metrics.program.global_block().ops]
    assert window_ops.count("c_allreduce_sum") == 1
    assert "c_allreduce_sum" not in [op.type for op in _bundle().metrics.program.global_block().ops]


def test_window_and_counters_are_persistables_a_checkpoint_may_lack():
    bundle = _bundle()
    names = [bundle.metrics.sums_var, *bundle.metrics.nonfinite]
    persistables = {v.name for v in bundle.main_program.list_vars() if v.persistable}
    assert set(names) <= persistables
    assert all(checkpoint_io.zero_if_absent(n) for n in names)  # older checkpoints still resume
