"""Rewrites of a built training program: every pass that edits its ops after the optimizer's `minimize`.

Owns:
  * `skip_nonfinite_updates`: the graph side of the non-finite policy (`utils.nonfinite` states all of
    it): one flag per block, fed to the optimizer ops' `SkipUpdate`, that turns an update whose gradients
    hold NaN/inf into a no-op; `clipped_global_norm` finds the clip's global norm the flag tests.
  * `count_nonfinite_updates`: two persistable on-device counters of the updates that were skipped.
  * `use_cpu_lamb_kernel`: the swap of Paddle's `lamb` ops for the fused CPU kernel of `cpu_kernels`.
  * `use_cpu_training_kernels`: the swap of the bias-add and LayerNorm gradient ops for the
    multi-threaded CPU kernels of `cpu_kernels`.
  * `use_cpu_dropout_kernel`: the swap of training dropouts for the CPU kernel (masks from a counter-based
    generator seeded by one per-step draw of Paddle's global generator).
  * the op-slot helpers these passes share (`UPDATE_OPS`, a custom op's "@OPTIONAL" input slots).

Does not own: building the optimizer, its weight-decay rule or gradient clipping (`optimizer.py`);
wrapping it (AMP, gradient merge, fleet, `gloo_data_parallel`) or deciding which passes a build runs
and in which order (`program.py`); the kernel itself (`cpu_kernels`); what skipped updates mean for a
run -- the warning, the limit, the exit status, refusing to save NaN parameters (`utils.nonfinite`).

Why rewrite after `minimize` rather than build differently: a pass over the finished program composes
with every wrapper (gradient merge's conditional sub-block, fleet, the CPU all-reduce) without knowing
them, and the optimizer state stays exactly Paddle's (same accumulators, same names), so checkpoints
move freely between rewritten and plain programs, CPU and GPU.
"""
import logging
import math

import paddle

logger = logging.getLogger(__name__)


def _slot_name(op, name):
    """The op's own name for input slot `name`: a custom op's optional input is declared as
    "<name>@OPTIONAL" (Paddle's custom-op convention), so `SkipUpdate` of `bert_lamb_cpu` is
    "SkipUpdate@OPTIONAL"; None when the op has neither."""
    for candidate in (name, f"{name}@OPTIONAL"):
        if candidate in op.input_names:
            return candidate
    return None


def _slot(op, name):
    """The variable names in input slot `name` of `op` ([] when the op has no such slot or it is unset)."""
    slot = _slot_name(op, name)
    return op.input(slot) if slot else []


# Optimizer ops whose `SkipUpdate` input leaves parameter, moments and beta powers untouched.
UPDATE_OPS = ("lamb", "adamw", "adam", "bert_lamb_cpu")


def clipped_global_norm(block, update_ops):
    """The global-norm variable of `ClipGradByGlobalNorm` when it scales every gradient `update_ops` read.

    The clip, as Paddle 2.6 builds it in the block of the updates: `sqrt(sum of squared_l2_norm)` ->
    `elementwise_max(clip, norm)` -> `elementwise_div(clip, that)` = scale -> `elementwise_mul(g, scale)`
    writing each gradient in place. Returns None unless every gradient's last writer before the updates
    is such a multiply by one and the same scale (then the flag falls back to checking the gradients).
    """
    first = min(block.ops.index(op) for op in update_ops)
    writer = {}
    for op in block.ops[:first]:
        for name in op.output_arg_names:
            writer[name] = op

    def produced_by(name, op_type):
        op = writer.get(name)
        return op if op is not None and op.type == op_type else None

    scales = set()
    for op in update_ops:
        grad = op.input("Grad")[0]
        mul = produced_by(grad, "elementwise_mul")
        if mul is None or mul.input("X") != [grad]:
            return None
        scales.add(mul.input("Y")[0])
    if len(scales) != 1:
        return None
    div = produced_by(scales.pop(), "elementwise_div")
    biggest = div and produced_by(div.input("Y")[0], "elementwise_max")
    if not biggest:
        return None
    for name in biggest.input("X") + biggest.input("Y"):
        if produced_by(name, "sqrt") is not None:
            return block._var_recursive(name)
    return None


