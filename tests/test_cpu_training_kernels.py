"""The CPU gradient kernels (cpu_kernels/bias_add_grad_cpu.cc, layer_norm_grad_cpu.cc) and their rewrite.

Independent answers: float64 numpy gradients of `X + Bias` and of LayerNorm computed from their
definitions; the count of bias adds and LayerNorms a BERT has by construction (6 bias adds and 2
LayerNorms per encoder layer, 4 bias adds and 2 LayerNorms outside the layers); and the same pretraining
program run with Paddle's own ops.
"""
import json
import logging
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

import program as P
import program_rewrites
from tiny_training import TINY, train_tiny
from cpu_kernels import build as kernels

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.usefixtures("static_graph")


@pytest.fixture(scope="module")
def grad_kernels():
    status = kernels.grad_kernels()
    if status.bias_add_grad is None:
        pytest.skip(f"the CPU kernels cannot be built here: {status.reason}")
    return status


def _run(build, feed, fetch_names):
    """Build a program with `build(block)` appending ops, run it once, return the fetched arrays."""
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main, startup):
        block = main.global_block()
        for name, value in feed.items():
            paddle.static.data(name, value.shape, str(value.dtype))
        build(block)
    exe = paddle.static.Executor(paddle.CPUPlace())
    return exe.run(main, feed=feed, fetch_list=[block.var(n) for n in fetch_names])


def bias_add_grad(dout):
    """(dX, dBias) of `bert_bias_add_grad_cpu` for dOut [..., N] (fp32)."""
    cols = dout.shape[-1]

    def build(block):
        block.create_var(name="dx", dtype="float32", shape=dout.shape)
        block.create_var(name="db", dtype="float32", shape=[cols])
        # DOut made by an op, as in a backward pass (DX then shares a buffer the program owns, not the feed)
        block.append_op(type="scale", inputs={"X": ["d"]}, outputs={"Out": [block.create_var(
            name="dout", dtype="float32", shape=dout.shape)]}, attrs={"scale": 1.0})
        block.append_op(type=kernels.BIAS_ADD_GRAD_OP, inputs={"Bias": ["b"], "DOut": ["dout"]},
                        outputs={"DX": ["dx"], "DBias": ["db"]})

    return _run(build, {"d": dout, "b": np.zeros(cols, np.float32)}, ["dx", "db"])


def layer_norm_grad(x, scale, dy, begin_norm_axis, epsilon=1e-5):
    """(dX, dScale, dBias) of `bert_layer_norm_grad_cpu`, with Mean and Variance as Paddle's forward
    saves them (fp32, variance without epsilon)."""
    rows = int(np.prod(x.shape[:begin_norm_axis]))
    flat = x.reshape(rows, -1)
    mean, var = flat.mean(1).astype(np.float32), flat.var(1).astype(np.float32)

    def build(block):
        for name, shape in (("gx", x.shape), ("gs", scale.shape), ("gb", scale.shape)):
            block.create_var(name=name, dtype="float32", shape=shape)
        block.append_op(type=kernels.LAYER_NORM_GRAD_OP,
                        inputs={"X": ["x"], "Scale": ["s"], "Mean": ["m"], "Variance": ["v"], "DY": ["dy"]},
                        outputs={"DX": ["gx"], "DScale": ["gs"], "DBias": ["gb"]},
                        attrs={"epsilon": epsilon, "begin_norm_axis": begin_norm_axis})

    outs = _run(build, {"x": x, "s": scale, "m": mean, "v": var, "dy": dy}, ["gx", "gs", "gb"])
    return outs, mean, var


