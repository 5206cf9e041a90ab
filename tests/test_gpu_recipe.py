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
from tasks import flags as common

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


# ---------------------------------------------------------------- item 7: loss scaling defaults
def amp_config_from_flags(*flags, **kwargs):
    parser = argparse.ArgumentParser()
    common.add_amp_args(parser)
    return train_cfg(device="gpu", **common.amp_fields(parser.parse_args(list(flags))), **kwargs)


def initial_loss_scale(bundle):
    name = bundle.fetches["loss_scaling"].name
    fills = [op for op in bundle.startup_program.global_block().ops
             if op.type == "fill_constant" and name in op.output_arg_names]
    assert len(fills) == 1
    return fills[0].attr("value")


@pytest.mark.parametrize("flags, scale, dynamic", [
    (["--amp"], 2.0 ** 15, True),                                                   # the default
    (["--amp", "--use-dynamic-loss-scaling", "--scale-loss=1048576"], 2.0 ** 20, True),  # the recipe
    (["--amp", "--use-dynamic-loss-scaling"], 2.0 ** 15, True),
    (["--amp", "--scale-loss=1024"], 1024.0, False),                               # explicit static scale
    (["--amp", "--use-dynamic-loss-scaling=false"], 2.0 ** 15, False),
])
def test_fp16_loss_scaling_from_flags(gpu_op_support, flags, scale, dynamic):
    bundle = P.build_pretraining(TINY, amp_config_from_flags(*flags))
    types = [op.type for op in all_ops(bundle.main_program)]
    # Every fp16 run unscales and checks its gradients (an overflowing step is skipped); only dynamic
    # scaling adapts the scale.
    assert "check_finite_and_unscale" in types
    assert ("update_loss_scaling" in types) == dynamic
    assert initial_loss_scale(bundle) == scale


def test_amp_flag_errors():
    with pytest.raises(ValueError, match="--use-pure-fp16 needs --amp"):
        amp_config_from_flags("--use-pure-fp16")


# ---------------------------------------------------------------- item 5: the loss stays fp32 under O2
LOSS_OPS = ("softmax_with_cross_entropy", "reduce_mean")


def loss_dtypes(bundle, loss_names):
    program = bundle.main_program
    outputs = {op.type: set() for op in all_ops(program)}
    for op in program.global_block().ops:
        for name in op.output_arg_names:
            outputs[op.type].add(block_dtype(program, name))
    return ({t: outputs.get(t) for t in LOSS_OPS},
            {n: block_dtype(program, bundle.fetches[n].name) for n in loss_names})


@pytest.mark.parametrize("pure, fleet", [(False, False), (True, False), (True, True)])
def test_pretraining_loss_ops_run_in_fp32(gpu_op_support, fleet_initialised, pure, fleet):
    bundle = P.build_pretraining(TINY, train_cfg(amp="fp16", device="gpu", use_pure_fp16=pure,
                                                 use_fleet=fleet))
    ops, fetched = loss_dtypes(bundle, ("loss", "mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc"))
    assert ops == {t: {paddle.float32} for t in LOSS_OPS}
    assert set(fetched.values()) == {paddle.float32}
    # The model itself is still fp16 (the black list did not spread).
    dtypes = {p.name: p.dtype for p in bundle.main_program.all_parameters()}
    assert dtypes["bert.encoder.layer.1.output.dense.weight"] == (paddle.float16 if pure else paddle.float32)


def test_squad_loss_runs_in_fp32_under_o2(gpu_op_support):
    bundle = P.build_squad(TINY, train_cfg(amp="fp16", device="gpu", use_pure_fp16=True, optimizer="AdamW"))
    ops, fetched = loss_dtypes(bundle, ("loss",))
    assert ops == {t: {paddle.float32} for t in LOSS_OPS} and fetched == {"loss": paddle.float32}
    # The loss scale multiplies an fp32 loss: no cast of the loss down to fp16 on the way.
    block = bundle.main_program.global_block()
    scaled = [op for op in block.ops if op.type == "elementwise_mul"
              and bundle.fetches["loss_scaling"].name in op.input_arg_names]
    assert scaled and {block_dtype(bundle.main_program, n) for n in scaled[0].input_arg_names} == {paddle.float32}


# ---------------------------------------------------------------- items 2 and 6: O2 and gradient merge
def test_pure_fp16_with_gradient_merge_is_refused_with_the_o1_alternative():
    # Paddle 2.6's GradientMergeOptimizer creates each merge buffer with its parameter's dtype, so under
    # O2 it would sum k loss-scaled gradients in fp16; the combination is refused, naming the flags.
    with pytest.raises(ValueError, match=r"--use-pure-fp16 with --gradient-merge-steps 4 .*"
                                         r"--amp without --use-pure-fp16"):
        train_cfg(amp="fp16", device="gpu", use_pure_fp16=True, gradient_merge_steps=4)


def test_o1_gradient_merge_buffers_are_fp32(gpu_op_support):
    bundle = P.build_pretraining(TINY, train_cfg(amp="fp16", device="gpu", gradient_merge_steps=4))
    program = bundle.main_program
    merge = [v for v in program.list_vars() if v.name.endswith("@GRAD@GradientMerge")]
    assert len(merge) == len(program.all_parameters())
    assert {v.dtype for v in merge} == {paddle.float32}