def skip_nonfinite_updates(program):
    """Make every optimizer update of `program` a no-op when any of its gradients holds NaN or inf.

    Why: without a loss scaler (fp32 and bf16 training) nothing checks the gradients, so a single bad
    batch writes NaN into every parameter and moment, and the run is lost. This adds, in each block that
    holds optimizer ops (the gradient-merge update lives in a conditional sub-block), one flag fed to
    their `SkipUpdate` input, as Paddle's fp16 loss scaler does. Run after `minimize`, so it composes
    with every wrapper (gradient merge, fleet, the CPU all-reduce) without knowing them.

    The flag: when every gradient those ops read was scaled by `ClipGradByGlobalNorm` (the usual case),
    it is `not isfinite(global norm)`, a test of one number the clip has already computed -- a NaN or inf
    in any gradient makes the norm NaN or inf, and the clip's scale then spreads it to all of them. Only
    when the norm itself overflows (gradients near 1e19) does it skip an update whose gradients were
    finite, and such an update would have been a zero step anyway (the clip scale is 0). Otherwise one
    `check_finite_and_unscale` over the gradients (divided by 1: exact), which reads and writes every
    gradient once more: about 2 % of a bert-base CPU step.

    Args:
      program: a training program after `minimize`.

    Returns:
      int, the number of optimizer ops guarded (0 when the program already has a finite check, i.e. it
      was built with fp16 loss scaling).
    """
    blocks = program.blocks
    if any(op.type == "check_finite_and_unscale" for block in blocks for op in block.ops):
        return 0
    guarded = 0
    for block in blocks:
        ops = [op for op in block.ops if op.type in UPDATE_OPS and not _slot(op, "SkipUpdate")]
        if not ops:
            continue
        grads = [block._var_recursive(op.input("Grad")[0]) for op in ops]
        first = min(block.ops.index(op) for op in ops)
        role = ops[0].attr("op_role")
        found = block.create_var(name=paddle.utils.unique_name.generate("nonfinite_found"),
                                 shape=[1], dtype="bool")
        norm = clipped_global_norm(block, ops)
        if norm is not None:
            finite = block.create_var(name=paddle.utils.unique_name.generate("nonfinite_norm_finite"),
                                      shape=norm.shape, dtype="bool")
            block._insert_op(first, type="isfinite_v2", inputs={"X": [norm]}, outputs={"Out": [finite]},
                             attrs={"op_role": role})
            block._insert_op(first + 1, type="logical_not", inputs={"X": [finite]}, outputs={"Out": [found]},
                             attrs={"op_role": role})
        else:
            one = block.create_var(name=paddle.utils.unique_name.generate("nonfinite_check_one"),
                                   shape=[1], dtype="float32")
            block._insert_op(first, type="fill_constant", outputs={"Out": [one]},
                             attrs={"shape": [1], "dtype": one.dtype, "value": 1.0, "op_role": role})
            block._insert_op(first + 1, type="check_finite_and_unscale", inputs={"X": grads, "Scale": [one]},
                             outputs={"Out": grads, "FoundInfinite": [found]}, attrs={"op_role": role})
        for op in ops:
            op.desc.set_input(_slot_name(op, "SkipUpdate"), [found.name])
        guarded += len(ops)
    program._sync_with_cpp()
    return guarded


