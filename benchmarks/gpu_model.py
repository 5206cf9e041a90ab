"""Predicted GPU throughput of the built pre-training program: a FLOP and memory-traffic roofline per op.

Owns: reading the ops of a program built by `program.build_pretraining` (as a CUDA build of Paddle 2.6
builds it, see `benchmarks.gpu_build`), their FLOPs and bytes moved for a given batch and sequence length,
the per-op roofline and the seq/s it predicts, per op class; which fusions the build has. Does not own the
program (program.py, modeling.py) nor measuring anything: compare its numbers with a GPU run's
`run_pretraining.py --benchmark` (scripts/gpu_selfcheck.sh does, check g).

The model, and what it assumes:
  * Every op of every block is counted (none dropped): an op type without a FLOP rule is costed by its
    bytes alone and listed under "no FLOP rule". Shapes come from the program's variables (one build with
    sentinel batch/sequence sizes serves every shape, see `dim_value`); the data-dependent count of
    masked positions (the MLM head gathers them) is `--masked-fraction` of the tokens.
  * Op time = max(FLOPs / (peak x efficiency), bytes / (bandwidth x memory efficiency), launch floor).
    fp16/bf16 GEMMs and flash attention use the tensor-core peak (--tensor-tflops); fp32 GEMMs TF32
    (--tf32-tflops, Paddle's default on Ampere); everything else the fp32 vector peak. The launch
    floor (--launch-us) stands for the per-op executor and launch cost, hidden behind longer kernels.
  * GEMM FLOPs are 2*M*N*K per product (matmul grads: one product per input gradient); flash attention
    forward 4*B*heads*L^2*head_dim, backward 2.5x that (it recomputes the scores). Bytes are the sizes
    of every input and output (an embedding lookup reads its rows, not the table; flash attention
    reads its dense mask once).
  * Ops in sub-blocks (gradient merge's conditional block: the optimizer update) run once per
    `gradient_merge_steps` micro-batches and are weighted by 1/k. The N-GPU all-reduce is modeled (the
    one-process build has none): a ring all-reduce of the gradients, 2(N-1)/N of their bytes at
    --allreduce-gbps NCCL bus bandwidth, once per update, not overlapped.
  * Build-strategy passes run at execution time, not in the program: under AMP (or with --fuse-gemm-epilogue)
    a CUDA build turns on `fuse_gemm_epilogue` (program.py), which folds a GEMM's bias add (and GELU) and their grads into
    the GEMM; the model removes those ops' cost then, unless --no-build-passes.
  * Phase 2 on binned data: each micro-batch has one bin's length (64, 128, ..., 512); the step time is
    averaged over --bin-weights (an assumption: Wikipedia at target length 512 with short_seq_prob 0.1
    puts most sequences in the last bin).

Usage (from the repo root; about 10 s per phase on a CPU, nothing runs on a GPU):
  python -m benchmarks.gpu_model                      # bert-large, phase 1 and phase 2, A100-80G SXM
  python -m benchmarks.gpu_model --phase 1 --fuse-mha --tensor-tflops 312 --mem-gbps 2039
  python -m benchmarks.gpu_model --fuse-qkv --fuse-ffn --fuse-residual-ln --fuse-gemm-epilogue  # "after"
"""
import zlib  # noqa: F401  -- before paddle: libpaddle's own zlib symbols crash later zlib users

import collections
import dataclasses
import math
import os
import sys

from utils.cli import ArgumentParser

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BERT_LARGE = os.path.join(REPO, "bert_configs", "bert-large-uncased.json")
# configs/pretrain_config.sh dgxa100-80g_8gpu_amp: per-GPU batch and gradient merge of each phase.
PHASES = {1: {"batch": 256, "seq": 128, "merge": 32, "reference": 694.0},
          2: {"batch": 32, "seq": 512, "merge": 128, "reference": 264.0}}
BIN_SIZE = 64
# Assumed share of phase-2 micro-batches per bin (64, 128, ..., 512); see the module docstring.
DEFAULT_BIN_WEIGHTS = (0.02, 0.02, 0.02, 0.02, 0.03, 0.03, 0.04, 0.82)
FUSION_FLAGS = ("fuse_qkv", "fuse_ffn", "fuse_residual_ln", "fuse_gemm_epilogue")

