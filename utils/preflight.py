"""Process set-up that must happen before `import paddle`; every entry point imports this module first.

Owns three facts about this stack (measured on Paddle 2.6.2):
  * libpaddle carries its own zlib symbols: when paddle is imported before the system zlib is loaded, later
    zlib users (gzip, h5py, pyarrow's Parquet codecs) crash. Importing `zlib` first avoids it.
  * Paddle sets OMP_NUM_THREADS=1 when the variable is unset, so a CPU run silently uses one core. We
    default it to the cores this process may use instead; an explicit setting is always respected, and
    an entry point's `--num-threads N` (read from sys.argv here, see `threads_flag`) wins over both.
  * The MKL that the CPU wheel bundles (mklml, Intel MKL 2019.0.5) picks its fast AVX2 GEMM kernels only
    for CPUs whose vendor string is GenuineIntel; on AMD it falls back to a generic path about 3x slower.
    On AMD we set MKL_DEBUG_CPU_TYPE=5 unless the user set it (see `choose_mkl_cpu_type`); the choice is
    logged once, with the device (`utils.runtime.resolve_device`), because logging is not configured yet
    when this runs and only processes that run Paddle ops care.
  * The OpenMP runtime Paddle ships (Intel's libiomp5) keeps idle worker threads spinning, calling
    sched_yield, for 200 ms after every parallel region. A training step is thousands of short regions
    with single-threaded ops between them, so the workers never sleep: a bert-base step on 2 cores spent
    2.5 s of CPU time per step in the kernel doing nothing (a quarter of the process's CPU time), which
    also takes the cores from the data loader's workers. KMP_BLOCKTIME=0 (sleep at once) made that 0.3 s
    at the same step time; set unless the user set it (`choose_openmp_wait`).
  * Paddle's executor runs independent ops of a static program on several host threads, so activations
    of different layers are alive at once: the same bert-base step peaked at 5.1 GB of RSS, 3.4 GB with
    FLAGS_new_executor_serial_run=1 (ops one at a time, in program order) at the same speed. Set for the
    CPU-only Paddle wheel unless the user set it (`choose_serial_executor`); a GPU build keeps Paddle's
    default, where the host threads overlap CPU-side work with the GPU's.
And it silences what users cannot act on (each is named below, with why):
  * Paddle's import prints "WARNING: OMP_NUM_THREADS set to N, not 1 ... PLEASE USE OMP_NUM_THREADS
    WISELY" whenever more than one thread is set, i.e. on every run that sets threads as it should;
  * glog's INFO lines ("New Executor is Running.", "Standalone Executor is Used."): GLOG_minloglevel=1
    unless the user set it, which keeps Paddle's warnings and errors;
  * the deprecation UserWarning Paddle's own optimizers trigger (`Attr(force_cpu) of Op(fill_constant)`).

Usage, as the first import of a script:

    import utils.preflight  # noqa: F401  -- zlib before paddle, OMP threads default
"""
import importlib.abc
import importlib.machinery
import importlib.metadata
import io
import logging
import os
import sys
import warnings
import zlib  # noqa: F401  -- must precede paddle

logger = logging.getLogger(__name__)

# What this module decided about MKL's code path and the executor's threads, one sentence each for the
# log (set below, at import).
MKL_CHOICE = None
RUNTIME_CHOICE = None


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


def threads_flag(argv):
    """The value of a `--num-threads N` / `--num-threads=N` (or `--num_threads`) in `argv`, or None.

    The entry points' --num-threads must act before paddle is imported (OpenMP reads its thread count
    when libpaddle loads), which is before their argparse runs: so it is read here, from the command
    line. A malformed value is left to argparse, which rejects it with the usual error.
    """
    for i, word in enumerate(argv):
        name, sep, value = word.partition("=")
        if name in ("--num-threads", "--num_threads"):
            if not sep:
                value = argv[i + 1] if i + 1 < len(argv) else ""
            return int(value) if value.isdigit() and int(value) >= 1 else None
        if word == "--":
            break
    return None


if threads_flag(sys.argv[1:]) is not None:
    os.environ["OMP_NUM_THREADS"] = str(threads_flag(sys.argv[1:]))