def count_nonfinite_updates(program, startup, prefix="train_metrics"):
    """Count skipped updates on the device: `<prefix>.nonfinite_total` and `<prefix>.nonfinite_consecutive`.

    Why on the device: reading a flag after every update would cost a host synchronisation per update on
    a GPU; these two persistable counters are read only when the run logs. Both are updated where the
    optimizer ops read their `SkipUpdate` flag (set by `skip_nonfinite_updates`, or by Paddle's fp16 loss
    scaler, which skips overflowing steps the same way), so they count the updates that were really
    skipped, identically on every rank (the flag is computed from the all-reduced gradients).

    Args:
      program: a training program after `minimize` and `skip_nonfinite_updates`.
      startup: its startup program (the counters start at 0).
      prefix: name prefix of the two float32 [1] counters.

    Returns:
      (total name, consecutive name), or None when no optimizer op has a `SkipUpdate` flag.
    """
    found = [(block, op) for block in program.blocks for op in block.ops
             if op.type in UPDATE_OPS and _slot(op, "SkipUpdate")]
    if not found:
        return None
    block, first = found[0]
    flag = block._var_recursive(_slot(first, "SkipUpdate")[0])
    names = (f"{prefix}.nonfinite_total", f"{prefix}.nonfinite_consecutive")
    counters = []
    for name in names:
        counters.append(program.global_block().create_var(name=name, shape=[1], dtype="float32",
                                                          persistable=True))
        startup.global_block().append_op(
            type="fill_constant", outputs={"Out": [startup.global_block().create_var(
                name=name, shape=[1], dtype="float32", persistable=True)]},
            attrs={"shape": [1], "dtype": counters[-1].dtype, "value": 0.0})
    total, consecutive = counters
    index, role = block.ops.index(first), first.attr("op_role")

    def tmp(stem):
        return block.create_var(name=paddle.utils.unique_name.generate(f"{prefix}.{stem}"), shape=[1],
                                dtype="float32")

    skipped, kept, grown = tmp("skipped"), tmp("kept"), tmp("grown")
    ops = [("cast", {"X": [flag]}, {"Out": [skipped]},
            {"in_dtype": flag.dtype, "out_dtype": skipped.dtype}),
           ("elementwise_add", {"X": [total], "Y": [skipped]}, {"Out": [total]}, {"axis": -1}),
           # consecutive = (consecutive + 1) * skipped: grows on a skipped update, 0 after a good one
           ("scale", {"X": [consecutive]}, {"Out": [kept]}, {"scale": 1.0, "bias": 1.0}),
           ("elementwise_mul", {"X": [kept], "Y": [skipped]}, {"Out": [grown]}, {"axis": -1}),
           ("assign", {"X": [grown]}, {"Out": [consecutive]}, {})]
    for offset, (op_type, inputs, outputs, attrs) in enumerate(ops):
        block._insert_op(index + offset, type=op_type, inputs=inputs, outputs=outputs,
                         attrs=dict(attrs, op_role=role))
    program._sync_with_cpp()
    return names


LAMB_SLOTS_IN = ("Param", "Grad", "LearningRate", "Moment1", "Moment2", "Beta1Pow", "Beta2Pow", "SkipUpdate")
LAMB_SLOTS_OUT = ("ParamOut", "Moment1Out", "Moment2Out", "Beta1PowOut", "Beta2PowOut")
LAMB_ATTRS = ("weight_decay", "beta1", "beta2", "epsilon", "always_adapt")
# The kernel declares SkipUpdate optional, and a custom op's optional input slot is "<name>@OPTIONAL".
KERNEL_SLOTS = {"SkipUpdate": "SkipUpdate@OPTIONAL"}
# Attributes every op carries that passes (gradient merge, fleet) and the profiler read: kept on the swap.
COMMON_ATTRS = ("op_role", "op_role_var", "op_namescope", "op_device")


def _fp32_dense(block, name):
    var = block._var_recursive(name)
    return var.dtype == paddle.float32 and var.type == paddle.framework.core.VarDesc.VarType.LOD_TENSOR