CLASSES = ("GEMM", "attention", "elementwise/bias/activation", "dropout", "LayerNorm", "softmax", "cast",
           "embedding", "loss", "data movement", "AMP loss scaling", "gradient merge", "optimizer update",
           "bookkeeping", "all-reduce (modeled)", "no FLOP rule")
_GEMM = {"matmul_v2", "matmul", "mul", "fused_gemm_epilogue", "fused_feedforward"}
_ATTENTION = {"flash_attn", "fused_attention"}
_ELEMENTWISE = {"elementwise_add", "elementwise_sub", "elementwise_mul", "elementwise_div", "elementwise_max",
                "elementwise_min", "elementwise_pow", "elementwise_mod", "scale", "gelu", "relu", "tanh",
                "sqrt", "rsqrt", "exp", "square", "sum", "fused_bias_act", "fused_dropout_add"}
_SIMPLE = {"dropout": "dropout", "layer_norm": "LayerNorm", "fused_bias_dropout_residual_layer_norm": "LayerNorm",
           "softmax": "softmax", "cast": "cast", "lookup_table_v2": "embedding", "lookup_table": "embedding",
           "softmax_with_cross_entropy": "loss", "reduce_mean": "loss", "mean": "loss", "arg_max": "loss",
           "equal": "loss", "not_equal": "loss", "reduce_sum": "loss",
           "check_finite_and_unscale": "AMP loss scaling", "update_loss_scaling": "AMP loss scaling",
           "isfinite": "AMP loss scaling", "isfinite_v2": "AMP loss scaling",
           "lamb": "optimizer update", "adamw": "optimizer update", "adam": "optimizer update",
           "squared_l2_norm": "optimizer update", "clip_by_norm": "optimizer update",
           "reshape2": "data movement", "transpose2": "data movement", "concat": "data movement",
           "split": "data movement", "slice": "data movement", "gather_nd": "data movement",
           "gather": "data movement", "expand_v2": "data movement", "unsqueeze2": "data movement",
           "squeeze2": "data movement", "masked_select": "data movement", "where_index": "data movement",
           "assign": "data movement", "stack": "data movement", "flatten_contiguous_range": "data movement",
           "fill_constant": "bookkeeping", "shape": "bookkeeping", "range": "bookkeeping",
           "increment": "bookkeeping", "size": "bookkeeping", "conditional_block": "bookkeeping",
           "logical_not": "bookkeeping", "less_than": "bookkeeping", "fill_any_like": "bookkeeping",
           "fill_zeros_like": "bookkeeping", "memcpy": "bookkeeping", "share_buffer": "bookkeeping",
           "assign_value": "bookkeeping", "select_input": "bookkeeping", "select_output": "bookkeeping"}
# Inputs a kernel reads only for their shapes (Paddle's NoNeedBufferVars), by op type.
_SHAPE_ONLY_INPUTS = {"elementwise_add_grad": {"X", "Y"}, "elementwise_sub_grad": {"X", "Y"},
                      "gather_nd_grad": {"X"}, "slice_grad": {"Input"}, "lookup_table_v2_grad": {"W"},
                      "lookup_table_v2": {"W"}, "lookup_table": {"W"}, "expand_v2_grad": {"X"},
                      "reshape2_grad": {"XShape"}, "unsqueeze2_grad": {"XShape"}, "squeeze2_grad": {"XShape"}}
# Views: the executor's in-place pass gives Out the buffer of X, so no bytes move.
_VIEWS = {"reshape2", "reshape2_grad", "unsqueeze2", "unsqueeze2_grad", "squeeze2", "squeeze2_grad",
          "flatten_contiguous_range", "flatten_contiguous_range_grad", "share_buffer"}
# Control flow: its inputs and outputs are the sub-block's, whose own ops are counted.
_CONTROL = {"conditional_block", "while", "select_input", "select_output"}
# Vector FLOPs per output element (they rarely matter: these ops are memory-bound).
_VECTOR_FLOPS = {"gelu": 10, "layer_norm": 8, "softmax": 5, "dropout": 2, "lamb": 20, "adamw": 12,
                 "softmax_with_cross_entropy": 6, "squared_l2_norm": 2}


