"""The fused paths of issue 22: --fuse-qkv, --fuse-ffn, --fuse-residual-ln, --fuse-gemm-epilogue.

--fuse-qkv is plain matmul, so its numerics are compared with the unfused program on CPU. The CPU wheel has
neither the kernels nor even the op definitions of `fused_feedforward` / `fused_bias_dropout_residual_layer_norm`,
so those are checked with `fused_kernels`: the kernel registry reports GPU kernels, and Paddle's two functions
are replaced by stand-ins written from their documented semantics in plain ops, which record how the model
calls them. That checks where each fused op goes, with which parameters, and that the wiring computes what
the unfused layers compute; the kernels themselves are compared on a real GPU by scripts/gpu_selfcheck.sh.
"""
import argparse
import dataclasses
import logging
import pathlib

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

import modeling
import program as P
from tasks import flags as common
from tasks.config import PrecisionConfig, train_config
from test_program import TINY, gpu_op_support, pretraining_batch, train_cfg  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("static_graph")

NO_DROPOUT = dataclasses.replace(TINY, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
ALL_MODEL_FUSIONS = dict(fuse_qkv=True, fuse_ffn=True, fuse_residual_ln=True)
FFN_OP, RESIDUAL_LN_OP = modeling.FUSED_OP_TYPES["ffn"], modeling.FUSED_OP_TYPES["residual_ln"]


# ---------------------------------------------------------------- fixtures and helpers
@pytest.fixture
def fused_kernels(monkeypatch):
    """GPU kernels (fp32, fp16) of the two fused ops in the registry, and recording plain-op stand-ins.

    Returns:
      dict op type -> list of the calls' keyword arguments, parameters by name.
    """
    registry = paddle.base.core._get_all_register_op_kernels("all")
    gpu = ["{data_type[float]; data_layout[Undefined(AnyLayout)]; place[Place(gpu:0)]; library_type[PLAIN]}",
           "{data_type[::paddle::platform::float16]; data_layout[Undefined(AnyLayout)]; place[Place(gpu:0)]; "
           "library_type[PLAIN]}"]
    fake = dict(registry, **{FFN_OP: gpu, RESIDUAL_LN_OP: gpu})
    monkeypatch.setattr(paddle.base.core, "_get_all_register_op_kernels", lambda lib="all": fake)
    calls = {FFN_OP: [], RESIDUAL_LN_OP: []}

    def residual_ln(x, residual, bias=None, ln_scale=None, ln_bias=None, dropout_rate=0.5, ln_epsilon=1e-5,
                    training=True, mode="upscale_in_train", name=None):
        calls[RESIDUAL_LN_OP].append(dict(bias=bias.name, ln_scale=ln_scale.name, ln_bias=ln_bias.name,
                                          dropout_rate=dropout_rate, ln_epsilon=ln_epsilon, mode=mode))
        out = paddle.add(F.dropout(paddle.add(x, bias), dropout_rate, training=training, mode=mode), residual)
        return F.layer_norm(out, out.shape[-1:], ln_scale, ln_bias, ln_epsilon)

    def feedforward(x, linear1_weight, linear2_weight, linear1_bias=None, linear2_bias=None, ln1_scale=None,
                    ln1_bias=None, ln2_scale=None, ln2_bias=None, dropout1_rate=0.5, dropout2_rate=0.5,
                    activation="relu", ln1_epsilon=1e-5, ln2_epsilon=1e-5, pre_layer_norm=False, training=True,
                    mode="upscale_in_train", ring_id=-1, add_residual=True, name=None):
        calls[FFN_OP].append(dict(weights=(linear1_weight.name, linear2_weight.name),
                                  biases=(linear1_bias.name, linear2_bias.name), ln2_scale=ln2_scale.name,
                                  ln2_bias=ln2_bias.name, dropout1_rate=dropout1_rate,
                                  dropout2_rate=dropout2_rate, activation=activation, ln2_epsilon=ln2_epsilon,
                                  pre_layer_norm=pre_layer_norm, add_residual=add_residual, ln1=ln1_scale))
        inner = F.linear(x, linear1_weight, linear1_bias)
        inner = F.gelu(inner, approximate=False) if activation == "gelu" else F.relu(inner)  # the kernel: erf
        inner = F.dropout(inner, dropout1_rate, training=training, mode=mode)
        out = F.dropout(F.linear(inner, linear2_weight, linear2_bias), dropout2_rate, training=training, mode=mode)
        out = paddle.add(out, x) if add_residual else out
        return F.layer_norm(out, out.shape[-1:], ln2_scale, ln2_bias, ln2_epsilon)

    monkeypatch.setattr(modeling.incubate_F, "fused_bias_dropout_residual_layer_norm", residual_ln)
    monkeypatch.setattr(modeling.incubate_F, "fused_feedforward", feedforward)
    return calls


def params(bundle):
    return [(p.name, tuple(p.shape)) for p in bundle.main_program.all_parameters()]


def op_count(program, op_type):
    return sum(op.type == op_type for block in program.blocks for op in block.ops)


def train_one_step(bundle, batch):
    """(loss, eval loss, {param: value after the step}) of one update from the seeded init."""
    exe, scope = paddle.static.Executor(paddle.CPUPlace()), paddle.static.Scope()
    with paddle.static.scope_guard(scope):
        paddle.seed(0)
        exe.run(bundle.startup_program)
        (eval_loss,) = exe.run(bundle.eval_program, feed=batch, fetch_list=[bundle.eval_fetches["loss"]])
        (loss,) = exe.run(bundle.main_program, feed=batch, fetch_list=[bundle.fetches["loss"]])
        values = {p.name: np.array(scope.find_var(p.name).get_tensor())
                  for p in bundle.main_program.all_parameters()}
    return float(loss), float(eval_loss), values


def assert_same_step(fused, plain, batch):
    loss, eval_loss, values = train_one_step(fused, batch)
    ref_loss, ref_eval_loss, ref_values = train_one_step(plain, batch)
    assert loss == pytest.approx(ref_loss, rel=1e-5) and eval_loss == pytest.approx(ref_eval_loss, rel=1e-5)
    assert values.keys() == ref_values.keys()
    for name, value in values.items():
        np.testing.assert_allclose(value, ref_values[name], rtol=1e-5, atol=1e-6, err_msg=name)


# ---------------------------------------------------------------- flags and config
def parse(*argv):
    parser = argparse.ArgumentParser()
    common.add_amp_args(parser)
    return parser.parse_args(list(argv))


def test_fusion_flags_are_off_by_default_and_reach_train_config():
    off = train_config(None, PrecisionConfig.from_args(parse()), total_steps=1, seed=0, device="gpu")
    assert not any(getattr(off, name) for name in P.FUSION_FLAGS)
    args = parse("--fuse-qkv", "--fuse-ffn", "--fuse-residual-ln", "--fuse-gemm-epilogue")
    on = train_config(None, PrecisionConfig.from_args(args), total_steps=1, seed=0, device="gpu")
    assert all(getattr(on, name) for name in P.FUSION_FLAGS)


def test_train_config_refuses_a_non_boolean_fusion_switch():
    with pytest.raises(ValueError, match="fuse_ffn must be True or False, got 'yes'"):
        train_cfg(fuse_ffn="yes")


def test_presets_leave_the_fusions_off():
    configs = pathlib.Path(__file__).resolve().parent.parent / "configs"
    text = "".join(path.read_text() for path in configs.glob("*.sh"))
    assert not {"--fuse-qkv", "--fuse-ffn", "--fuse-residual-ln", "--fuse-gemm-epilogue"} & set(text.split())


# ---------------------------------------------------------------- --fuse-qkv (runs on CPU)
def test_fuse_qkv_emits_one_projection_gemm_per_layer():
    plain = P.build_pretraining(TINY, train_cfg())
    fused = P.build_pretraining(TINY, train_cfg(fuse_qkv=True))
    assert fused.fusions == modeling.Fusions(qkv=True)
    layers = TINY.num_hidden_layers
    # Q, K, V: three matmuls per layer become one over the [H, 3H] concatenation.
    assert op_count(plain.main_program, "matmul_v2") - op_count(fused.main_program, "matmul_v2") == 2 * layers
    assert op_count(fused.main_program, "unbind") == layers
    block = fused.main_program.global_block()
    concat_inputs = [op.input("X") for op in block.ops if op.type == "concat"]
    prefix = "bert.encoder.layer.0.attention.self"
    assert [f"{prefix}.{n}.weight" for n in ("query", "key", "value")] in concat_inputs
    assert params(fused) == params(plain)


def test_fuse_qkv_trains_as_the_unfused_program():
    batch = pretraining_batch()
    assert_same_step(P.build_pretraining(NO_DROPOUT, train_cfg(fuse_qkv=True)),
                     P.build_pretraining(NO_DROPOUT, train_cfg()), batch)


def test_fused_and_unfused_checkpoints_load_into_each_other(tmp_path):
    """Every fusion flag on: the same parameter names and shapes, and a saved model loads into the other
    program and predicts the same."""
    plain = P.build_squad(NO_DROPOUT, train_cfg(), is_training=False)
    fused = P.build_squad(NO_DROPOUT, train_cfg(fuse_gemm_epilogue=True, **ALL_MODEL_FUSIONS), is_training=False)
    assert params(fused) == params(plain)
    batch = {k: v for k, v in pretraining_batch().items() if k in plain.feed_names}
    exe = paddle.static.Executor(paddle.CPUPlace())
    for source, target in ((fused, plain), (plain, fused)):
        with paddle.static.scope_guard(paddle.static.Scope()):
            exe.run(source.startup_program)
            paddle.static.save(source.main_program, str(tmp_path / "model"))
            expected = exe.run(source.main_program, feed=batch, fetch_list=list(source.fetches.values()))
        with paddle.static.scope_guard(paddle.static.Scope()):
            paddle.static.load(target.main_program, str(tmp_path / "model"), exe)
            got = exe.run(target.main_program, feed=batch, fetch_list=list(target.fetches.values()))
        for a, b in zip(got, expected):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- fall-back where no kernel exists
def test_cpu_falls_back_with_one_line_per_fusion(caplog):
    with caplog.at_level(logging.INFO):
        bundle = P.build_pretraining(TINY, train_cfg(fuse_gemm_epilogue=True, **ALL_MODEL_FUSIONS))
    assert bundle.fusions == modeling.Fusions(qkv=True)
    for flag, op_type in (("ffn", FFN_OP), ("residual-ln", RESIDUAL_LN_OP)):
        lines = [r.message for r in caplog.records if r.message.startswith(f"--fuse-{flag} requested")]
        assert lines == [f"--fuse-{flag} requested but this Paddle build has no CPU float32 kernel of "
                         f"{op_type}: using the unfused layers"]
    assert sum("--fuse-gemm-epilogue requested but" in r.message for r in caplog.records) == 1
    assert sum(r.message == "fused paths: --fuse-qkv" for r in caplog.records) == 1
    assert not bundle.build_strategy.fuse_gemm_epilogue
    assert op_count(bundle.main_program, "layer_norm") == 2 * TINY.num_hidden_layers + 2


def test_kernel_dtype_must_match_the_training_precision(fused_kernels, caplog):
    """The registry stand-in has fp32 and fp16 GPU kernels: bf16 AMP falls back, fp16 keeps the fusion."""
    requested = modeling.Fusions(ffn=True, residual_ln=True)
    assert modeling.select_fusions(requested, "gpu", "fp16") == requested
    with caplog.at_level(logging.INFO, logger="modeling"):
        assert modeling.select_fusions(requested, "gpu", "bf16") == modeling.Fusions()
    assert f"no GPU bfloat16 kernel of {FFN_OP}" in caplog.text
    assert modeling.select_fusions(requested, "cpu") == modeling.Fusions()
    assert modeling.select_fusions(modeling.Fusions(qkv=True), "gpu", "off", "fused") == modeling.Fusions()


# ---------------------------------------------------------------- --fuse-ffn, --fuse-residual-ln (GPU kernels)
def test_fused_ops_replace_the_encoder_ops_with_the_same_parameters(fused_kernels):
    bundle = P.build_pretraining(TINY, train_cfg(device="gpu", **ALL_MODEL_FUSIONS))
    assert bundle.fusions == modeling.Fusions(qkv=True, ffn=True, residual_ln=True)
    layers = TINY.num_hidden_layers
    ffn, residual_ln = fused_kernels[FFN_OP], fused_kernels[RESIDUAL_LN_OP]
    assert len(ffn) == layers and len(residual_ln) == layers  # the FFN's residual LN is inside fused_feedforward
    prefix = "bert.encoder.layer.1"
    assert ffn[1] == dict(weights=(f"{prefix}.intermediate.dense.weight", f"{prefix}.output.dense.weight"),
                          biases=(f"{prefix}.intermediate.dense.bias", f"{prefix}.output.dense.bias"),
                          ln2_scale=f"{prefix}.output.LayerNorm.weight", ln2_bias=f"{prefix}.output.LayerNorm.bias",
                          dropout1_rate=0.0, dropout2_rate=TINY.hidden_dropout_prob, activation="gelu",
                          ln2_epsilon=TINY.layer_norm_eps, pre_layer_norm=False, add_residual=True, ln1=None)
    assert residual_ln[1] == dict(bias=f"{prefix}.attention.output.dense.bias",
                                  ln_scale=f"{prefix}.attention.output.LayerNorm.weight",
                                  ln_bias=f"{prefix}.attention.output.LayerNorm.bias",
                                  dropout_rate=TINY.hidden_dropout_prob, ln_epsilon=TINY.layer_norm_eps,
                                  mode="upscale_in_train")
    assert params(bundle) == params(P.build_pretraining(TINY, train_cfg(device="gpu")))


def test_residual_ln_alone_fuses_both_residuals_of_each_layer(fused_kernels):
    P.build_squad(TINY, train_cfg(device="gpu", fuse_residual_ln=True))
    names = [call["ln_scale"] for call in fused_kernels[RESIDUAL_LN_OP]]
    assert names == [f"bert.encoder.layer.{i}.{part}.LayerNorm.weight"
                     for i in range(TINY.num_hidden_layers) for part in ("attention.output", "output")]
    assert not fused_kernels[FFN_OP]


def test_fused_wiring_trains_as_the_unfused_program(fused_kernels):
    """With the documented semantics in place of the kernels, the fused program computes the unfused one."""
    batch = pretraining_batch(seed=3)
    for fusions in (dict(fuse_residual_ln=True), ALL_MODEL_FUSIONS):
        assert_same_step(P.build_pretraining(NO_DROPOUT, train_cfg(device="gpu", **fusions)),
                         P.build_pretraining(NO_DROPOUT, train_cfg(device="gpu")), batch)


def test_amp_white_lists_the_fused_residual_ln_and_keeps_its_layer_norm_fp32(gpu_op_support, fused_kernels):
    from paddle.static.amp import fp16_utils
    bundle = P.build_pretraining(TINY, train_cfg(amp="fp16", device="gpu", **ALL_MODEL_FUSIONS))
    assert bundle.fusions.ffn and bundle.fusions.residual_ln
    white, _ = P._amp_op_lists(train_cfg(amp="fp16", device="gpu"), "plain", bundle.fusions)
    assert RESIDUAL_LN_OP in white
    assert RESIDUAL_LN_OP not in P._amp_op_lists(train_cfg(amp="fp16", device="gpu"), "plain")[0]

    class Op:  # what the AMP pass asks about one op
        type = RESIDUAL_LN_OP
    keep_in, keep_out = fp16_utils._keep_fp32_input, fp16_utils._keep_fp32_output
    with P._amp_keeps_fused_ln_params_fp32(bundle.fusions):
        assert [fp16_utils._keep_fp32_input(Op, n) for n in ("X", "Residual", "Bias", "LnScale", "LnBias")] == [
            False, False, False, True, True]
        assert fp16_utils._keep_fp32_output(Op, "LnVariance") and not fp16_utils._keep_fp32_output(Op, "Y")
    assert (fp16_utils._keep_fp32_input, fp16_utils._keep_fp32_output) == (keep_in, keep_out)
    assert not keep_in(Op, "LnScale")  # what Paddle 2.6 would do without it


# ---------------------------------------------------------------- --fuse-gemm-epilogue
def test_gemm_epilogue_under_amp_or_on_request_on_a_cuda_build(monkeypatch, gpu_op_support):
    monkeypatch.setattr(paddle, "is_compiled_with_cuda", lambda: True)
    assert P._build_strategy(train_cfg(device="gpu", fuse_gemm_epilogue=True), "plain").fuse_gemm_epilogue
    assert P._build_strategy(train_cfg(device="gpu", amp="fp16"), "plain").fuse_gemm_epilogue  # as before
    assert not P._build_strategy(train_cfg(device="gpu"), "plain").fuse_gemm_epilogue  # fp32, not asked
    assert not P._build_strategy(train_cfg(fuse_gemm_epilogue=True), "plain").fuse_gemm_epilogue  # device cpu
    strategy = P.build_dist_strategy(train_cfg(device="gpu", fuse_gemm_epilogue=True))
    assert strategy.build_strategy.fuse_gemm_epilogue
