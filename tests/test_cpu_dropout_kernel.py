"""The CPU dropout kernel (`cpu_kernels/dropout_cpu.cc`, op `bert_dropout_cpu`) and its program rewrite.

Second implementation: the mask is recomputed here in numpy from the kernel's stated generator
(SplitMix64 from a per-call key, element i -> mix64(key + (i + 1) * golden), dropped when its top 24 bits
fall below ceil(p * 2^24)), so every element of every mask is checked exactly, for any thread count the
kernel splits the work into. The outputs are checked against Paddle's definition of dropout
(upscale_in_train: X / (1 - p) where kept), and the rewritten program against `paddle.seed`.
"""
import numpy as np
import paddle
import pytest

import program_rewrites
from tiny_training import train_tiny
from cpu_kernels import build as kernels

pytestmark = pytest.mark.usefixtures("static_graph")
GOLDEN, STREAM = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xD1B54A32D192ED03)


@pytest.fixture(scope="module")
def kernel():
    status = kernels.lamb_kernel()
    if kernels.DROPOUT_OP not in status.ops:
        pytest.skip(f"the CPU kernels cannot be built here: {status.reason}")
    return status


def reference_mask(seed, stream, size, p):
    """The kernel's mask, from its generator's definition (numpy uint64 arithmetic wraps like C++'s)."""
    with np.errstate(over="ignore"):
        key = np.uint64(seed) ^ (np.uint64(stream) * STREAM)
        z = key + (np.arange(1, size + 1, dtype=np.uint64) * GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    threshold = np.uint64(np.ceil(np.float64(np.float32(p)) * 2 ** 24))
    return ((z >> np.uint64(40)) >= threshold).astype(np.uint8)


def run_kernel(x, seed, p, upscale=True, stream=0):
    """One `bert_dropout_cpu` op in a static program; returns (Out, Mask) as arrays."""
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main, startup):
        xv = paddle.static.data("x", list(x.shape), "float32")
        sv = paddle.static.data("s", [1], "int64")
        block = main.global_block()
        out = block.create_var(name="out", shape=list(x.shape), dtype="float32")
        mask = block.create_var(name="mask", shape=list(x.shape), dtype="uint8")
        block.append_op(type=kernels.DROPOUT_OP, inputs={"X": [xv], "Seed": [sv]},
                        outputs={"Out": [out], "Mask": [mask]},
                        attrs={"p": p, "upscale_in_train": upscale, "stream": stream})
    exe = paddle.static.Executor(paddle.CPUPlace())
    got = exe.run(main, feed={"x": x, "s": np.array([seed], np.int64)}, fetch_list=[out, mask],
                  scope=paddle.static.Scope())
    return np.asarray(got[0]), np.asarray(got[1])


@pytest.mark.parametrize("shape, p, stream", [
    ((8, 128, 96), 0.1, 0),           # > 2 x the per-thread minimum: split over the threads
    ((3, 7, 5), 0.1, 5),              # tiny and ragged: one thread
    ((4, 2, 33, 33), 0.5, 11),        # 4-D, half dropped
])
def test_every_mask_element_is_the_stated_generators(kernel, shape, p, stream):
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    out, mask = run_kernel(x, seed=123456789, p=p, stream=stream)
    expected = reference_mask(123456789, stream, x.size, p).reshape(shape)
    np.testing.assert_array_equal(mask, expected)
    # Paddle's upscale_in_train: kept elements are X / (1 - p), bit for bit; dropped ones 0.
    np.testing.assert_array_equal(out, np.where(expected == 1, x / np.float32(1 - p), np.float32(0)))


def test_the_share_dropped_is_p_and_seeds_and_streams_give_other_masks(kernel):
    x = np.ones((1_000_000,), np.float32)
    _, mask = run_kernel(x, seed=7, p=0.1)
    # Binomial(1e6, 0.1): standard deviation 3e-4 of the share; 5 sigma.
    assert abs(1.0 - mask.mean() - 0.1) < 1.5e-3
    _, other_seed = run_kernel(x, seed=8, p=0.1)
    _, other_stream = run_kernel(x, seed=7, p=0.1, stream=1)
    for other in (other_seed, other_stream):
        # Independent masks agree where both keep or both drop: 0.9^2 + 0.1^2 = 0.82 of the elements.
        assert abs((other == mask).mean() - 0.82) < 3e-3