@dataclasses.dataclass(frozen=True)
class Hardware:
    """One GPU's peaks and the sustained fractions the roofline uses (defaults: A100-80G SXM)."""
    tensor_tflops: float = 312.0     # fp16/bf16 tensor cores, dense
    tf32_tflops: float = 156.0       # fp32 GEMMs (TF32, Paddle's default on Ampere)
    fp32_tflops: float = 19.5        # CUDA cores, non-GEMM math
    mem_gbps: float = 2039.0         # HBM2e
    gemm_efficiency: float = 0.70    # large cuBLAS fp16 GEMMs sustain ~70% of peak
    attention_efficiency: float = 0.50  # flash attention at head_dim 64 (forward ~60%, backward ~40%)
    mem_efficiency: float = 0.80     # sustained fraction of HBM bandwidth for streaming kernels
    launch_us: float = 5.0           # per-op floor: executor + launch, hidden behind longer kernels
    allreduce_gbps: float = 230.0    # NCCL bus bandwidth on NVLink (DGX A100)


@dataclasses.dataclass(frozen=True)
class OpCost:
    """One op at one shape. weight: runs per micro-batch (1, or 1/k in gradient merge's block)."""
    op_type: str
    op_class: str
    flops: float
    bytes: float
    engine: str      # "tensor" | "tf32" | "vector"
    weight: float = 1.0
    fused_away: bool = False  # folded into a GEMM by the fuse_gemm_epilogue build pass


# ------------------------------------------------------------------------------------------ shapes
def dim_value(dim, batch, seq, symbolic_batch, symbolic_seq):
    """A dim of the sentinel build (`gpu_build.symbolic_feeds`) at a real batch and sequence length.

    Every static dim is symbolic_batch^a * symbolic_seq^b * c (both primes, which no model size is a
    multiple of); the result is batch^a * seq^b * c.
    """
    if dim < 0:
        raise ValueError(f"dynamic dim {dim} must be resolved before dim_value")
    value = 1
    for sentinel, real in ((symbolic_batch, batch), (symbolic_seq, seq)):
        while dim and dim % sentinel == 0:
            dim //= sentinel
            value *= real
    return value * dim


@dataclasses.dataclass(frozen=True)
class ShapeContext:
    """Reads a variable's shape at (batch, seq). Dims still dynamic after the sentinel build are the
    masked-position count for variables derived from the data-dependent gather (`masked_vars`), else
    the sequence length (the position ids `paddle.arange(seq_len)` and what follows from them)."""
    batch: int
    seq: int
    masked: int
    masked_vars: frozenset
    symbolic: tuple

    def shape(self, block, name):
        try:
            var = block._var_recursive(name)
            raw = var.shape
        except (ValueError, AttributeError, RuntimeError):  # scope / step-scope variables have no shape
            return None
        unknown = self.masked if name in self.masked_vars else self.seq
        return tuple(unknown if d == -1 else dim_value(d, self.batch, self.seq, *self.symbolic) for d in raw)

    def nbytes(self, block, name):
        from paddle.base import core
        shape = self.shape(block, name)
        if shape is None:
            return 0
        try:
            size = core.size_of_dtype(block._var_recursive(name).dtype)
        except (ValueError, RuntimeError):
            return 0
        return math.prod(shape) * size


def masked_position_vars(program):
    """Names of variables whose size depends on how many tokens are masked (forward from where_index /
    masked_select, through every op that reads one)."""
    tainted = set()
    for block in program.blocks:
        for op in block.ops:
            if op.type in ("where_index", "masked_select") or tainted.intersection(op.input_arg_names):
                tainted.update(op.output_arg_names)
    # Gradients of those variables have the same shapes.
    return frozenset(tainted | {n + "@GRAD" for n in tainted})


# ------------------------------------------------------------------------------------------ per op
def base_type(op_type):
    return op_type[:-5] if op_type.endswith("_grad") else op_type


def op_class(op, block_idx, shapes_rank4):
    """The op class of the table. shapes_rank4: the GEMM's X input has rank 4 (attention's batched
    products in the plain implementation)."""
    base = base_type(op.type)
    if op.type in _CONTROL:
        return "bookkeeping"
    if block_idx > 0 and base in ("lamb", "adamw", "adam", "squared_l2_norm", "elementwise_mul",
                                  "elementwise_div", "elementwise_add", "scale", "sqrt", "elementwise_max",
                                  "sum", "fill_constant", "assign", "cast"):
        return "optimizer update"
    if any(n.endswith("@GradientMerge") for n in op.output_arg_names):
        return "gradient merge"
    if base in _GEMM:
        return "attention" if shapes_rank4 else "GEMM"
    if base in _ATTENTION:
        return "attention"
    if base in _ELEMENTWISE:
        return "elementwise/bias/activation"
    return _SIMPLE.get(base, "no FLOP rule")


