"""The GPU recipe's programs, checked on CPU (issue 15): what a GPU run would get, read off the built programs.

No GPU can run here, so each defect is shown on what the CPU wheel can show: the ops and dtypes of the
built program (with `gpu_op_support`, the stand-in for a CUDA build's kernel registry, see
tests/test_program.py), fleet's rewrite in one CPU process, or a CPU run of the fp32 parts.
"""
import argparse
import dataclasses

import numpy as np
import paddle
import pytest

import program as P
from test_program import (TINY, all_ops, fleet_initialised, gpu_op_support,  # noqa: F401 (fixtures)
                          op_types, pretraining_batch, train_cfg)
from utils import args as common

pytestmark = pytest.mark.usefixtures("static_graph")


def block_dtype(program, name):
    return program.global_block()._var_recursive(name).dtype


# ---------------------------------------------------------------- item 4: logged losses under fleet
def test_fleet_logged_mlm_loss_is_not_overwritten_by_the_total_loss(fleet_initialised):
    bundle = P.build_pretraining(TINY, train_cfg(use_fleet=True, warmup_steps=0))
    exe = paddle.static.Executor(paddle.CPUPlace())
    names = ("loss", "mlm_loss", "nsp_loss")
    with paddle.static.scope_guard(paddle.static.Scope()):
        exe.run(bundle.startup_program)
        loss, mlm, nsp = (float(v) for v in exe.run(
            bundle.main_program, feed=pretraining_batch(), fetch_list=[bundle.fetches[k] for k in names]))
    # Independent answer: the total is the sum of its parts, and the NSP part of a 2-way softmax at
    # init is about ln 2, so mlm_loss cannot equal the total.
    assert nsp == pytest.approx(np.log(2), abs=0.05)
    assert loss == pytest.approx(mlm + nsp, rel=1e-5)
    assert not P.build_dist_strategy(train_cfg(use_fleet=True)).build_strategy.enable_inplace
