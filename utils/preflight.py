"""Process set-up that must happen before `import paddle`; every entry point imports this module first.

Owns two facts about this stack (measured on Paddle 2.6.2):
  * libpaddle carries its own zlib symbols: when paddle is imported before the system zlib is loaded, later
    zlib users (gzip, h5py, pyarrow's Parquet codecs) crash. Importing `zlib` first avoids it.
  * Paddle sets OMP_NUM_THREADS=1 when the variable is unset, so a CPU run silently uses one core. We
    default it to the cores this process may use instead; an explicit setting is always respected.

Usage, as the first import of a script:

    import utils.preflight  # noqa: F401  -- zlib before paddle, OMP threads default
"""
import os
import zlib  # noqa: F401  -- must precede paddle


def usable_cores():
    """Number of CPU cores this process may run on (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_threads(environ=os.environ):
    """OpenMP threads for one process: the usable cores shared by the processes of this node.

    `paddle.distributed.launch` starts PADDLE_LOCAL_SIZE (or, single-node, PADDLE_TRAINERS_NUM)
    processes on a node; giving each all cores would oversubscribe them.
    """
    local = environ.get("PADDLE_LOCAL_SIZE") or environ.get("PADDLE_TRAINERS_NUM") or "1"
    try:
        procs = max(1, int(local))
    except ValueError:
        procs = 1
    return max(1, usable_cores() // procs)


if "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(default_threads())