def _gemm_k(x_shape, trans_x):
    return x_shape[-2] if trans_x and len(x_shape) > 1 else x_shape[-1]


def gemm_flops(op, block, ctx):
    """2*M*N*K per product: forward one (Out), backward one per input gradient present."""
    trans_x = bool(op.attr("trans_x")) if op.has_attr("trans_x") else False
    x_shape = ctx.shape(block, op.input("X")[0])
    k = _gemm_k(x_shape, trans_x)
    if op.type.endswith("_grad"):
        dout = op.input("Out@GRAD" if "Out@GRAD" in op.input_names else "DOut")[0]
        products = sum(1 for slot in op.output_names if slot in ("X@GRAD", "Y@GRAD", "DX", "DY")
                       and op.output(slot))
        return 2.0 * math.prod(ctx.shape(block, dout)) * k * products
    return 2.0 * math.prod(ctx.shape(block, op.output("Out")[0])) * k


def flash_flops(op, block, ctx):
    """Forward 4*B*heads*L*Lk*head_dim (scores and context); backward 2.5x (recomputed scores + 4 products)."""
    b, l, h, d = ctx.shape(block, op.input("q")[0])
    lk = ctx.shape(block, op.input("k")[0])[1]
    fwd = 4.0 * b * h * l * lk * d
    return fwd * 2.5 if op.type.endswith("_grad") else fwd


def fused_weight_flops(op, block, ctx):
    """Fused ops carrying their own weights (fused_attention, fused_feedforward): 2 * tokens * weight
    elements per GEMM, x2 for the grad op; fused_attention adds 4*B*L^2*H for scores and context."""
    x = ctx.shape(block, op.input("X")[0])
    tokens = math.prod(x[:-1])
    weights = sum(math.prod(ctx.shape(block, n)) for slot in op.input_names
                  if slot.endswith("W") or slot.endswith("Weight") for n in op.input(slot))
    flops = 2.0 * tokens * weights
    if base_type(op.type) == "fused_attention":
        flops += 4.0 * x[0] * x[1] * x[1] * x[-1] * (2.5 if op.type.endswith("_grad") else 1.0)
    return flops * (2.0 if op.type.endswith("_grad") else 1.0)


def op_bytes(op, block, ctx):
    """Bytes read and written: every input and output variable once per slot use, except inputs read
    only for their shape (`_SHAPE_ONLY_INPUTS`), views (`_VIEWS`: 0) and control ops (`_CONTROL`: 0). An
    embedding lookup reads its rows (its output's size), not the table; a reshape's XShape is metadata."""
    if op.type in _VIEWS or op.type in _CONTROL:
        return 0.0
    skip = _SHAPE_ONLY_INPUTS.get(op.type, set())
    total = sum(ctx.nbytes(block, n) for slot in op.input_names if slot not in skip for n in op.input(slot))
    total += sum(ctx.nbytes(block, n) for slot in op.output_names if slot != "XShape"
                 for n in op.output(slot))
    if op.type in ("lookup_table_v2", "lookup_table"):
        total += sum(ctx.nbytes(block, n) for n in op.output("Out"))  # the rows read
    return float(total)


def op_cost(op, block, block_idx, ctx, merge_steps):
    """OpCost of one op at ctx's shape."""
    base = base_type(op.type)
    x_rank4 = False
    if base in _GEMM and "X" in op.input_names and op.input("X"):
        x_rank4 = len(ctx.shape(block, op.input("X")[0])) == 4
    cls = op_class(op, block_idx, x_rank4)
    engine, flops = "vector", 0.0
    if base in ("matmul_v2", "matmul", "mul", "fused_gemm_epilogue"):
        flops = gemm_flops(op, block, ctx)
        engine = "tensor" if _low_precision(block, op.output_arg_names) else "tf32"
    elif base == "flash_attn":
        flops, engine = flash_flops(op, block, ctx), "tensor"
    elif base in ("fused_attention", "fused_feedforward"):
        flops = fused_weight_flops(op, block, ctx)
        engine = "tensor" if _low_precision(block, op.output_arg_names) else "tf32"
    else:
        out = max((ctx.nbytes(block, n) and math.prod(ctx.shape(block, n)) for n in op.output_arg_names),
                  default=0)
        flops = float(out) * _VECTOR_FLOPS.get(base, 1)
    weight = 1.0 / merge_steps if block_idx > 0 else 1.0
    return OpCost(op.type, cls, flops, op_bytes(op, block, ctx), engine, weight)


