"""Build, cache and register this project's CPU kernels (Paddle custom operators compiled on first use).

Owns: where the compiled library lives, when it is rebuilt, how concurrent processes share one build, the
one line that says which LAMB implementation a CPU run uses, and whether the gradient kernels are on. Does
not own which ops of a program use the kernels (`program_rewrites.use_cpu_lamb_kernel` and
`use_cpu_training_kernels` rewrite them) nor the kernels themselves (`lamb_cpu.cc`, `bias_add_grad_cpu.cc`,
`layer_norm_grad_cpu.cc`, `dropout_cpu.cc`, their shared `parallel.h`).

Why compiled here and not shipped: a custom operator must be built against the installed Paddle's headers
and ABI, and `-march=native` lets the compiler use the vector width of the CPU it runs on. The build takes
about 20 s once per machine (`scripts/setup.sh` does it ahead of time); later processes only load the
library (~10 ms). The cache key covers the source, the Paddle build, the compiler and this CPU's model and
flags, so a changed kernel, a Paddle upgrade or a different CPU (a shared home directory on a cluster)
gets its own build instead of a wrong one. The built library's SHA-256 is recorded beside it
(`<library>.so.sha256`) and checked before every load: a cached file that was truncated, overwritten or
never completely copied is rebuilt (one warning says so) instead of failing to load in every later run.

Where: `$BERT_PADDLE_KERNEL_CACHE`, else `$XDG_CACHE_HOME/bert-paddle/kernels`, else
`~/.cache/bert-paddle/kernels`. `BERT_PADDLE_CPU_KERNELS=0` keeps Paddle's own ops (nothing is built);
`BERT_PADDLE_CPU_GRAD_KERNELS=0` keeps only Paddle's gradient ops (`elementwise_add_grad`,
`layer_norm_grad`) and still uses the LAMB kernel. When the build cannot run (no C++ compiler, no Python
headers, a read-only cache), training still works with Paddle's ops and one warning says why.

Usage:
  python -m cpu_kernels.build          # build now (setup.sh does), print where, exit 1 if it failed
"""
import zlib  # noqa: F401  -- before paddle: libpaddle's own zlib symbols crash later zlib users
import utils.preflight  # noqa: F401  -- zlib, OMP threads, MKL path; must stay before paddle

import dataclasses
import fcntl
import glob
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time

from utils.fs import atomic_write_text, sha256_file

logger = logging.getLogger(__name__)

LAMB_OP, DROPOUT_OP = "bert_lamb_cpu", "bert_dropout_cpu"
BIAS_ADD_GRAD_OP, LAYER_NORM_GRAD_OP = "bert_bias_add_grad_cpu", "bert_layer_norm_grad_cpu"
LIBRARY = "bert_cpu_kernels"
_HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = tuple(os.path.join(_HERE, name) for name in
                ("lamb_cpu.cc", "dropout_cpu.cc", "bias_add_grad_cpu.cc", "layer_norm_grad_cpu.cc"))
HEADERS = (os.path.join(_HERE, "parallel.h"),)  # not compiled on their own, but part of the cache key
# -ffp-contract=off: no fused multiply-adds, so every element rounds exactly as Paddle's own kernel does.
# -fno-math-errno: sqrt need not set errno, which is what lets the compiler vectorise it.
CXX_FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-pthread")
LD_FLAGS = ("-pthread",)  # the kernel's threads are std::threads (see lamb_cpu.cc)
ENABLE_VAR, CACHE_VAR = "BERT_PADDLE_CPU_KERNELS", "BERT_PADDLE_KERNEL_CACHE"
GRAD_ENABLE_VAR = "BERT_PADDLE_CPU_GRAD_KERNELS"
BUILD_TIMEOUT_S = 600


@dataclasses.dataclass(frozen=True)
class KernelStatus:
    """What `lamb_kernel()` found: `op_type` is None when Paddle's own op must be used, and `reason` says why;
    `ops` names every op the library registered (the LAMB update and the other CPU kernels)."""
    op_type: str = None
    library: str = None
    reason: str = ""
    ops: frozenset = frozenset()


def cache_root(environ=os.environ):
    if environ.get(CACHE_VAR):
        return os.path.abspath(environ[CACHE_VAR])
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bert-paddle", "kernels")


def _compiler_version():
    for compiler in ("c++", "g++", "cc"):
        try:
            out = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0 and out.stdout:
            return out.stdout.splitlines()[0]
    return None