def use_cpu_lamb_kernel(program, kernel=None):
    """Run the program's LAMB updates with the fused CPU kernel (`cpu_kernels`) instead of Paddle's `lamb`.

    Why a rewrite after `minimize`: like `skip_nonfinite_updates`, it then composes with every wrapper
    (gradient merge's conditional block, fleet, the CPU all-reduce) without knowing them, and the optimizer
    state stays exactly Paddle's (same accumulators, same names), so checkpoints move freely between this
    kernel, Paddle's CPU op and a GPU run. Only fp32 dense updates without master weights are swapped
    (the kernel's contract); anything else keeps Paddle's op.

    Args:
      program: a CPU training program after `minimize` (and after `skip_nonfinite_updates`: the
        SkipUpdate input is carried over).
      kernel: a `cpu_kernels.build.KernelStatus`; default: `lamb_kernel()` (builds on first use).

    Returns:
      int, the number of `lamb` ops swapped (0 when the kernel is unavailable: the reason was logged).
    """
    from cpu_kernels import build as cpu_kernels

    lamb_ops = [(block, op) for block in program.blocks for op in block.ops if op.type == "lamb"]
    if not lamb_ops:
        return 0
    kernel = kernel or cpu_kernels.lamb_kernel()
    if kernel.op_type is None:
        return 0
    swapped = 0
    for block, op in lamb_ops:
        if _slot(op, "MasterParam") or op.attr("multi_precision") or not all(
                _fp32_dense(block, op.input(slot)[0]) for slot in ("Param", "Grad")):
            continue
        index = block.ops.index(op)
        attrs = {name: op.attr(name) for name in LAMB_ATTRS}
        attrs.update({name: op.attr(name) for name in COMMON_ATTRS if op.has_attr(name)})
        # Variable objects, not names: the gradient-merge block reads its parent block's variables.
        inputs = {KERNEL_SLOTS.get(slot, slot): [block._var_recursive(n) for n in _slot(op, slot)]
                  for slot in LAMB_SLOTS_IN if _slot(op, slot)}
        outputs = {slot: [block._var_recursive(n) for n in op.output(slot)] for slot in LAMB_SLOTS_OUT}
        block._insert_op(index, type=kernel.op_type, inputs=inputs, outputs=outputs, attrs=attrs)
        block._remove_op(index + 1)
        swapped += 1
    program._sync_with_cpp()
    return swapped


DROPOUT_SEED_VAR = "cpu_dropout_seed"
# Largest seed the `randint` op draws (its bounds are 32-bit attributes); the kernel mixes in each op's
# stream id, so 2^31 seeds per step are plenty for masks that never repeat in practice.
DROPOUT_SEED_HIGH = 2 ** 31 - 1


def _swappable_dropout(block, op):
    """True for a training-time dropout the CPU kernel computes exactly as Paddle's op is asked to: fp32
    input, drawing from the global generator (no Seed input, no fixed seed), either implementation."""
    if op.type != "dropout" or op.attr("is_test") or op.attr("fix_seed") or _slot(op, "Seed"):
        return False
    if op.attr("dropout_implementation") not in ("upscale_in_train", "downgrade_in_infer"):
        return False
    return _fp32_dense(block, op.input("X")[0])


def dropout_implementation(program):
    """Which dropout makes `program`'s training masks: "bert_dropout_cpu" (the CPU kernel's counter-based
    generator) or "dropout" (Paddle's op), or "none" for a program without training dropout."""
    from cpu_kernels import build as cpu_kernels

    types = {op.type for block in program.blocks for op in block.ops}
    if cpu_kernels.DROPOUT_OP in types:
        return cpu_kernels.DROPOUT_OP
    return "dropout" if "dropout" in types else "none"


def use_cpu_dropout_kernel(program, kernel=None):
    """Run the program's training dropouts with the CPU kernel of `cpu_kernels` (`bert_dropout_cpu`).

    One `randint` op at the start of the program draws the step's seed from Paddle's global generator,
    as Paddle's dropout draws its own numbers: `paddle.seed` (which the pretraining loop calls before
    every micro-batch) decides every mask, so two runs from the same seed, or a resume, see the same
    masks. Each swapped op gets its own `stream` (its position among the program's dropouts), so no two
    layers share a mask. Outputs keep their names and meaning (Out, uint8 Mask), so Paddle's own
    `dropout_grad` still computes the backward pass. The masks are not the ones Paddle's generator would
    have drawn (a different generator), so a run keeps one choice: see `cpu_kernels.build` for the switch.

    Args:
      program: a CPU training program (before or after `minimize`).
      kernel: a `cpu_kernels.build.KernelStatus`; default: `lamb_kernel()` (builds on first use).

    Returns:
      int, the number of `dropout` ops swapped (0 when the kernel is unavailable: the reason was logged).
    """
    from cpu_kernels import build as cpu_kernels

    dropouts = [(block, op) for block in program.blocks for op in block.ops if _swappable_dropout(block, op)]
    if not dropouts:
        return 0
    kernel = kernel or cpu_kernels.lamb_kernel()
    if cpu_kernels.DROPOUT_OP not in kernel.ops:
        logger.info("CPU dropout: Paddle's dropout op (%s)", kernel.reason or "the kernel is not in the library")
        return 0
    main = program.global_block()
    seed = main.create_var(name=DROPOUT_SEED_VAR, shape=[1], dtype=paddle.int64, persistable=False)
    main._prepend_op(type="randint", outputs={"Out": [seed]},
                     attrs={"low": 0, "high": DROPOUT_SEED_HIGH, "shape": [1], "seed": 0,
                            "dtype": seed.dtype, "op_role": 0})
    for stream, (block, op) in enumerate(dropouts):
        index = block.ops.index(op)
        attrs = {"p": float(op.attr("dropout_prob")),
                 "upscale_in_train": op.attr("dropout_implementation") == "upscale_in_train",
                 "stream": stream}
        attrs.update({name: op.attr(name) for name in COMMON_ATTRS if op.has_attr(name)})
        inputs = {"X": [block._var_recursive(op.input("X")[0])], "Seed": [seed]}
        outputs = {slot: [block._var_recursive(op.output(slot)[0])] for slot in ("Out", "Mask")}
        block._insert_op(index, type=cpu_kernels.DROPOUT_OP, inputs=inputs, outputs=outputs, attrs=attrs)
        block._remove_op(index + 1)
    program._sync_with_cpp()
    logger.info("CPU dropout: %d training dropout op(s) run the multi-threaded kernel %s",
                len(dropouts), cpu_kernels.DROPOUT_OP)
    return len(dropouts)