def _low_precision(block, names):
    import paddle
    for name in names:
        try:
            if block._var_recursive(name).dtype in (paddle.float16, paddle.bfloat16):
                return True
        except ValueError:
            continue
    return False


# ------------------------------------------------------------------------------------------ build passes
def gemm_epilogue_ops(program):
    """Indexes (block, op) that Paddle's fuse_gemm_epilogue pass folds into a GEMM: the bias add after
    a matmul_v2 with a 2-D weight, the GELU/ReLU after that add, and the grads of both."""
    block = program.global_block()
    gemm_out = {op.output("Out")[0] for op in block.ops if op.type == "matmul_v2"
                and len(block._var_recursive(op.input("Y")[0]).shape) == 2}
    folded, add_outs = set(), set()
    for i, op in enumerate(block.ops):
        if op.type == "elementwise_add" and op.input("X")[0] in gemm_out and \
                len(block._var_recursive(op.input("Y")[0]).shape) == 1:
            folded.add(i)
            add_outs.add(op.output("Out")[0])
        elif op.type in ("gelu", "relu") and op.input("X")[0] in add_outs:
            folded.add(i)
    for i, op in enumerate(block.ops):
        if op.type == "elementwise_add_grad" and op.input("Out@GRAD")[0].replace("@GRAD", "") in add_outs:
            folded.add(i)
        elif op.type in ("gelu_grad", "relu_grad") and op.input("X")[0] in add_outs:
            folded.add(i)
    return {(0, i) for i in folded}


# ------------------------------------------------------------------------------------------ the model
def program_costs(program, batch, seq, masked, merge_steps, symbolic, folded=frozenset()):
    """OpCost of every op of every block of `program` at (batch, seq).

    Args:
      program: a Program built inside `gpu_build.gpu_program_build()` (sentinel dims `symbolic`).
      batch, seq: the micro-batch's sequences and length; masked: masked positions in it.
      merge_steps: gradient merge k (ops of sub-blocks run once per k micro-batches).
      symbolic: (symbolic_batch, symbolic_seq) of the build.
      folded: (block, op index) pairs a build pass folds away (`gemm_epilogue_ops`).

    Returns:
      list of OpCost, one per op, in program order.
    """
    ctx = ShapeContext(batch, seq, masked, masked_position_vars(program), tuple(symbolic))
    costs = []
    for b, block in enumerate(program.blocks):
        for i, op in enumerate(block.ops):
            cost = op_cost(op, block, b, ctx, merge_steps)
            costs.append(dataclasses.replace(cost, fused_away=(b, i) in folded))
    return costs


def op_seconds(cost, hw):
    """Roofline time of one run of the op: max(compute, memory, launch floor); 0 if fused away."""
    if cost.fused_away:
        return 0.0
    peak = {"tensor": hw.tensor_tflops * (hw.attention_efficiency if cost.op_class == "attention"
                                          else hw.gemm_efficiency),
            "tf32": hw.tf32_tflops * hw.gemm_efficiency, "vector": hw.fp32_tflops}[cost.engine] * 1e12
    compute = cost.flops / peak
    memory = cost.bytes / (hw.mem_gbps * 1e9 * hw.mem_efficiency)
    return max(compute, memory, hw.launch_us * 1e-6)


def allreduce_seconds(grad_bytes, gpus, hw):
    """Ring all-reduce of grad_bytes over `gpus` GPUs at the NCCL bus bandwidth (0 for one GPU)."""
    if gpus <= 1:
        return 0.0
    return 2.0 * (gpus - 1) / gpus * grad_bytes / (hw.allreduce_gbps * 1e9)


def gradient_bytes(program):
    """Bytes of the gradients the all-reduce sums: one per trainable parameter, fp32 under O1
    (fleet all-reduces the merged fp32 gradients), the parameter's dtype otherwise."""
    from paddle.base import core
    return sum(math.prod(p.shape) * core.size_of_dtype(p.dtype) for p in program.all_parameters()
               if p.trainable)


def summarize(costs, hw, merge_steps, allreduce_s):
    """Per class: count, GFLOP, GB, ms per micro-batch (weighted by runs per micro-batch)."""
    rows = {c: {"count": 0, "gflop": 0.0, "gb": 0.0, "ms": 0.0} for c in CLASSES}
    for cost in costs:
        row = rows[cost.op_class]
        row["count"] += 1
        if cost.fused_away:  # folded into its GEMM: counted as an op of the program, costs nothing
            continue
        row["gflop"] += cost.flops * cost.weight / 1e9
        row["gb"] += cost.bytes * cost.weight / 1e9
        row["ms"] += op_seconds(cost, hw) * cost.weight * 1e3
    if allreduce_s:
        rows["all-reduce (modeled)"].update(count=1, ms=allreduce_s / merge_steps * 1e3)
    return rows


def step_ms(rows):
    return sum(r["ms"] for r in rows.values())


# ------------------------------------------------------------------------------------------ building
def fusion_fields(args, field_names):
    """TrainConfig kwargs of the fusion flags asked for, and a note per flag this build lacks.

    Args:
      args: parsed flags (fuse_qkv, fuse_ffn, fuse_residual_ln, fuse_gemm_epilogue: bool).
      field_names: the names of `program.TrainConfig`'s fields.

    Returns:
      (dict field -> True for the flags asked for that TrainConfig has, list of str notes for the others).
    """
    kwargs, notes = {}, []
    for name in FUSION_FLAGS:
        if not getattr(args, name):
            continue
        if name in field_names:
            kwargs[name] = True
        else:
            notes.append(f"--{name.replace('_', '-')}: not available in this build "
                         f"(program.TrainConfig has no {name} field); modeled without it")
    return kwargs, notes


def build_phase(model_cfg, phase, args):
    """(bundle, TrainConfig, notes) of the GPU recipe's pre-training program for `phase`, built as a
    CUDA build would (see benchmarks.gpu_build)."""
    import paddle
    import program
    from benchmarks.gpu_build import gpu_program_build

    spec = PHASES[phase]
    fields, notes = fusion_fields(args, {f.name for f in dataclasses.fields(program.TrainConfig)})
    train_cfg = program.TrainConfig(
        optimizer="Lamb", learning_rate=6e-3 if phase == 1 else 4e-3, total_steps=100, warmup_steps=10,
        amp="fp16", use_dynamic_loss_scaling=True, scale_loss=2.0 ** 20, device="gpu",
        fuse_mha=args.fuse_mha, gradient_merge_steps=spec["merge"], **fields)
    paddle.enable_static()
    with gpu_program_build():
        bundle = program.build_pretraining(model_cfg, train_cfg)
    return bundle, train_cfg, notes


def cuda_build_passes(bundle, train_cfg):
    """The build-strategy fusions a CUDA build applies when it runs the program: {name: on?}.

    The CPU wheel leaves `fuse_gemm_epilogue` off (program.py turns it on only on a CUDA build, under AMP or
    with --fuse-gemm-epilogue): built here, it counts as on when a CUDA build would apply it; the rest is read
    off the bundle's BuildStrategy.
    """
    import paddle
    build = bundle.build_strategy
    gemm_epilogue = bool(getattr(build, "fuse_gemm_epilogue", False)) or (
        (bool(getattr(train_cfg, "fuse_gemm_epilogue", False)) or train_cfg.amp != "off")
        and not paddle.is_compiled_with_cuda()
        and hasattr(build, "fuse_gemm_epilogue"))
    return {"fuse_gemm_epilogue": gemm_epilogue,
            "enable_addto": bool(getattr(build, "enable_addto", False)),
            "fuse_all_reduce_ops": bool(getattr(build, "fuse_all_reduce_ops", False)),
            "fuse_dot_product_attention": bool(getattr(build, "fuse_dot_product_attention", False))}