def _cpu_identity(cpuinfo="/proc/cpuinfo"):
    """The CPU's model name and flag set (what -march=native compiles for); '' where unreadable."""
    wanted = {}
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "flags") and key not in wanted:
                    wanted[key] = " ".join(sorted(value.split())) if key == "flags" else value.strip()
                if len(wanted) == 2:
                    break
    except OSError:
        pass
    return f"{wanted.get('model name', '')}|{wanted.get('flags', '')}"


def cache_key(paddle_version, compiler, cpu=None):
    """16 hex digits naming one build: sources and headers, flags, Paddle build, compiler and CPU."""
    digest = hashlib.sha256()
    for path in SOURCES + HEADERS:
        with open(path, "rb") as f:
            digest.update(f.read())
    for part in (*CXX_FLAGS, "|", *LD_FLAGS, "|", paddle_version, compiler, cpu or _cpu_identity()):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:16]


def _paddle_version():
    import paddle
    return f"{paddle.__version__}+{paddle.version.commit}"


def _compile(out_dir):
    """Compile SOURCES with Paddle's extension builder in a child process; returns the built .so path.

    A child process, because the builder prints to the terminal and imports the result; we want only the
    file, and on failure the compiler's last line for the warning.
    """
    code = ("import zlib, sys\n"
            "from paddle.utils.cpp_extension import load\n"
            f"load(name={LIBRARY!r}, sources={list(SOURCES)!r}, extra_cxx_cflags={list(CXX_FLAGS)!r}, "
            f"extra_ldflags={list(LD_FLAGS)!r}, build_directory={out_dir!r})\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=out_dir,
                          timeout=BUILD_TIMEOUT_S)
    built = sorted(glob.glob(os.path.join(out_dir, LIBRARY, "**", f"{LIBRARY}*.so"), recursive=True))
    if proc.returncode != 0 or not built:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower()]
        raise RuntimeError((errors or lines or ["the compiler gave no output"])[0][:300])
    return built[0]


