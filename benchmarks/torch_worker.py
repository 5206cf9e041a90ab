"""Run a benchmark's HF-transformers-on-torch part in a child process and read back its JSON result.

Owns: the torch child's environment (threads; `--hf-path` on the child's path only, so torch's own numpy
and friends never shadow paddle's in the parent) and turning a failure into one warning line. Why a child:
torch and paddle each bring an OpenMP runtime and an MKL; in one process they would fight over the cores.
The benchmark module itself is the worker: `python -m <module> --hf-worker '<spec JSON>'` prints one JSON
line last (`benchmarks.child` runs it and reads the line).
"""
import logging
import os

from benchmarks.child import run_child

logger = logging.getLogger(__name__)


def torch_env(threads, hf_path=None):
    """What a torch child's environment changes from this process's: its thread count, and `hf_path`
    on its PYTHONPATH when given (after the current directory, before any PYTHONPATH already set)."""
    env = {"OMP_NUM_THREADS": str(threads)}
    if hf_path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), hf_path, os.environ.get("PYTHONPATH")]))
    return env


def run_torch_worker(module, spec, threads, hf_path=None):
    """Returns the worker's last stdout line parsed as JSON, or None after one warning saying why not."""
    result, reason = run_child(module, "--hf-worker", spec, torch_env(threads, hf_path))
    if result is None:
        logger.warning("HF transformers on torch skipped: %s (install torch and transformers, or pass "
                       "--hf-path DIR, to compare)", reason)
    return result