def fusions_present(bundle, passes, folded):
    """Lines describing the fusions of the built program and of the build strategy."""
    block = bundle.main_program.global_block()
    types = collections.Counter(op.type for b in bundle.main_program.blocks for op in b.ops)
    fused = {t: n for t, n in sorted(types.items()) if t.startswith("fused_") or t.startswith("flash_attn")}
    weight_gemms = sum(1 for op in block.ops if op.type in ("matmul_v2", "fused_gemm_epilogue")
                       and op.input("Y") and op.input("Y")[0].startswith("bert.encoder.layer.0."))
    return [f"attention implementation: {bundle.attention_impl}",
            "fused ops in the program: " + (", ".join(f"{t} x{n}" for t, n in fused.items()) or "none"),
            f"weight GEMMs reading layer 0's parameters (forward): {weight_gemms} (6 = q, k, v, out, "
            f"intermediate, output unfused)",
            f"ops the fuse_gemm_epilogue pass folds into their GEMM (modeled): {folded}",
            "build-strategy passes a CUDA run applies: " + ", ".join(
                f"{k}={'on' if v else 'off'}" for k, v in passes.items())]


# ------------------------------------------------------------------------------------------ predicting
def predict_phase(bundle, hw, phase, args, passes):
    """Per-class rows (weighted over bins for phase 2) and the micro-batch time, in ms."""
    from benchmarks.gpu_build import SYMBOLIC_BATCH, SYMBOLIC_SEQ

    spec = PHASES[phase]
    program = bundle.main_program
    folded = gemm_epilogue_ops(program) if passes["fuse_gemm_epilogue"] and args.build_passes else frozenset()
    lengths = [spec["seq"]] if phase == 1 else [BIN_SIZE * (i + 1) for i in range(len(args.bin_weights))]
    weights = [1.0] if phase == 1 else list(args.bin_weights)
    ar = allreduce_seconds(gradient_bytes(program), args.gpus, hw)
    total = {c: {"count": 0, "gflop": 0.0, "gb": 0.0, "ms": 0.0} for c in CLASSES}
    per_length = {}
    for seq, w in zip(lengths, weights):
        masked = round(args.masked_fraction * spec["batch"] * seq)
        costs = program_costs(program, spec["batch"], seq, masked, spec["merge"],
                              (SYMBOLIC_BATCH, SYMBOLIC_SEQ), folded)
        rows = summarize(costs, hw, spec["merge"], ar)
        per_length[seq] = step_ms(rows)
        for c, row in rows.items():
            total[c]["count"] = row["count"]
            for key in ("gflop", "gb", "ms"):
                total[c][key] += w * row[key]
    unknown = sorted({c.op_type for c in costs if c.op_class == "no FLOP rule"})
    return total, per_length, unknown


def seq_per_s(batch, ms):
    return batch / (ms / 1e3)


def print_phase(phase, rows, per_length, unknown, args, notes, fusion_lines):
    spec = PHASES[phase]
    ms = step_ms(rows)
    one_gpu = seq_per_s(spec["batch"], ms - rows["all-reduce (modeled)"]["ms"])
    many = seq_per_s(spec["batch"], ms) * args.gpus
    shape = (f"seq {spec['seq']}" if phase == 1 else
             "binned, lengths " + ", ".join(f"{L}:{w:g}" for L, w in zip(per_length, args.bin_weights)))
    print(f"\nphase {phase}: bert-large, micro-batch {spec['batch']} x {shape}, gradient merge "
          f"{spec['merge']}, AMP O1 fp16, LAMB")
    for line in fusion_lines + notes:
        print(f"  {line}")
    print(f"  {'op class':<30}{'ops':>6}{'GFLOP':>10}{'GB':>9}{'ms':>9}{'share':>8}")
    for c in CLASSES:
        r = rows[c]
        if r["count"]:
            print(f"  {c:<30}{r['count']:>6}{r['gflop']:>10.1f}{r['gb']:>9.2f}{r['ms']:>9.2f}"
                  f"{r['ms'] / ms:>8.1%}")
    print(f"  {'total per micro-batch':<30}{'':>6}{sum(r['gflop'] for r in rows.values()):>10.1f}"
          f"{sum(r['gb'] for r in rows.values()):>9.2f}{ms:>9.2f}")
    if unknown:
        print("  no FLOP rule (costed by bytes only): " + ", ".join(unknown))
    if phase == 2:
        print("  per bin length: " + ", ".join(f"{L}: {seq_per_s(spec['batch'], t):.0f} seq/s"
                                              for L, t in per_length.items()))
    print(f"  predicted: {one_gpu:.0f} seq/s on 1 GPU, {many:.0f} seq/s on {args.gpus} GPUs "
          f"(NVIDIA reference, 1 GPU: {spec['reference']:.0f}; ratio {one_gpu / spec['reference']:.2f})")
    return {"seq_per_s_1gpu": one_gpu, f"seq_per_s_{args.gpus}gpu": many, "ms_per_micro_batch": ms,
            "per_length_ms": per_length, "classes": rows, "no_flop_rule": unknown}


