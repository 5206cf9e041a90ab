"""Benchmark: fp32 GEMM throughput (GFLOP/s) of this Paddle build on this CPU, in a static program.

Owns: the GEMM probe only -- one 1024x768 . 768x3072 matmul (a bert-base batch of 8x128 tokens through the
FFN's first weight), then `--chain` 1024x3072 . 3072x3072 matmuls on its result, all in one static
program run by the executor, timed over `--runs` runs after `--warmup` untimed ones. Reports the median
(and min/max) GFLOP/s. Does not own the model benchmarks (`benchmarks.bench_train`).

What it answers: whether MKL runs its fast kernels here. MKL chooses them when it is loaded, so compare
settings in fresh processes, e.g. on an AMD CPU (where utils.preflight sets MKL_DEBUG_CPU_TYPE=5):
  MKL_DEBUG_CPU_TYPE= python -m benchmarks.bench_gemm     # MKL's own choice
  python -m benchmarks.bench_gemm                         # what utils.preflight chose

Usage (from the repo root):
  python -m benchmarks.bench_gemm [--threads 2] [--chain 2] [--runs 5] [--warmup 1]
"""
import zlib  # noqa: F401  -- before paddle: libpaddle's own zlib symbols crash later zlib users
import utils.preflight  # noqa: F401  -- OMP threads default, MKL path; must stay before paddle

import logging
import os
import statistics
import sys
import time

import numpy as np

from utils.cli import ArgumentParser, run_cli

logger = logging.getLogger(__name__)

ROWS, HIDDEN, INNER = 1024, 768, 3072


def gemm_flops(chain):
    """Floating-point operations of one run: 2*m*k*n per matmul (a multiply and an add per term)."""
    return 2 * ROWS * HIDDEN * INNER + chain * 2 * ROWS * INNER * INNER


def parse_args(argv):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS (default 2)")
    p.add_argument("--chain", type=int, default=2, help="3072x3072 matmuls after the first one (default 2)")
    p.add_argument("--runs", type=int, default=5, help="timed runs, the median is reported (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    args = p.parse_args(argv)
    for name in ("threads", "runs"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    for name in ("chain", "warmup"):
        if getattr(args, name) < 0:
            p.error(f"--{name} must be >= 0, got {getattr(args, name)}")
    return args


def build(paddle, chain):
    """The static GEMM program: returns (main program, startup program, fetch variable)."""
    main_prog, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main_prog, startup):
        x = paddle.static.data("x", [ROWS, HIDDEN], "float32")
        w1 = paddle.static.create_parameter([HIDDEN, INNER], "float32", name="w1")
        w2 = paddle.static.create_parameter([INNER, INNER], "float32", name="w2")
        y = paddle.matmul(x, w1)
        for _ in range(chain):
            y = paddle.matmul(y, w2)
        out = paddle.mean(y)  # fetch a scalar: copying the [1024, 3072] result out is not GEMM time
    return main_prog, startup, out


def run(args):
    """Time the program; returns {'gflops': median, 'min', 'max', 'seconds': per-run list}."""
    import paddle

    paddle.enable_static()
    main_prog, startup, out = build(paddle, args.chain)
    exe = paddle.static.Executor(paddle.CPUPlace())
    exe.run(startup)
    feed = {"x": np.random.default_rng(0).standard_normal((ROWS, HIDDEN)).astype(np.float32)}
    for _ in range(args.warmup):
        exe.run(main_prog, feed=feed, fetch_list=[out])
    seconds = []
    for _ in range(args.runs):
        start = time.perf_counter()
        exe.run(main_prog, feed=feed, fetch_list=[out])
        seconds.append(time.perf_counter() - start)
    rates = [gemm_flops(args.chain) / s / 1e9 for s in seconds]
    return {"gflops": statistics.median(rates), "min": min(rates), "max": max(rates), "seconds": seconds}


def main(argv=None):
    args = parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # must happen before paddle is imported
    result = run(args)
    mkl = os.environ.get("MKL_DEBUG_CPU_TYPE")
    print(f"fp32 GEMM {ROWS}x{HIDDEN}.{HIDDEN}x{INNER} + {args.chain}x {ROWS}x{INNER}.{INNER}x{INNER}, "
          f"{args.threads} thread(s), MKL_DEBUG_CPU_TYPE={'unset' if mkl is None else repr(mkl)}: "
          f"{result['gflops']:.1f} GFLOP/s median of {args.runs} (min {result['min']:.1f}, "
          f"max {result['max']:.1f})")
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main))
