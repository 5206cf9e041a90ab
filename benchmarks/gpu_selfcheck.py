"""GPU self-check: every GPU path of the project on real hardware, one table (driver of scripts/gpu_selfcheck.sh).

Owns: the list of checks, their time bounds, the parity comparison (`compare`), the table and the exit
status. Does not own what is checked: the programs come from `program.build_*`, the runs from the
project's entry points (run_pretraining.py, run_squad.py), the prediction from `benchmarks.gpu_model`.

Checks (each bounded in time; about 5 minutes in all on one A100):
  a. amp_o1_o2    one O1 and one O2 step of a tiny BERT: finite, and loss within tolerance of fp32 (same
                  weights, same batch, dropout off)
  b. fuse_mha     fused (`--fuse-mha`) vs plain attention: eval outputs within tolerance, same weights
  c. fuse_*       each fusion flag `program.TrainConfig` has (fuse_qkv, fuse_ffn, fuse_residual_ln,
                  fuse_gemm_epilogue) vs unfused, as b
  d. compiled     one step through a one-GPU CompiledProgram with the bundle's build strategy: finite
  e. squad_amp    run_squad.py --amp: train a few steps on data/samples/squad -> predict -> EM/F1 computed
  f. resume       run_pretraining.py: 4 steps, stop at 2, resume to 4 == uninterrupted 4 (loss tolerance)
  g. benchmark    run_pretraining.py --benchmark, bert-large phase 1, vs benchmarks.gpu_model's prediction
Statuses: passed / FAILED / could not run: <why>. Exit status: 0 all passed; 1 something FAILED;
4 nothing failed but something could not run (e.g. no usable GPU: each check says so in one line).
Then the flags of the fusions that passed.

Usage: bash scripts/gpu_selfcheck.sh [--only a,b] [--timeout-scale 2] [--workdir DIR]
"""
import zlib  # noqa: F401  -- before paddle: libpaddle's own zlib symbols crash later zlib users

import dataclasses
import math
import os
import sys
import tempfile

from utils.cli import ArgumentParser

EXIT_OK, EXIT_FAILED, EXIT_NOT_RUN = 0, 1, 4
PASSED, FAILED, NOT_RUN = "passed", "FAILED", "could not run"
FUSION_FLAGS = ("fuse_qkv", "fuse_ffn", "fuse_residual_ln", "fuse_gemm_epilogue")
# (key, name, seconds allowed on one A100)
CHECKS = (("a", "amp_o1_o2", 30), ("b", "fuse_mha", 20), ("c", "fusion_flags", 40), ("d", "compiled", 20),
          ("e", "squad_amp", 60), ("f", "resume", 60), ("g", "benchmark", 90))
# Tolerances against fp32: fp16 keeps ~3 decimal digits; a tiny model's loss moves by ~1e-3 relative.
LOSS_RTOL, OUTPUT_ATOL = 2e-2, 5e-2


@dataclasses.dataclass(frozen=True)
class Result:
    key: str
    name: str
    status: str
    details: str


def compare(reference, candidate, rtol=LOSS_RTOL, atol=OUTPUT_ATOL):
    """(ok, details) of a candidate's values against fp32 / unfused reference values.

    Args:
      reference, candidate: sequences (or arrays) of floats of the same length.
    Returns:
      ok False when the candidate has a NaN/inf or any |c - r| > atol + rtol * |r|; details name the
      largest difference.
    """
    import numpy as np
    ref, got = np.asarray(reference, np.float64).ravel(), np.asarray(candidate, np.float64).ravel()
    if ref.shape != got.shape:
        return False, f"shape {got.shape} != reference {ref.shape}"
    if not np.all(np.isfinite(got)):
        return False, f"non-finite values: {int(np.sum(~np.isfinite(got)))} of {got.size}"
    diff = np.abs(got - ref)
    bad = diff > atol + rtol * np.abs(ref)
    detail = f"max |diff| {diff.max():.3g} (rtol {rtol:g}, atol {atol:g})"
    return (not bad.any()), (detail if not bad.any() else f"{int(bad.sum())} of {got.size} out of tolerance, {detail}")