def _readers(program):
    """{variable name: number of ops, in any block, that read it}."""
    counts = {}
    for block in program.blocks:
        for op in block.ops:
            for name in set(op.input_arg_names):
                counts[name] = counts.get(name, 0) + 1
    return counts


def _shape(block, name):
    """The variable's static shape as a list, -1 where a dimension is only known at run time."""
    return list(block._var_recursive(name).shape)


def _bias_add_grad_inputs(block, op, readers):
    """(inputs, outputs) of `bert_bias_add_grad_cpu` for an `elementwise_add_grad` op that is the gradient
    of `X [..., N] + Bias [N]` in fp32 with both gradients wanted, else None (the op stays Paddle's).

    Out@GRAD must have this op as its only reader: the kernel hands Out@GRAD's buffer to X@GRAD instead of
    copying it, which is only safe when nothing else reads Out@GRAD by its own name."""
    x, y, dout = (op.input(slot) for slot in ("X", "Y", "Out@GRAD"))
    dx, dy = (op.output(slot) if slot in op.output_names else [] for slot in ("X@GRAD", "Y@GRAD"))
    if not (x and y and dout and dx and dy) or not all(
            _fp32_dense(block, name[0]) for name in (x, y, dout, dx, dy)):
        return None
    x_shape, y_shape = _shape(block, x[0]), _shape(block, y[0])
    if len(y_shape) != 1 or y_shape[0] <= 0 or len(x_shape) < 2 or x_shape[-1] != y_shape[0]:
        return None
    if op.attr("axis") not in (-1, len(x_shape) - 1):
        return None
    if readers.get(dout[0], 0) != 1 or block._var_recursive(dout[0]).persistable or dout[0] in (dx[0], dy[0]):
        return None
    var = block._var_recursive
    return {"Bias": [var(y[0])], "DOut": [var(dout[0])]}, {"DX": [var(dx[0])], "DBias": [var(dy[0])]}


def _layer_norm_grad_inputs(block, op, readers):
    """(inputs, outputs) of `bert_layer_norm_grad_cpu` for a `layer_norm_grad` op in fp32 with a Scale, a
    known normalised size and all three gradients wanted, else None (the op stays Paddle's). `readers` is
    unused (the kernel writes fresh outputs, so other readers of Y@GRAD are harmless); the bias matcher's
    signature."""
    ins = {slot: op.input(slot) if slot in op.input_names else [] for slot in
           ("X", "Scale", "Mean", "Variance", "Y@GRAD")}
    outs = {slot: op.output(slot) if slot in op.output_names else [] for slot in
            ("X@GRAD", "Scale@GRAD", "Bias@GRAD")}
    if not all(ins.values()) or not all(outs.values()) or not all(
            _fp32_dense(block, names[0]) for names in (*ins.values(), *outs.values())):
        return None
    x_shape, axis = _shape(block, ins["X"][0]), op.attr("begin_norm_axis")
    normalised = x_shape[axis:] if 0 < axis < len(x_shape) else []
    scale_shape = _shape(block, ins["Scale"][0])
    if not normalised or min(normalised) <= 0 or math.prod(normalised) != math.prod(scale_shape):
        return None
    var = block._var_recursive
    slots_in = {"X": "X", "Scale": "Scale", "Mean": "Mean", "Variance": "Variance", "DY": "Y@GRAD"}
    slots_out = {"DX": "X@GRAD", "DScale": "Scale@GRAD", "DBias": "Bias@GRAD"}
    return ({ours: [var(ins[theirs][0])] for ours, theirs in slots_in.items()},
            {ours: [var(outs[theirs][0])] for ours, theirs in slots_out.items()})


