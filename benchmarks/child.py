"""Run one part of a benchmark in a fresh Python process and read back its JSON result.

Owns: starting `python -m <module> <flag> '<spec JSON>'` with this process's environment (whatever the user
exported -- KMP_BLOCKTIME, FLAGS_*, MKL_* -- plus the given overrides) and turning its exit into either a
result dict or one sentence saying why there is none. Does not own what the child measures (the benchmark
module is its own worker) or the torch-specific path handling (`benchmarks.torch_worker`).

Why processes: two 12-layer training programs with their optimizer states in one process distort each
other (memory, the allocator's caches, OpenMP thread pools); torch and paddle each bring an OpenMP runtime
and an MKL. A fresh process per measurement also makes its peak RSS its own.

The protocol: the child prints its result as one JSON object on the last line of stdout and exits 0.
"""
import json
import os
import subprocess
import sys


def parse_child_output(returncode, stdout, stderr):
    """A finished child's result, or why there is none.

    Args:
      returncode: int, the child's exit status.
      stdout, stderr: str, everything it printed.

    Returns:
      (result, reason): result is the dict on stdout's last non-empty line and reason is "", or result is
      None and reason is one line (the last line of stderr when the child failed).
    """
    if returncode != 0:
        tail = (stderr or "").strip().splitlines() or [f"exit status {returncode}, no output"]
        return None, tail[-1]
    lines = (stdout or "").strip().splitlines()
    if not lines:
        return None, "the child printed no result line"
    try:
        result = json.loads(lines[-1])
    except ValueError:
        return None, f"the child's last line is not JSON: {lines[-1][:120]!r}"
    if not isinstance(result, dict):
        return None, f"the child's last line is JSON but not an object: {lines[-1][:120]!r}"
    return result, ""


def run_child(module, flag, spec, env_overrides=None):
    """Run `python -m module flag '<spec JSON>'` from the current directory and wait for it.

    Args:
      module: str, a module whose main() answers `flag` by measuring `spec` and printing one JSON line.
      flag: str, e.g. "--worker".
      spec: JSON-serialisable dict, what to measure.
      env_overrides: dict of str to str set on top of os.environ (the child inherits everything else).

    Returns:
      (result, reason), as `parse_child_output`.
    """
    env = dict(os.environ, **(env_overrides or {}))
    proc = subprocess.run([sys.executable, "-m", module, flag, json.dumps(spec)],
                          capture_output=True, text=True, env=env, check=False)
    return parse_child_output(proc.returncode, proc.stdout, proc.stderr)
