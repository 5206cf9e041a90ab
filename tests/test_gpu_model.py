"""benchmarks.gpu_model: FLOPs and bytes against hand counts, the roofline arithmetic, full op coverage."""
import dataclasses
import types

import pytest

from benchmarks import gpu_model as G
from benchmarks.gpu_build import SYMBOLIC_BATCH, SYMBOLIC_SEQ, gpu_program_build
from modeling import BertConfig
import program as P

pytestmark = pytest.mark.usefixtures("static_graph")
SYM = (SYMBOLIC_BATCH, SYMBOLIC_SEQ)
# 1 layer, H=8, I=16, vocab 30 (padded to 32), heads 2.
TINY = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                  max_position_embeddings=16)


def build(**kwargs):
    cfg = P.TrainConfig(**dict(dict(amp="fp16", device="gpu", total_steps=4), **kwargs))
    with gpu_program_build():
        return P.build_pretraining(TINY, cfg)


def test_dim_value_maps_sentinel_products():
    assert G.dim_value(SYMBOLIC_BATCH * SYMBOLIC_SEQ, 3, 5, *SYM) == 15
    assert G.dim_value(SYMBOLIC_SEQ ** 2 * 2, 3, 5, *SYM) == 50
    assert G.dim_value(1024, 3, 5, *SYM) == 1024


def test_encoder_gemm_flops_match_the_hand_count():
    bundle = build()
    b, l = 2, 4
    costs = G.program_costs(bundle.main_program, b, l, masked=3, merge_steps=1, symbolic=SYM)
    fwd = [c for c in costs if c.op_type == "matmul_v2" and c.op_class == "GEMM"]
    # Hand count, tokens T = 8: q,k,v,out 4 x 2*T*8*8 + inter 2*T*8*16 + out 2*T*16*8 = 4096 + 2048 + 2048;
    # pooler 2*B*8*8 = 256, NSP 2*B*8*2 = 64; MLM transform 2*M*8*8 = 384, decoder 2*M*8*32 = 1536 (M = 3).
    assert sum(c.flops for c in fwd) == 4096 + 2048 + 2048 + 256 + 64 + 384 + 1536
    attn = [c for c in costs if c.op_type == "matmul_v2" and c.op_class == "attention"]
    assert attn == [] or sum(c.flops for c in attn) == 2 * (2 * b * 2 * l * l * 4)
    grads = [c for c in costs if c.op_type == "matmul_v2_grad" and c.op_class == "GEMM"]
    # Each weight GEMM's grad computes dX and dW (the decoder/embedding input too): twice the forward,
    # except where the input needs no gradient.
    assert sum(c.flops for c in grads) <= 2 * sum(c.flops for c in fwd)
    assert sum(c.flops for c in grads) >= 2 * (4096 + 2048 + 2048)


def test_flash_attention_flops():
    bundle = build(fuse_mha=True)
    costs = G.program_costs(bundle.main_program, 2, 4, 3, 1, SYM)
    flash = {c.op_type: c.flops for c in costs if c.op_type.startswith("flash_attn")}
    assert flash["flash_attn"] == 4 * 2 * 2 * 4 * 4 * 4  # 4 * B * heads * L^2 * head_dim
    assert flash["flash_attn_grad"] == 2.5 * flash["flash_attn"]


def test_elementwise_bytes_are_its_inputs_and_output():
    bundle = build()
    block = bundle.main_program.global_block()
    ctx = G.ShapeContext(2, 4, 3, G.masked_position_vars(bundle.main_program), SYM)
    # the first add of the embeddings (word + token type): two fp32 [B, L, H] in, one out (AMP O1 keeps
    # the lookups fp32); then the FFN's residual add, in fp16
    op = next(o for o in block.ops if o.type == "elementwise_add")
    assert G.op_bytes(op, block, ctx) == 3 * 2 * 4 * 8 * 4
    residual = [o for o in block.ops if o.type == "elementwise_add" and all(
        ctx.shape(block, o.input(s)[0]) == (2, 4, 8) for s in ("X", "Y"))][-1]
    assert G.op_bytes(residual, block, ctx) == 3 * 2 * 4 * 8 * 2


def test_roofline_takes_the_slowest_of_compute_memory_and_launch():
    hw = G.Hardware(tensor_tflops=100, gemm_efficiency=0.5, mem_gbps=1000, mem_efficiency=0.5, launch_us=1)
    gemm = G.OpCost("matmul_v2", "GEMM", flops=1e12, bytes=1e6, engine="tensor")
    assert G.op_seconds(gemm, hw) == pytest.approx(1e12 / 50e12)
    stream = G.OpCost("elementwise_add", "elementwise/bias/activation", flops=1e6, bytes=1e9, engine="vector")
    assert G.op_seconds(stream, hw) == pytest.approx(1e9 / 500e9)
    tiny = G.OpCost("fill_constant", "bookkeeping", flops=0, bytes=4, engine="vector")
    assert G.op_seconds(tiny, hw) == pytest.approx(1e-6)
    assert G.op_seconds(dataclasses.replace(gemm, fused_away=True), hw) == 0.0
    assert G.allreduce_seconds(8e9, 8, G.Hardware(allreduce_gbps=100)) == pytest.approx(2 * 7 / 8 * 8e9 / 100e9)


def test_every_op_is_counted_and_unknown_types_are_listed():
    bundle = build(gradient_merge_steps=4)
    ops = [op for block in bundle.main_program.blocks for op in block.ops]
    costs = G.program_costs(bundle.main_program, 2, 4, 3, 4, SYM)
    assert [c.op_type for c in costs] == [op.type for op in ops]
    rows = G.summarize(costs, G.Hardware(), 4, 0.0)
    assert sum(r["count"] for r in rows.values()) == len(ops)
    assert {c.weight for c in costs} == {1.0, 0.25}  # the optimizer block runs once per 4 micro-batches
    block = bundle.main_program.global_block()
    ctx = G.ShapeContext(2, 4, 3, frozenset(), SYM)
    odd = types.SimpleNamespace(type="my_new_op", input_names=[], output_names=[], input_arg_names=[],
                                output_arg_names=[], input=lambda s: [], output=lambda s: [])
    assert G.op_cost(odd, block, 0, ctx, 1).op_class == "no FLOP rule"


def test_fusion_flags_absent_from_trainconfig_are_reported():
    args = types.SimpleNamespace(fuse_qkv=True, fuse_ffn=False, fuse_residual_ln=False, fuse_gemm_epilogue=True)
    kwargs, notes = G.fusion_fields(args, {"fuse_gemm_epilogue"})
    assert kwargs == {"fuse_gemm_epilogue": True}
    assert notes == ["--fuse-qkv: not available in this build (program.TrainConfig has no fuse_qkv field); "
                     "modeled without it"]


def test_gemm_epilogue_pass_folds_bias_adds_and_gelu():
    bundle = build()
    folded = G.gemm_epilogue_ops(bundle.main_program)
    block = bundle.main_program.global_block()
    kinds = sorted({block.ops[i].type for _, i in folded})
    assert kinds == ["elementwise_add", "elementwise_add_grad", "gelu", "gelu_grad"]
    # the FFN's and the MLM transform's GELU, each after a bias add
    assert sum(block.ops[i].type == "gelu" for _, i in folded) == 2