def use_cpu_training_kernels(program, kernels=None):
    """Run the program's bias-add and LayerNorm gradients with the multi-threaded CPU kernels of `cpu_kernels`.

    Why: Paddle 2.6's CPU `elementwise_add_grad` (for `matmul + bias`) and `layer_norm_grad` run on one
    thread with scalar or multi-pass Eigen code; in a bert-base step on a 2-core CPU they cost about a sixth
    of the step while the second core idles. The kernels compute the same gradients (dBias and dScale as
    deterministic block sums: bit-identical for any thread count) with the same input and output
    variables, so nothing else in the program changes. A rewrite after `minimize`, like
    `use_cpu_lamb_kernel`, so it composes with gradient merge and the non-finite guard without knowing them.

    Swapped: `elementwise_add_grad` of `X [..., N] + Bias [N]` (broadcast on the last axis, both gradients
    wanted, Out@GRAD read by this op only) and `layer_norm_grad` with a Scale and all three gradients, all
    fp32 with the normalised / bias size known. Every other op (same-shape residual adds, the attention mask
    add, fp16/bf16 ops, unknown shapes) keeps Paddle's op. One log line gives the counts.

    Args:
      program: a CPU training program after `minimize`.
      kernels: a `cpu_kernels.build.GradKernels`; default: `grad_kernels()` (builds on first use).

    Returns:
      dict {Paddle op type: number swapped} ({} when the kernels are unavailable: the reason was logged).
    """
    from cpu_kernels import build as cpu_kernels

    candidates = [(block, op) for block in program.blocks for op in block.ops
                  if op.type in ("elementwise_add_grad", "layer_norm_grad")]
    if not candidates:
        return {}
    kernels = kernels or cpu_kernels.grad_kernels()
    if kernels.bias_add_grad is None:
        return {}
    plan = {"elementwise_add_grad": (kernels.bias_add_grad, _bias_add_grad_inputs, ()),
            "layer_norm_grad": (kernels.layer_norm_grad, _layer_norm_grad_inputs, ("epsilon", "begin_norm_axis"))}
    readers = _readers(program)
    swapped = {op_type: 0 for op_type in plan}
    seen = {op_type: 0 for op_type in plan}
    for block, op in candidates:
        op_type = op.type  # read now: the op's desc is freed when it is removed below
        kernel_type, match, attr_names = plan[op_type]
        seen[op_type] += 1
        slots = match(block, op, readers)
        if slots is None:
            continue
        attrs = {name: op.attr(name) for name in (*attr_names, *COMMON_ATTRS) if op.has_attr(name)}
        index = block.ops.index(op)
        # Without a sync per edit (each re-reads the whole block: ~6 s for bert-base): both edits keep the
        # Python op list and the C++ block in step, and the program is synced once below.
        block._insert_op_without_sync(index, type=kernel_type, inputs=slots[0], outputs=slots[1], attrs=attrs)
        block._remove_op(index + 1, sync=False)
        swapped[op_type] += 1
    program._sync_with_cpp()
    logger.info("CPU gradient kernels: %d of %d elementwise_add_grad ops (the fp32 bias adds) -> %s, "
                "%d of %d layer_norm_grad ops -> %s; the others keep Paddle's op", swapped["elementwise_add_grad"],
                seen["elementwise_add_grad"], kernels.bias_add_grad, swapped["layer_norm_grad"],
                seen["layer_norm_grad"], kernels.layer_norm_grad)
    return swapped