elif "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(default_threads())
os.environ.setdefault("GLOG_minloglevel", "1")
warnings.filterwarnings("ignore", message=r"The Attr\(force_cpu\) of Op\(fill_constant\)", category=UserWarning)

# The two lines paddle/base/__init__.py prints at import when OMP_NUM_THREADS > 1 (Paddle 2.6.2).
_PADDLE_OMP_WARNING = ("WARNING: OMP_NUM_THREADS set to", "PLEASE USE OMP_NUM_THREADS WISELY.")


class _QuietImportLoader:
    """Runs a module's import with sys.stderr captured, then passes on everything it printed except the
    lines `drop` starts with, and puts back the root logger's level the import changed. Any other
    attribute is the wrapped loader's."""

    def __init__(self, loader, drop):
        self._loader, self._drop = loader, drop

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        real, captured = sys.stderr, io.StringIO()
        root_level = logging.getLogger().level
        sys.stderr = captured
        try:
            self._loader.exec_module(module)
        finally:
            sys.stderr = real
            # Paddle's import sets the root logger to WARNING: logging configured before it would lose
            # its INFO lines.
            logging.getLogger().setLevel(root_level)
            kept = [line for line in captured.getvalue().splitlines(keepends=True)
                    if not line.startswith(self._drop)]
            real.write("".join(kept))


class _QuietPaddleImport(importlib.abc.MetaPathFinder):
    """Finds `paddle` once, through the normal path finder, with a loader that drops Paddle's
    OMP_NUM_THREADS warning (everything else it prints is kept); then removes itself."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "paddle":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietImportLoader(spec.loader, _PADDLE_OMP_WARNING)
        return spec


if "paddle" not in sys.modules:
    sys.meta_path.insert(0, _QuietPaddleImport())


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




def _apply_mkl_choice():
    value, message = choose_mkl_cpu_type(cpu_vendor(read_cpuinfo()), os.environ)
    if value is not None:
        os.environ["MKL_DEBUG_CPU_TYPE"] = value
    return message


MKL_CHOICE = _apply_mkl_choice()


def choose_openmp_wait(environ):
    """KMP_BLOCKTIME for this process: (value to set or None, the words for the log).

    0 makes libiomp5's idle workers sleep at once instead of spinning for 200 ms (see the module
    docstring); a value the user set (KMP_BLOCKTIME or the portable OMP_WAIT_POLICY) always wins.
    """
    for name in ("KMP_BLOCKTIME", "OMP_WAIT_POLICY"):
        if name in environ:
            return None, f"{name}={environ[name]!r} kept as set by the user"
    return "0", "idle OpenMP threads sleep (KMP_BLOCKTIME=0)"


def paddle_distribution():
    """The installed Paddle wheel's name ("paddlepaddle", "paddlepaddle-gpu", ...) or None, read from its
    metadata: cheap, and available before `import paddle`, which is what the settings here must precede."""
    for name in ("paddlepaddle-gpu", "paddlepaddle"):
        try:
            importlib.metadata.version(name)
            return name
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def choose_serial_executor(environ, distribution):
    """FLAGS_new_executor_serial_run for this process: (value to set or None, the words for the log).

    Set for the CPU-only wheel ("paddlepaddle"), where running ops one at a time costs no speed and
    a third of the peak memory (see the module docstring); left to Paddle for GPU builds and unknown
    installs; a value the user set always wins.
    """
    name = "FLAGS_new_executor_serial_run"
    if name in environ:
        return None, f"{name}={environ[name]!r} kept as set by the user"
    if distribution != "paddlepaddle":
        return None, "ops scheduled by Paddle's executor threads"
    return "1", "ops run one at a time (FLAGS_new_executor_serial_run=1: less peak memory)"


def _apply_runtime_choices():
    words = []
    for variable, (value, message) in (("KMP_BLOCKTIME", choose_openmp_wait(os.environ)),
                                       ("FLAGS_new_executor_serial_run",
                                        choose_serial_executor(os.environ, paddle_distribution()))):
        if value is not None:
            os.environ[variable] = value
        words.append(message)
    return "; ".join(words)


RUNTIME_CHOICE = _apply_runtime_choices()