@pytest.mark.parametrize("fleet", [False, True])
def test_pure_fp16_init_uses_the_amp_optimizer_not_the_outer_one(gpu_op_support, fleet_initialised, fleet):
    from utils.amp_state import init_pure_fp16
    bundle = P.build_pretraining(TINY, train_cfg(amp="fp16", device="gpu", use_pure_fp16=True,
                                                 use_fleet=fleet))
    assert hasattr(bundle.amp_optimizer, "amp_init")
    # An outer wrapper without amp_init (as Paddle's GradientMergeOptimizer) must not matter.
    bundle = dataclasses.replace(bundle, optimizer=object())
    place, scope = paddle.CPUPlace(), paddle.static.Scope()
    with paddle.static.scope_guard(scope):
        paddle.static.Executor(place).run(bundle.startup_program)
        assert init_pure_fp16(bundle, place, scope) > 10
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert np.array(scope.find_var(name).get_tensor()).dtype == np.float16


# ---------------------------------------------------------------- item 8: DistributedFusedLamb removed
@pytest.mark.parametrize("script", ["run_pretraining.py", "run_squad.py"])
def test_distributed_fused_lamb_is_refused_on_the_command_line(script, tmp_path):
    import subprocess
    import sys
    from conftest import REPO
    proc = subprocess.run([sys.executable, str(REPO / script), "--optimizer", "DistributedFusedLamb"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "argument --optimizer: DistributedFusedLamb is not supported" in errors[0]
    assert "use --optimizer Lamb" in errors[0]
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- item 3: SQuAD prediction under AMP
def param_dtypes(program, names):
    return {n: block_dtype(program, n) for n in names}


@pytest.mark.parametrize("pure", [False, True])
def test_squad_eval_program_matches_the_training_precision(gpu_op_support, pure):
    bundle = P.build_squad(TINY, train_cfg(amp="fp16", device="gpu", use_pure_fp16=pure, optimizer="AdamW"))
    eval_params = [p.name for p in bundle.eval_program.all_parameters()]
    assert len(eval_params) == len(bundle.main_program.all_parameters())
    # The eval program reads the parameters in the dtype training leaves in the scope (fp16 under O2
    # after amp_init) and computes in fp16 as training does: an fp32 flash_attn has no GPU kernel.
    assert param_dtypes(bundle.eval_program, eval_params) == param_dtypes(bundle.main_program, eval_params)
    block = bundle.eval_program.global_block()
    matmuls = {block.var(n).dtype for op in block.ops if op.type == "matmul_v2" for n in op.output_arg_names}
    assert matmuls == {paddle.float16}
    assert not any(t.endswith("_grad") for t in op_types(bundle.eval_program))
    if pure:
        assert param_dtypes(bundle.eval_program, ["qa_outputs.weight"]) == {"qa_outputs.weight": paddle.float16}


def test_flash_attention_is_on_the_eval_rewrite_white_list():
    # flash_attn cannot be built on a CPU wheel; the eval rewrite uses the training lists, which have it.
    white, _ = P._amp_op_lists(train_cfg(amp="fp16", device="gpu"), "flash")
    assert "flash_attn" in white


def test_squad_pure_fp16_run_casts_the_parameters_after_loading(gpu_op_support, monkeypatch):
    """Fine-tuning under O2 calls amp_init (through init_pure_fp16) after loading, as pretraining does."""
    from types import SimpleNamespace
    from tasks import finetune
    from utils.amp_state import MASTER_SUFFIX
    bundle = P.build_squad(TINY, train_cfg(amp="fp16", device="gpu", use_pure_fp16=True, optimizer="AdamW"))
    place, scope = paddle.CPUPlace(), paddle.static.Scope()
    loaded = {}

    def fake_init(exe, program, path, **kwargs):  # what load_pretrained leaves: fp32 values in the scope
        var = scope.find_var("qa_outputs.weight")
        loaded["value"] = np.full(np.array(var.get_tensor()).shape, 0.5, np.float32)
        var.get_tensor().set(loaded["value"], place)
        return {}

    monkeypatch.setattr(finetune, "init_parameters", fake_init)
    cfg = SimpleNamespace(model=SimpleNamespace(init_path="ckpt", config=TINY), task="SQuAD",
                          precision=SimpleNamespace(amp={"amp": "fp16", "use_pure_fp16": True}))
    cfg.amp = cfg.precision.amp
    rt = SimpleNamespace(exe=paddle.static.Executor(place), place=place, device="gpu", uses_fleet=False,
                         runnable=lambda program, build_strategy: program,
                         dist=SimpleNamespace(rank=0, world_size=1, is_main=True))
    with paddle.static.scope_guard(scope):
        finetune.FinetuneSession(cfg, None, rt).initialise(bundle, require_head=False)
    weight = np.array(scope.find_var("qa_outputs.weight").get_tensor())
    assert weight.dtype == np.float16
    np.testing.assert_array_equal(np.array(scope.find_var("qa_outputs.weight" + MASTER_SUFFIX).get_tensor()),
                                  loaded["value"])