def build_library(environ=os.environ):
    """The path of the compiled library, building it first if this machine has none yet.

    Concurrent callers (the processes of a multi-process run) wait on one lock file, so one builds and
    the others then find the result; the library is moved into place atomically, so a killed build never
    leaves a half-written one behind.

    Returns:
      (path of the .so, seconds spent building or 0.0 when it was cached).

    Raises:
      RuntimeError: no compiler, or the build failed (message: the compiler's first error line).
      OSError: the cache directory cannot be written.
    """
    compiler = _compiler_version()
    if compiler is None:
        raise RuntimeError("no C++ compiler found (c++, g++ or cc on PATH)")
    key = cache_key(_paddle_version(), compiler)
    root = cache_root(environ)
    target = os.path.join(root, key, f"{LIBRARY}.so")
    if _cached_problem(target) is None:
        return target, 0.0
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, f"{key}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        problem = _cached_problem(target)  # another process may have built it while we waited
        if problem is None:
            return target, 0.0
        if os.path.exists(target):
            logger.warning("CPU kernel cache: %s %s: rebuilding it", target, problem)
        start = time.perf_counter()
        work = tempfile.mkdtemp(prefix=f"build-{key}-", dir=root)
        try:
            _install(_compile(work), target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return target, time.perf_counter() - start


def _cached_problem(target):
    """None when `target` exists and its SHA-256 is the one recorded when it was built, else what is wrong.

    Why check: the loader maps whatever file is there; a damaged one would fail to load (and fall back to
    Paddle's op) in every later run, since its name alone says it is built."""
    if not os.path.isfile(target):
        return "is missing"
    try:
        with open(target + ".sha256", encoding="ascii") as f:
            recorded = f.read().strip()
    except (OSError, UnicodeDecodeError):
        return "has no recorded SHA-256"
    if sha256_file(target) != recorded:
        return "does not match the SHA-256 recorded when it was built (a damaged or replaced file)"
    return None


def _install(built, target):
    """Copy the built library to `target` atomically, its SHA-256 recorded first: if we die between the two,
    the old file meets the new hash and is rebuilt, never trusted."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    atomic_write_text(target + ".sha256", sha256_file(built) + "\n")
    staged = f"{target}.tmp{os.getpid()}"
    shutil.copyfile(built, staged)
    os.replace(staged, target)


_STATUS = None
_GRAD_STATUS = None
_REGISTERED = {}  # library path -> op types it registered: Paddle registers a library once per process


@dataclasses.dataclass(frozen=True)
class GradKernels:
    """What `grad_kernels()` found: the op types of the gradient kernels, or None each when Paddle's own
    `elementwise_add_grad` / `layer_norm_grad` must be used, and `reason` says why."""
    bias_add_grad: str = None
    layer_norm_grad: str = None
    reason: str = ""


def _disabled(environ, var):
    return environ.get(var, "1").strip().lower() in ("0", "false", "no", "off")


def _load(environ, wanted):
    """Build (or find) the library and register its ops; returns (path, build seconds, ops).

    Raises:
      RuntimeError, OSError, subprocess.SubprocessError, ImportError: the build or the load failed, or the
        library does not register `wanted`.
    """
    path, seconds = build_library(environ)
    if path not in _REGISTERED:
        from paddle.utils.cpp_extension.extension_utils import load_op_meta_info_and_register_op
        _REGISTERED[path] = tuple(load_op_meta_info_and_register_op(path))
    if wanted not in _REGISTERED[path]:
        raise RuntimeError(f"{path} registers {list(_REGISTERED[path])}, not {wanted}")
    return path, seconds, _REGISTERED[path]


def _first_line(err):
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def lamb_kernel(environ=os.environ):
    """Register the fused CPU LAMB op once per process and say, in one log line, what CPU runs will use.

    Returns:
      KernelStatus: op_type "bert_lamb_cpu" when it is registered, else None with the reason.
    """
    global _STATUS
    if _STATUS is not None:
        return _STATUS
    if _disabled(environ, ENABLE_VAR):
        _STATUS = KernelStatus(reason=f"{ENABLE_VAR}={environ[ENABLE_VAR]}")
        logger.info("CPU LAMB update: Paddle's lamb op (%s)", _STATUS.reason)
        return _STATUS
    try:
        path, seconds, registered = _load(environ, LAMB_OP)
    except (RuntimeError, OSError, subprocess.SubprocessError, ImportError) as err:
        _STATUS = KernelStatus(reason=_first_line(err))
        logger.warning("CPU LAMB update: Paddle's lamb op (the fused kernel could not be built: %s; "
                       "%s=0 stops trying)", _STATUS.reason, ENABLE_VAR)
        return _STATUS
    built = f"built in {seconds:.0f} s" if seconds else "cached"
    _STATUS = KernelStatus(op_type=LAMB_OP, library=path, reason=built, ops=frozenset(registered))
    logger.info("CPU LAMB update: fused kernel %s (%s threads; %s: %s)", LAMB_OP,
                os.environ.get("OMP_NUM_THREADS", "?"), built, path)
    return _STATUS


def grad_kernels(environ=os.environ):
    """Register the CPU gradient kernels (bias add, LayerNorm) once per process.

    Logs only when they are off or unavailable (one line, saying why); the rewrite that uses them logs how
    many ops it swapped.

    Returns:
      GradKernels: their op types, or None each with the reason.
    """
    global _GRAD_STATUS
    if _GRAD_STATUS is not None:
        return _GRAD_STATUS
    off = [var for var in (ENABLE_VAR, GRAD_ENABLE_VAR) if _disabled(environ, var)]
    if off:
        _GRAD_STATUS = GradKernels(reason=f"{off[0]}={environ[off[0]]}")
        logger.info("CPU gradient kernels: Paddle's elementwise_add_grad and layer_norm_grad (%s)",
                    _GRAD_STATUS.reason)
        return _GRAD_STATUS
    try:
        _load(environ, BIAS_ADD_GRAD_OP)
        _load(environ, LAYER_NORM_GRAD_OP)
    except (RuntimeError, OSError, subprocess.SubprocessError, ImportError) as err:
        _GRAD_STATUS = GradKernels(reason=_first_line(err))
        logger.warning("CPU gradient kernels: Paddle's elementwise_add_grad and layer_norm_grad (the "
                       "kernels could not be built: %s; %s=0 stops trying)", _GRAD_STATUS.reason, GRAD_ENABLE_VAR)
        return _GRAD_STATUS
    _GRAD_STATUS = GradKernels(bias_add_grad=BIAS_ADD_GRAD_OP, layer_norm_grad=LAYER_NORM_GRAD_OP,
                               reason="registered")
    return _GRAD_STATUS


def main(argv=None):
    from utils.logger import init_logging
    init_logging()
    status = lamb_kernel()
    print(status.library if status.op_type else f"not built: {status.reason}")
    return 0 if status.op_type else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