def gpu_status():
    """(usable, reason): a CUDA build of Paddle that sees a GPU and can run a dropout kernel on it (the
    PyPI 2.6.2 wheel lacks some sm_90 kernels, see NOTES)."""
    try:
        import paddle
    except ImportError as err:
        return False, f"paddle does not import ({err})"
    if not paddle.is_compiled_with_cuda():
        return False, f"this Paddle {paddle.__version__} is a CPU build (install paddlepaddle-gpu)"
    if paddle.device.cuda.device_count() < 1:
        return False, "Paddle is a CUDA build but sees no GPU (CUDA_VISIBLE_DEVICES? driver?)"
    try:
        paddle.disable_static()
        x = paddle.ones([4, 4], "float16").cuda()
        float(paddle.nn.functional.dropout(x, 0.1).sum())
    except Exception as err:  # noqa: BLE001 -- any failure means the GPU is not usable, reported as such
        return False, f"a GPU kernel failed: {str(err).splitlines()[0][:120]}"
    return True, "usable"


def could_not_run(reason, only=None):
    """Every selected check as "could not run: <reason>"."""
    return [Result(k, n, f"{NOT_RUN}: {reason}", "") for k, n, _ in CHECKS if only is None or k in only]


def exit_status(results):
    if any(r.status == FAILED for r in results):
        return EXIT_FAILED
    if any(r.status.startswith(NOT_RUN) for r in results):
        return EXIT_NOT_RUN
    return EXIT_OK


def table(results):
    """The report: one line per check, then the flags of the fusions that passed."""
    width = max(len(r.name) for r in results) + 2
    lines = [f"{'check':<{width + 3}}{'status':<12}details"]
    for r in results:
        status = r.status if not r.status.startswith(NOT_RUN) else r.status
        lines.append(f"{r.key}. {r.name:<{width}}{status:<12}{r.details}".rstrip())
    fused = [r.name for r in results if r.status == PASSED and (r.name == "fuse_mha" or r.name.startswith("fuse_"))]
    lines.append("fusion flags that passed: " + (" ".join("--" + n.replace("_", "-") for n in fused) or "none"))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ GPU checks
def _run_gpu_checks(only, workdir, scale):
    """The checks on a usable GPU. Each runs under its own time bound; a check that raises is FAILED."""
    from benchmarks import gpu_selfcheck_gpu as gpu
    results = []
    for key, name, seconds in CHECKS:
        if key not in only:
            continue
        try:
            results.extend(gpu.run_check(key, name, seconds * scale, workdir))
        except Exception as err:  # noqa: BLE001 -- a check's crash is its FAILED line, not the end
            results.append(Result(key, name, FAILED, f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"))
    return results


def parse_args(argv):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=",".join(k for k, _, _ in CHECKS),
                   help="comma-separated check letters to run (default: all)")
    p.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every check's time bound")
    p.add_argument("--workdir", default=None, help="scratch directory (default: a temporary one)")
    args = p.parse_args(argv)
    keys = {k for k, _, _ in CHECKS}
    args.only = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = sorted(set(args.only) - keys)
    if unknown or not args.only:
        p.error(f"--only takes letters among {','.join(sorted(keys))}, got {unknown or 'nothing'}")
    if not (args.timeout_scale > 0 and math.isfinite(args.timeout_scale)):
        p.error(f"--timeout-scale must be > 0, got {args.timeout_scale}")
    return args


def main(argv=None, status=gpu_status):
    """Print the table; return the exit status (see the module docstring)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    usable, reason = status()
    if not usable:
        results = could_not_run(f"no usable GPU: {reason}", set(args.only))
    else:
        workdir = args.workdir or tempfile.mkdtemp(prefix="gpu_selfcheck_")
        os.makedirs(workdir, exist_ok=True)
        results = _run_gpu_checks(set(args.only), workdir, args.timeout_scale)
    print(table(results))
    code = exit_status(results)
    print({EXIT_OK: "all checks passed", EXIT_FAILED: "some checks FAILED (exit 1)",
           EXIT_NOT_RUN: "some checks could not run (exit 4)"}[code])
    return code


if __name__ == "__main__":
    sys.exit(main())