def layer_norm_grad_reference(x, scale, dy, mean, var, begin_norm_axis, epsilon=1e-5):
    """LayerNorm's gradients in float64 from its definition y = (x - mean) / sqrt(var + eps) * scale + bias."""
    rows = int(np.prod(x.shape[:begin_norm_axis]))
    x64, dy64 = x.reshape(rows, -1).astype(np.float64), dy.reshape(rows, -1).astype(np.float64)
    std = np.sqrt(var.astype(np.float64) + epsilon)[:, None]
    xh = (x64 - mean.astype(np.float64)[:, None]) / std
    g = dy64 * scale.reshape(-1).astype(np.float64)
    dx = (g - g.mean(1, keepdims=True) - xh * (g * xh).mean(1, keepdims=True)) / std
    return dx.reshape(x.shape), (dy64 * xh).sum(0).reshape(scale.shape), dy64.sum(0).reshape(scale.shape)


@pytest.mark.parametrize("shape", [(1, 5), (130, 7), (3, 45, 33), (1030, 768)])
def test_bias_add_grad_equals_the_column_sum(grad_kernels, shape):
    # 130 and 135 rows: blocks of 64 with a ragged last one; 1030 x 768: enough work for two threads.
    dout = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    dx, db = bias_add_grad(dout)
    np.testing.assert_array_equal(dx, dout)
    reference = dout.reshape(-1, shape[-1]).astype(np.float64).sum(0)
    # summed in double and rounded once: within half an fp32 ulp of the exact sum
    np.testing.assert_allclose(db, reference, rtol=2.0 ** -24, atol=1e-9)


@pytest.mark.parametrize("shape, begin_norm_axis", [((130, 7), 1), ((3, 45, 33), 2), ((4, 6, 5), 1),
                                                    ((2, 515, 768), 2)])
def test_layer_norm_grad_equals_the_definition(grad_kernels, shape, begin_norm_axis):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    scale = rng.standard_normal(shape[begin_norm_axis:]).astype(np.float32).reshape(-1)
    dy = rng.standard_normal(shape).astype(np.float32)
    (dx, dscale, dbias), mean, var = layer_norm_grad(x, scale, dy, begin_norm_axis)
    ref_dx, ref_dscale, ref_dbias = layer_norm_grad_reference(x, scale, dy, mean, var, begin_norm_axis)
    # fp32 arithmetic on O(1) values: each term carries a few 1e-7 of relative error
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-4, atol=1e-5 * np.abs(ref_dx).max())
    rows = int(np.prod(shape[:begin_norm_axis]))
    np.testing.assert_allclose(dscale, ref_dscale, rtol=1e-5, atol=1e-6 * rows)
    np.testing.assert_allclose(dbias, ref_dbias, rtol=2.0 ** -24, atol=1e-9)


def test_sums_do_not_depend_on_the_thread_count(grad_kernels, tmp_path):
    """A run resumed with another OMP_NUM_THREADS must continue bit-exactly (the kernels read it once)."""
    script = (
        "import zlib, sys, json, hashlib\n"
        f"sys.path[:0] = [{REPO!r}, {os.path.join(REPO, 'tests')!r}]\n"
        "import utils.preflight, numpy as np, paddle\n"
        "paddle.enable_static()\n"
        "from cpu_kernels.build import grad_kernels\n"
        "import test_cpu_training_kernels as t\n"
        "grad_kernels()\n"
        "rng = np.random.default_rng(3)\n"
        "d = rng.standard_normal((1030, 768)).astype(np.float32)\n"
        "x = rng.standard_normal((1030, 768)).astype(np.float32)\n"
        "s = rng.standard_normal(768).astype(np.float32)\n"
        "outs = list(t.bias_add_grad(d)) + list(t.layer_norm_grad(x, s, d, 1)[0])\n"
        "print(json.dumps([hashlib.sha256(o.tobytes()).hexdigest() for o in outs]))\n")
    digests = []
    for threads in ("1", "2"):
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                              env=dict(os.environ, OMP_NUM_THREADS=threads), timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        digests.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert digests[0] == digests[1]


def _train(cpu_training_kernels, gradient_merge_steps=1):
    run = train_tiny(cpu_training_kernels=cpu_training_kernels, gradient_merge_steps=gradient_merge_steps)
    return run.bundle, run.losses, run.params


def _types(program):
    return [op.type for block in program.blocks for op in block.ops]