def test_edge_probabilities_and_downgrade_in_infer(kernel):
    x = np.random.default_rng(2).standard_normal((50, 40)).astype(np.float32)
    out, mask = run_kernel(x, seed=3, p=0.0)
    assert mask.all() and np.array_equal(out, x)
    out, mask = run_kernel(x, seed=3, p=1.0)
    assert not mask.any() and not out.any()
    out, mask = run_kernel(x, seed=3, p=0.3, upscale=False)
    np.testing.assert_array_equal(out, np.where(mask == 1, x, np.float32(0)))  # no scaling in training


def _train(seed, swap=True):
    run = train_tiny(steps=2, seed_each_step=seed, cpu_dropout_kernel=swap)
    return run.bundle, run.losses


def test_the_rewrite_swaps_every_training_dropout_and_paddle_seed_decides_the_masks(kernel, caplog):
    with caplog.at_level("INFO", logger="program_rewrites"):
        bundle, losses = _train(seed=10)
    assert "CPU dropout: 7 training dropout op(s) run the multi-threaded kernel bert_dropout_cpu" in caplog.text
    types = [op.type for block in bundle.main_program.blocks for op in block.ops]
    # 2 layers x (attention probs, attention output, FFN output) + embeddings = 7 dropouts.
    assert types.count(kernels.DROPOUT_OP) == 7 and "dropout" not in types
    assert types.count("dropout_grad") == 7 and types.count("randint") == 1
    streams = [op.attr("stream") for op in bundle.main_program.global_block().ops
               if op.type == kernels.DROPOUT_OP]
    assert sorted(streams) == list(range(7))
    eval_types = [op.type for op in bundle.eval_program.global_block().ops]
    assert kernels.DROPOUT_OP not in eval_types and "randint" not in eval_types
    assert _train(seed=10)[1] == losses                    # same seeds: the same training, bit for bit
    assert _train(seed=99)[1][0] != losses[0]              # another seed: other masks, another loss
    plain = _train(seed=10, swap=False)[1]                 # Paddle's dropout: same model, other masks
    assert abs(plain[0] - losses[0]) < 0.05 * abs(losses[0])


def test_the_rewrite_leaves_a_fixed_seed_or_inference_dropout_alone(kernel):
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main, startup):
        x = paddle.static.data("x", [4, 8], "float32")
        paddle.nn.functional.dropout(x, 0.1, training=False)
        block = main.global_block()
        block.append_op(type="dropout", inputs={"X": [x]},
                        outputs={"Out": [block.create_var(name="o", dtype="float32")],
                                 "Mask": [block.create_var(name="m", dtype="uint8")]},
                        attrs={"dropout_prob": 0.1, "is_test": False, "fix_seed": True, "seed": 5,
                               "dropout_implementation": "upscale_in_train"})
    before = [op.type for op in main.global_block().ops]
    assert program_rewrites.use_cpu_dropout_kernel(main, kernel) == 0
    assert [op.type for op in main.global_block().ops] == before


def test_without_the_kernel_the_log_says_paddles_dropout_runs(caplog):
    bundle, _ = _train(seed=1, swap=False)  # a program that still holds Paddle's training dropouts
    program = bundle.main_program.clone()
    with caplog.at_level("INFO", logger="program_rewrites"):
        swapped = program_rewrites.use_cpu_dropout_kernel(
            program, kernels.KernelStatus(reason="BERT_PADDLE_CPU_KERNELS=0"))
    assert swapped == 0 and "dropout" in [op.type for op in program.global_block().ops]
    assert "CPU dropout: Paddle's dropout op (BERT_PADDLE_CPU_KERNELS=0)" in caplog.text