# ------------------------------------------------------------------------------------------ CLI
def _bin_weights(text):
    values = tuple(float(v) for v in text.split(","))
    if not values or any(v < 0 for v in values) or not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise ValueError(f"--bin-weights must be non-negative numbers summing to 1, got {text!r}")
    return values


def parse_args(argv):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--phase", type=int, choices=(1, 2), action="append",
                   help="phase to model (repeatable; default both)")
    p.add_argument("--bert-config", default=BERT_LARGE, help="model config JSON")
    p.add_argument("--gpus", type=int, default=8, help="data-parallel GPUs for the multi-GPU figure")
    p.add_argument("--fuse-mha", type=lambda s: s.lower() in ("1", "true", "yes"), default=True,
                   nargs="?", const=True, help="fused attention as the dgxa100 amp preset (true/false)")
    for name in FUSION_FLAGS:
        p.add_argument("--" + name.replace("_", "-"), action="store_true",
                       help=f"build with TrainConfig.{name} (when this build has it)")
    hw = Hardware()
    for field in dataclasses.fields(Hardware):
        p.add_argument("--" + field.name.replace("_", "-"), type=float, default=getattr(hw, field.name))
    p.add_argument("--no-build-passes", dest="build_passes", action="store_false",
                   help="do not model the CUDA build-strategy fusion (fuse_gemm_epilogue)")
    p.add_argument("--masked-fraction", type=float, default=0.15, help="masked tokens per token (MLM)")
    p.add_argument("--bin-weights", type=_bin_weights, default=DEFAULT_BIN_WEIGHTS,
                   help="phase 2: share of micro-batches per 64-token bin, comma-separated, summing to 1 "
                        "(default: %s)" % ",".join(map(str, DEFAULT_BIN_WEIGHTS)))
    args = p.parse_args(argv)
    args.phase = sorted(set(args.phase or (1, 2)))
    if args.gpus < 1:
        p.error(f"--gpus must be >= 1, got {args.gpus}")
    for field in dataclasses.fields(Hardware):
        if not getattr(args, field.name) > 0:
            p.error(f"--{field.name.replace('_', '-')} must be > 0")
    return args


def main(argv=None):
    """Print the per-class table and predicted seq/s of each phase; return {phase: results}."""
    import logging
    logging.getLogger("modeling").setLevel(logging.WARNING)
    logging.getLogger("program").setLevel(logging.WARNING)
    import modeling

    args = parse_args(sys.argv[1:] if argv is None else argv)
    hw = Hardware(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Hardware)})
    model_cfg = modeling.BertConfig.from_json_file(args.bert_config)
    print(f"GPU model: {hw.tensor_tflops:g} TFLOP/s fp16 tensor x {hw.gemm_efficiency:g} (GEMM), "
          f"x {hw.attention_efficiency:g} (attention); TF32 {hw.tf32_tflops:g}; fp32 {hw.fp32_tflops:g}; "
          f"{hw.mem_gbps:g} GB/s x {hw.mem_efficiency:g}; launch floor {hw.launch_us:g} us/op; all-reduce "
          f"{hw.allreduce_gbps:g} GB/s")
    results = {}
    for phase in args.phase:
        bundle, train_cfg, notes = build_phase(model_cfg, phase, args)
        passes = cuda_build_passes(bundle, train_cfg)
        rows, per_length, unknown = predict_phase(bundle, hw, phase, args, passes)
        results[phase] = print_phase(phase, rows, per_length, unknown, args, notes,
                                     fusions_present(bundle, passes, len(gemm_epilogue_ops(bundle.main_program))
                                                     if passes["fuse_gemm_epilogue"] and args.build_passes else 0))
    return results


if __name__ == "__main__":
    main()
