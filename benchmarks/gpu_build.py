"""Build the program a CUDA run of the GPU recipe gets, on a CPU wheel, to read its ops (never to run it).

Owns: `gpu_program_build()`, the context in which `program.build_*` produces what a CUDA build of
Paddle 2.6 would (fp16 ops where the AMP lists put them, `flash_attn` for `--fuse-mha` under AMP), and
`symbolic_feeds()`, feed shapes that let one build serve every batch size and sequence length. Does not
own the builders (`program.py`) nor what is read from the result (`benchmarks.gpu_model`).

Why each patch, and what it leaves real:
  * Paddle's AMP pass asks `fp16_lists._get_sys_unsupported_list` which ops the *current device* lacks
    fp16 kernels for; on a CPU wheel that is nearly all of them, so every op would stay fp32. The patch
    answers as a GPU build does (nothing unsupported) -- exactly what tests/test_program.py's
    `gpu_op_support` fixture does for the tests.
  * `flash_attn` has no CPU kernel, and Paddle 2.6 infers an op's output shapes through its kernel, so
    appending the op (and, in `append_backward`, its grad op) raises. The patch skips that inference for
    `flash_attn` / `flash_attn_grad` only and sets the forward outputs' shapes by the op's contract
    (out = q's [B, L, heads, head_dim], softmax_lse [B, heads, L]); the grad outputs take their forward
    variables' shapes as `append_backward` always does. The op, its inputs, attributes and dtypes are the
    ones `F.scaled_dot_product_attention` appends.
Everything is restored on exit. The programs built inside cannot run on CPU (no flash kernel).
"""
import contextlib
import dataclasses

# Op types appended without CPU shape inference (no CPU kernel); see the module docstring.
NO_CPU_KERNEL_OPS = frozenset({"flash_attn", "flash_attn_grad"})
# Sentinel sizes for the dynamic batch and sequence dims of the feeds: primes no model dimension is a
# multiple of, so every static dim of the built program factors as BATCH^a * SEQ^b * constant
# (see `benchmarks.gpu_model.dim_value`).
SYMBOLIC_BATCH, SYMBOLIC_SEQ = 1009, 1013


def symbolic_feeds(feed_specs):
    """FEED_SPECS with the dynamic dims replaced by the sentinels (dim 0 -> batch, the others -> seq).

    Args:
      feed_specs: `program.FEED_SPECS` (kind -> tuple of FeedSpec; -1 = dynamic; dim 0 is the batch,
        every other dynamic dim is the sequence length, as the specs' comments say).

    Returns:
      A dict of the same form with no -1 in the shapes.
    """
    def concrete(spec):
        shape = tuple((SYMBOLIC_BATCH if i == 0 else SYMBOLIC_SEQ) if d == -1 else d
                      for i, d in enumerate(spec.shape))
        return dataclasses.replace(spec, shape=shape)
    return {kind: tuple(concrete(s) for s in specs) for kind, specs in feed_specs.items()}


@contextlib.contextmanager
def gpu_program_build(symbolic=True):
    """Inside: `program.build_*` builds the CUDA program (see the module docstring).

    Args:
      symbolic: also give the feeds the sentinel batch/sequence sizes (`symbolic_feeds`).

    Yields:
      None. Use in static mode (`paddle.enable_static()`).
    """
    import paddle.static.amp.fp16_lists as fp16_lists
    import program

    with contextlib.ExitStack() as stack:
        stack.enter_context(_patched(fp16_lists, "_get_sys_unsupported_list",
                                     lambda dtype: ("GPU", set(), set())))
        _patch_no_kernel_ops(stack)
        if symbolic:
            stack.enter_context(_patched(program, "FEED_SPECS", symbolic_feeds(program.FEED_SPECS)))
        yield


@contextlib.contextmanager
def _patched(owner, name, value):
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


def _patch_no_kernel_ops(stack):
    import paddle.nn.functional as F
    from paddle.base import core, framework

    has_kernel = framework.Operator._has_kernel
    infer_shape, infer_var_type = core.OpDesc.infer_shape, core.OpDesc.infer_var_type
    stack.enter_context(_patched(framework.Operator, "_has_kernel",
                                 lambda self, t: t not in NO_CPU_KERNEL_OPS and has_kernel(self, t)))
    stack.enter_context(_patched(core.OpDesc, "infer_shape", lambda desc, block: (
        None if desc.type() in NO_CPU_KERNEL_OPS else infer_shape(desc, block))))
    stack.enter_context(_patched(core.OpDesc, "infer_var_type", lambda desc, block: (
        None if desc.type() in NO_CPU_KERNEL_OPS else infer_var_type(desc, block))))
    stack.enter_context(_patched(F, "scaled_dot_product_attention",
                                 _shaped_sdpa(F.scaled_dot_product_attention)))


def _shaped_sdpa(real_sdpa):
    """`F.scaled_dot_product_attention` that also sets its op's output shapes (see the docstring)."""
    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, training=True):
        out = real_sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                        is_causal=is_causal, training=training)
        block = out.block
        op = block.ops[-1]
        batch, seq, heads, _ = query.shape
        shapes = {"out": list(query.shape), "softmax": [0], "softmax_lse": [batch, heads, seq],
                  "seed_offset": [2]}
        for slot, shape in shapes.items():
            for name in op.output(slot):
                block.var(name).desc.set_shape(shape)
        return out
    return sdpa