@pytest.mark.parametrize("gradient_merge_steps", [1, 2])
def test_pretraining_with_the_kernels_trains_as_paddles_ops(grad_kernels, caplog, gradient_merge_steps):
    caplog.set_level(logging.INFO, logger=program_rewrites.__name__)
    bundle, losses, params = _train(True, gradient_merge_steps=gradient_merge_steps)
    layers = TINY.num_hidden_layers
    # q, k, v, attention output, FFN in and out per layer; pooler, MLM transform, MLM decoder, NSP outside
    bias_adds, layer_norms = 6 * layers + 4, 2 * layers + 2
    types = _types(bundle.main_program)
    assert types.count(grad_kernels.bias_add_grad) == bias_adds
    assert types.count(grad_kernels.layer_norm_grad) == layer_norms and "layer_norm_grad" not in types
    stock_bundle, stock_losses, stock_params = _train(False, gradient_merge_steps=gradient_merge_steps)
    stock_types = _types(stock_bundle.main_program)
    assert grad_kernels.bias_add_grad not in stock_types and stock_types.count("layer_norm_grad") == layer_norms
    assert types.count("elementwise_add_grad") == stock_types.count("elementwise_add_grad") - bias_adds
    lines = [r.getMessage() for r in caplog.records if "CPU gradient kernels" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith(
        f"CPU gradient kernels: {bias_adds} of {stock_types.count('elementwise_add_grad')} elementwise_add_grad "
        f"ops (the fp32 bias adds) -> {grad_kernels.bias_add_grad}, {layer_norms} of {layer_norms} "
        f"layer_norm_grad ops -> {grad_kernels.layer_norm_grad}")
    np.testing.assert_allclose(losses, stock_losses, rtol=1e-5)
    assert losses[-1] < losses[0]
    for name, value in params.items():  # the updates agree too, not only the losses
        np.testing.assert_allclose(value, stock_params[name], rtol=1e-4, atol=1e-6, err_msg=name)
    swapped = [op for op in bundle.main_program.global_block().ops if op.type == grad_kernels.bias_add_grad]
    assert all(op.attr("op_role") == swapped[0].attr("op_role") for op in swapped)  # backward role kept


def _backward_program(build_forward):
    """A program whose forward `build_forward()` returns a loss, with Paddle's backward appended."""
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main, startup), paddle.utils.unique_name.guard():
        paddle.static.append_backward(build_forward())
    return main


def _elementwise_add(x, y, axis):
    block = x.block
    out = block.create_var(name=paddle.utils.unique_name.generate("add"), dtype=x.dtype, shape=x.shape)
    block.append_op(type="elementwise_add", inputs={"X": [x], "Y": [y]}, outputs={"Out": [out]},
                    attrs={"axis": axis})
    return out


def test_the_rewrite_leaves_ops_outside_the_kernels_contract_alone(grad_kernels):
    def forward():
        x = paddle.static.data("x", [-1, 4, 5], "float32")
        x.stop_gradient = False
        last = paddle.static.create_parameter([5], "float32")      # the kernel's case: swapped
        middle = paddle.static.create_parameter([4], "float32")    # broadcast on axis 1: kept
        same = paddle.static.create_parameter([4, 5], "float32")   # trailing two axes: kept
        h = paddle.static.data("h", [-1, 5], "float16")
        h.stop_gradient = False
        half = paddle.static.create_parameter([5], "float16")      # fp16: kept
        out = _elementwise_add(_elementwise_add(_elementwise_add(x, last, -1), middle, 1), same, -1)
        return paddle.sum(out) + paddle.sum(paddle.cast(_elementwise_add(h, half, -1), "float32"))

    main = _backward_program(forward)
    before = _types(main)
    assert before.count("elementwise_add_grad") == 4 + 1  # and the scalar add of the two sums
    assert program_rewrites.use_cpu_training_kernels(main, grad_kernels) == {
        "elementwise_add_grad": 1, "layer_norm_grad": 0}
    after = _types(main)
    assert after.count("elementwise_add_grad") == 4 and after.count(grad_kernels.bias_add_grad) == 1
    kernel_op = next(op for op in main.global_block().ops if op.type == grad_kernels.bias_add_grad)
    assert main.global_block().var(kernel_op.input("Bias")[0]).shape == (5,)


