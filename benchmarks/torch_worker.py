"""Run a benchmark's HF-transformers-on-torch part in a child process and read back its JSON result.

Owns: the child's environment (threads; `--hf-path` on the child's path only, so torch's own numpy and
friends never shadow paddle's in the parent) and turning a failure into one warning line. Why a child:
torch and paddle each bring an OpenMP runtime and an MKL; in one process they would fight over the cores.
The benchmark module itself is the worker: `python -m <module> --hf-worker '<spec JSON>'` prints one JSON
line last.
"""
import json
import logging
import os
import subprocess
import sys

logger = logging.getLogger(__name__)


def run_torch_worker(module, spec, threads, hf_path=None):
    """Returns the worker's last stdout line parsed as JSON, or None after one warning saying why not."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    if hf_path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), hf_path, env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", module, "--hf-worker", json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        logger.warning("HF transformers on torch skipped: %s (install torch and transformers, or pass "
                       "--hf-path DIR, to compare)", tail)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])
