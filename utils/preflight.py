"""Process set-up that must happen before `import paddle`; every entry point imports this module first.

Owns three facts about this stack (measured on Paddle 2.6.2):
  * libpaddle carries its own zlib symbols: when paddle is imported before the system zlib is loaded, later
    zlib users (gzip, h5py, pyarrow's Parquet codecs) crash. Importing `zlib` first avoids it.
  * Paddle sets OMP_NUM_THREADS=1 when the variable is unset, so a CPU run silently uses one core. We
    default it to the cores this process may use instead; an explicit setting is always respected.
  * The MKL that the CPU wheel bundles (mklml, Intel MKL 2019.0.5) picks its fast AVX2 GEMM kernels only
    for CPUs whose vendor string is GenuineIntel; on AMD it falls back to a generic path about 3x slower.
    On AMD we set MKL_DEBUG_CPU_TYPE=5 unless the user set it (see `choose_mkl_cpu_type`); the choice is
    logged once, by `utils.logger.init_logging`, because logging is not configured yet when this runs.

Usage, as the first import of a script:

    import utils.preflight  # noqa: F401  -- zlib before paddle, OMP threads default
"""
import logging
import os
import zlib  # noqa: F401  -- must precede paddle

logger = logging.getLogger(__name__)

# What this module decided about MKL's code path, as one sentence for the log (set below, at import).
MKL_CHOICE = None
_mkl_choice_logged = False


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


def cpu_vendor(cpuinfo_text):
    """The CPU vendor string (`vendor_id` of /proc/cpuinfo, e.g. AuthenticAMD, GenuineIntel), or None.

    Args:
      cpuinfo_text: str, the text of /proc/cpuinfo (None or "" when it could not be read).

    Returns:
      str from the first `vendor_id` line, or None when there is none (non-x86 CPUs, other systems).
    """
    for line in (cpuinfo_text or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "vendor_id" and value.strip():
            return value.strip()
    return None


def read_cpuinfo(path="/proc/cpuinfo"):
    """The text of /proc/cpuinfo, or "" where it does not exist or cannot be read (not Linux)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def choose_mkl_cpu_type(vendor, environ):
    """Which value MKL_DEBUG_CPU_TYPE should get, and the sentence that says why.

    Intel MKL before 2020 Update 1 chooses its kernels by the CPU's vendor string, not by the instructions
    the CPU supports: on a non-Intel CPU it runs a generic path even when AVX2/FMA are there.
    MKL_DEBUG_CPU_TYPE=5 tells it to dispatch as on an AVX2 CPU instead. The variable changes MKL's
    dispatch on non-Intel CPUs only (Intel CPUs are dispatched by their own features either way), and
    MKL 2020 Update 1 and later no longer read it; the wheel's MKL is 2019.0.5, which does. So it is set
    for AMD only; Intel and unknown vendors are left alone, and a value the user set (even empty, which
    keeps MKL's own choice) always wins.

    Args:
      vendor: str or None, from `cpu_vendor`.
      environ: mapping of the process environment (read only).

    Returns:
      (value, message): value is the str to set, or None to leave the environment as it is; message is
      one sentence for the log.
    """
    if "MKL_DEBUG_CPU_TYPE" in environ:
        return None, f"MKL_DEBUG_CPU_TYPE={environ['MKL_DEBUG_CPU_TYPE']!r} kept as set by the user"
    if vendor == "AuthenticAMD":
        return "5", ("MKL_DEBUG_CPU_TYPE=5 set: AMD CPU, so the bundled MKL uses its AVX2 kernels instead of a "
                     "generic path (export MKL_DEBUG_CPU_TYPE= to keep MKL's own choice)")
    return None, f"MKL_DEBUG_CPU_TYPE left unset: CPU vendor {vendor or 'unknown'}, MKL picks its own path"


def log_choices_once():
    """Log what this module chose for MKL, once per process (called when logging is set up)."""
    global _mkl_choice_logged
    if MKL_CHOICE is not None and not _mkl_choice_logged:
        _mkl_choice_logged = True
        logger.info("%s", MKL_CHOICE)


def _apply_mkl_choice():
    value, message = choose_mkl_cpu_type(cpu_vendor(read_cpuinfo()), os.environ)
    if value is not None:
        os.environ["MKL_DEBUG_CPU_TYPE"] = value
    return message


MKL_CHOICE = _apply_mkl_choice()