def test_a_bias_gradient_read_twice_keeps_paddles_op(grad_kernels):
    """DX shares DOut's buffer in the kernel: only safe while no other op reads DOut by its name."""
    def forward():
        x = paddle.static.data("x", [-1, 5], "float32")
        x.stop_gradient = False
        return paddle.sum(_elementwise_add(x, paddle.static.create_parameter([5], "float32"), -1))

    main = _backward_program(forward)
    block = main.global_block()
    grad_op = next(op for op in block.ops if op.type == "elementwise_add_grad")
    dout = grad_op.input("Out@GRAD")[0]
    block.append_op(type="scale", inputs={"X": [dout]}, outputs={"Out": [block.create_var(
        name="another_reader", dtype="float32", shape=[-1, 5])]}, attrs={"scale": 2.0})
    assert program_rewrites.use_cpu_training_kernels(main, grad_kernels)["elementwise_add_grad"] == 0
    block._remove_op(len(block.ops) - 1)  # without the second reader, the same op is swapped
    assert program_rewrites.use_cpu_training_kernels(main, grad_kernels)["elementwise_add_grad"] == 1


def test_layer_norm_without_scale_keeps_paddles_op(grad_kernels):
    def forward():
        x = paddle.static.data("x", [-1, 8], "float32")
        x.stop_gradient = False
        plain = paddle.nn.LayerNorm(8, weight_attr=False, bias_attr=False)(x)
        affine = paddle.nn.LayerNorm(8)(x)
        return paddle.sum(plain * affine)

    main = _backward_program(forward)
    assert program_rewrites.use_cpu_training_kernels(main, grad_kernels)["layer_norm_grad"] == 1
    assert _types(main).count("layer_norm_grad") == 1


def test_switched_off_by_its_variable_with_one_line(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger=kernels.__name__)
    monkeypatch.setattr(kernels, "_GRAD_STATUS", None)
    status = kernels.grad_kernels({kernels.GRAD_ENABLE_VAR: "0"})
    assert status.bias_add_grad is None and status.reason == "BERT_PADDLE_CPU_GRAD_KERNELS=0"
    assert [r.getMessage() for r in caplog.records] == [
        "CPU gradient kernels: Paddle's elementwise_add_grad and layer_norm_grad (BERT_PADDLE_CPU_GRAD_KERNELS=0)"]
    with paddle.utils.unique_name.guard():
        bundle = P.build_pretraining(TINY, P.TrainConfig(optimizer="Lamb", total_steps=10, device="cpu"))
    types = _types(bundle.main_program)
    assert kernels.BIAS_ADD_GRAD_OP not in types and types.count("layer_norm_grad") == 6
    monkeypatch.setattr(kernels, "_GRAD_STATUS", None)  # later tests re-read the real status


@pytest.mark.parametrize("task", ["squad", "glue"])
def test_fine_tuning_programs_use_the_kernels_too(grad_kernels, task):
    cfg = P.TrainConfig(optimizer="AdamW", total_steps=10, device="cpu")
    with paddle.utils.unique_name.guard():
        bundle = P.build_squad(TINY, cfg) if task == "squad" else P.build_glue(TINY, cfg, num_labels=3)
    types = _types(bundle.main_program)
    layers = TINY.num_hidden_layers
    # 6 bias adds per layer and one in the head (SQuAD's span layer; GLUE's classifier, whose pooler is
    # a second); LayerNorms: 2 per layer and the embeddings'
    heads = 1 if task == "squad" else 2
    assert types.count(grad_kernels.bias_add_grad) == 6 * layers + heads
    assert types.count(grad_kernels.layer_norm_grad) == 2 * layers + 1 and "layer_norm_grad" not in types
