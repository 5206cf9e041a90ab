"""What a benchmark says about the machine and about one process's cost: the CPU line every benchmark prints
first, and a process's peak memory and CPU seconds.

Owns: the CPU identity line (model name, vendor, the instruction-set extensions BERT's kernels can use, and
utils.preflight's MKL choice) and reading a process's own resource use. Does not own reading the CPU
flags or vendor (`utils.runtime.cpu_flags`, `utils.preflight.cpu_vendor`) or deciding what runs in bf16
(`utils.runtime.cpu_bf16_support`).

Why the ISA line: a seq/s figure means little without the instructions behind it. AVX2 machines run fp32
GEMMs at a fraction of AVX-512 ones; bf16 is native only with avx512_bf16 or AMX and emulated (slowly)
elsewhere; VNNI decides int8. A reader comparing two runs needs to see these first.
"""
import resource
import sys

# The extensions that change which kernels BERT's GEMMs run, in the order they arrived.
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16", "amx_int8")
# Either one gives torch's autocast and oneDNN native bf16 dot products (others emulate bf16 in fp32).
BF16_NATIVE_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_model_name(cpuinfo_text):
    """The first `model name` of /proc/cpuinfo text (e.g. "AMD EPYC 7B13"), or None where there is none."""
    for line in (cpuinfo_text or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "model name" and value.strip():
            return value.strip()
    return None


def isa_line(model, vendor, flags, mkl_choice):
    """The one line about the CPU a benchmark prints before any figure.

    Args:
      model: str or None, from `cpu_model_name`.
      vendor: str or None, from `utils.preflight.cpu_vendor`.
      flags: iterable of CPU flag names, or None when they could not be read (`utils.runtime.cpu_flags`).
      mkl_choice: str or None, `utils.preflight.MKL_CHOICE`.

    Returns:
      str, e.g. "CPU: AMD EPYC (AuthenticAMD); ISA: avx2 yes, avx512f yes, ... amx_int8 no; MKL: ...".
    """
    if flags is None:
        isa = "flags unknown (no /proc/cpuinfo flags line)"
    else:
        flags = frozenset(flags)
        isa = ", ".join(f"{name} {'yes' if name in flags else 'no'}" for name in ISA_FLAGS)
    return (f"CPU: {model or 'model unknown'} ({vendor or 'vendor unknown'}); ISA: {isa}; "
            f"MKL: {mkl_choice or 'no choice recorded'}")


def has_native_bf16(flags):
    """True when `flags` (iterable or None) name an instruction set with bf16 dot products."""
    return flags is not None and any(name in frozenset(flags) for name in BF16_NATIVE_FLAGS)


def machine_line(cpuinfo="/proc/cpuinfo"):
    """`isa_line` for this machine (reads `cpuinfo`; imports utils.runtime, hence paddle)."""
    from utils import preflight
    from utils.runtime import cpu_flags

    text = preflight.read_cpuinfo(cpuinfo)
    return isa_line(cpu_model_name(text), preflight.cpu_vendor(text), cpu_flags(cpuinfo), preflight.MKL_CHOICE)


def peak_rss_mb(status="/proc/self/status"):
    """This process's peak resident set size so far, in MiB (all threads; not its children).

    Read from VmHWM in /proc/self/status, not from getrusage's ru_maxrss: Linux carries ru_maxrss across
    exec, so a child started by a process that had grown to 5 GB (Python's subprocess uses vfork, whose
    exec starts from the parent's memory) reports at least 5 GB whatever it used itself; VmHWM belongs to
    the child's own address space. ru_maxrss (KiB on Linux, bytes on macOS) is the fallback where there is
    no /proc.
    """
    try:
        with open(status, encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # "VmHWM:   13564 kB"
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def cpu_seconds():
    """(user, system) CPU seconds this process has used so far, all its threads together.

    System time is worth its own column: an OpenMP runtime whose idle threads spin-wait in the kernel
    (sched_yield) between parallel regions burns it without doing model work.
    """
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime
