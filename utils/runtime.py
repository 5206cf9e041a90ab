"""Where and how a training/eval process runs: device, ranks, executor, seeds.

Owns: resolving `--device {auto,gpu,cpu}` (one log line says what was chosen and why; a GPU this Paddle
build has no kernels for, as Hopper with a CUDA 11 build, is refused in one line), reading the rank
layout that `paddle.distributed.launch` puts in the environment, initialising the collective runtime
(Fleet on GPUs; gloo + `gloo_data_parallel` on CPU processes), the executor, and per-rank seeding.
Does not own: building programs (`program.py`), parsing flags (the run scripts), checkpoints.

Typical use in a run script (after `import utils.preflight`):

    rt = init_runtime(args.device, seed=args.seed)
    train_cfg = TrainConfig(..., device=rt.device, **rt.train_config_kwargs())
    bundle = program.build_pretraining(model_cfg, train_cfg)
    rt.exe.run(bundle.startup_program)
"""
import dataclasses
import logging
import os

from utils import preflight  # before paddle (OMP threads, MKL path); its choices are logged here

import paddle

logger = logging.getLogger(__name__)

DEVICES = ("auto", "gpu", "cpu")


def _env_int(environ, name, default):
    value = environ.get(name, "")
    if value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


@dataclasses.dataclass(frozen=True)
class DistEnv:
    """This process's place among the training processes.

    Attributes:
      rank: int in [0, world_size), PADDLE_TRAINER_ID.
      world_size: int >= 1, PADDLE_TRAINERS_NUM.
      local_rank: int >= 0, PADDLE_LOCAL_RANK (the GPU index on its node); defaults to rank.
    """
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, environ=None):
        """Read the variables `paddle.distributed.launch` sets (defaults: one process).

        Raises:
          ValueError: a variable is not an integer, or the rank is outside [0, world_size).
        """
        environ = os.environ if environ is None else environ
        world = _env_int(environ, "PADDLE_TRAINERS_NUM", 1)
        rank = _env_int(environ, "PADDLE_TRAINER_ID", 0)
        local = _env_int(environ, "PADDLE_LOCAL_RANK", rank)
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"PADDLE_TRAINER_ID={rank} / PADDLE_TRAINERS_NUM={world} are inconsistent")
        return cls(rank=rank, world_size=world, local_rank=local)

    @property
    def is_main(self):
        """True on rank 0, the process that writes reports and checkpoints."""
        return self.rank == 0


def gpu_available():
    """True when this Paddle build has CUDA and sees at least one GPU."""
    return bool(paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0)


# Paddle compiles its own CUDA kernels for the architectures its cmake/cuda.cmake lists per CUDA version,
# as machine code only (no PTX a newer GPU could compile at load time): the lists of CUDA 11 builds stop
# before sm_90, which comes with CUDA 12. The PyPI paddlepaddle-gpu==2.6.2 wheel is a CUDA 11.8 build, so on
# a Hopper GPU (H100/H200, compute capability 9.x) its own kernels (dropout, squared_l2_norm...) fail with
# "no kernel image is available" deep in the first step. Paddle 2.6.2 does not expose the architectures a
# build was compiled for, so the rule reads the CUDA version it was built with (`paddle.version.cuda()`).
FIRST_CUDA_WITH_SM90 = 12
WORKING_GPU_ROUTE = ("run in the image of this repo's Dockerfile (bash scripts/docker/build.sh; Paddle 2.6.2 "
                     "with CUDA 12.0) or NVIDIA's NGC PaddlePaddle container, or use --device cpu")


@dataclasses.dataclass(frozen=True)
class GpuInfo:
    """The GPU this process would use, and the CUDA version this Paddle was built with.

    Attributes:
      name: str, e.g. "NVIDIA H100 80GB HBM3".
      capability: (int, int), the compute capability, e.g. (9, 0).
      build_cuda: str, `paddle.version.cuda()`, e.g. "11.8" ("False" in a CPU build).
    """
    name: str
    capability: tuple
    build_cuda: str

    @classmethod
    def query(cls):
        """The current GPU's facts, read from Paddle (needs a CUDA build and a visible GPU)."""
        import paddle.version
        props = paddle.device.cuda.get_device_properties()
        return cls(name=props.name, capability=(props.major, props.minor), build_cuda=str(paddle.version.cuda()))

    def build_problem(self):
        """Why this Paddle build cannot run its kernels on this GPU (one sentence), or None.

        The rule: compute capability >= 9.0 with a Paddle built with CUDA < 12 (see FIRST_CUDA_WITH_SM90).
        An unreadable CUDA version says nothing, so it is not refused.
        """
        try:
            build_major = int(self.build_cuda.split(".")[0])
        except ValueError:
            return None
        if tuple(self.capability) < (9, 0) or build_major >= FIRST_CUDA_WITH_SM90:
            return None
        major, minor = self.capability
        return (f"{self.name} (compute capability {major}.{minor}) needs sm_{major}{minor} kernels, which "
                f"paddlepaddle-gpu {paddle.__version__} built with CUDA {self.build_cuda} lacks (the PyPI wheel is "
                f"such a build: 'no kernel image is available' in the first step); {WORKING_GPU_ROUTE}")


_device_logged = False  # the device line is said once per process


def resolve_device(requested):
    """Turn `--device` into "gpu" or "cpu".

    Args:
      requested: "auto" (GPU when one is usable, else CPU), "gpu" or "cpu".

    Returns:
      "gpu" | "cpu"; the first call of a process logs the choice (with the threads and MKL's code path
      chosen by utils.preflight), later calls are silent.

    Raises:
      ValueError: an unknown value, "gpu" when this Paddle build or machine has no usable GPU, or a GPU
        (also chosen by "auto") that this Paddle build has no kernels for (`GpuInfo.build_problem`).
    """
    if requested not in DEVICES:
        raise ValueError(f"--device must be one of {DEVICES}, got {requested!r}")
    has_gpu = gpu_available()
    if requested == "gpu" and not has_gpu:
        why = ("this paddlepaddle build has no CUDA (install paddlepaddle-gpu==2.6.2)"
               if not paddle.is_compiled_with_cuda() else "no GPU is visible")
        raise ValueError(f"--device gpu: {why}; use --device cpu or auto")
    device = "gpu" if (requested == "gpu" or (requested == "auto" and has_gpu)) else "cpu"
    gpu = GpuInfo.query() if device == "gpu" else None
    problem = gpu and gpu.build_problem()
    if problem:  # refused, also under "auto": a silent fall-back to the CPU would hide a wrong install
        raise ValueError(f"--device {requested}: {problem}")
    global _device_logged
    if not _device_logged:  # validate_args resolves the user's --device; init_runtime again, quietly
        _device_logged = True
        if device == "cpu":
            logger.info("device: cpu (%s), %s OpenMP threads per process; %s; %s",
                        "requested" if requested == "cpu" else "no usable GPU",
                        os.environ.get("OMP_NUM_THREADS", "?"), preflight.MKL_CHOICE, preflight.RUNTIME_CHOICE)
        else:
            logger.info("device: gpu (%d visible; %s, compute capability %d.%d; Paddle built with CUDA %s)",
                        paddle.device.cuda.device_count(), gpu.name, *gpu.capability, gpu.build_cuda)
    return device


# oneDNN has bf16 kernels only on AVX-512 cores ("avx512_core": these four extensions); without them the
# first bf16 matmul fails with "could not create a primitive descriptor". AVX512-BF16 or AMX-BF16 make
# bf16 native; without them oneDNN emulates it and it can be slower than float32.
BF16_REQUIRED_CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512dq")
BF16_NATIVE_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclasses.dataclass(frozen=True)
class Bf16Support:
    """What `cpu_bf16_support` found.

    Attributes:
      usable: bool, bf16 programs run on this CPU with this Paddle build.
      native: bool, the CPU has bf16 instructions (otherwise oneDNN emulates them, slowly).
      reason: str, when not usable: what is missing, in words for the user; "" otherwise.
    """
    usable: bool
    native: bool
    reason: str = ""


def cpu_flags(cpuinfo="/proc/cpuinfo"):
    """The CPU feature flags the kernel reports (first processor), or None where the file is unreadable.

    Returns:
      frozenset of flag names (e.g. "avx512f"), or None (not Linux, or no "flags" line).
    """
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "flags":
                    return frozenset(value.split())
    except OSError:
        return None
    return None


def cpu_bf16_support(flags=None, paddle_supports=None):
    """Can this machine run bf16 inference on CPU (oneDNN), and if not, why not.

    Paddle's own check decides; the CPU flags only explain a "no" (and tell emulated from native bf16).
    Benchmarks and servers call this before building a bf16 program, so a user gets a sentence instead
    of a oneDNN traceback.

    Args:
      flags: iterable of CPU flag names (default: `cpu_flags()`; None there means unknown).
      paddle_supports: bool (default: `paddle.base.core.supports_bfloat16()`); tests pass both values.

    Returns:
      Bf16Support.
    """
    flags = cpu_flags() if flags is None else frozenset(flags)
    if paddle_supports is None:
        paddle_supports = bool(paddle.base.core.supports_bfloat16())
    native = bool(flags) and any(f in flags for f in BF16_NATIVE_CPU_FLAGS)
    if paddle_supports:
        return Bf16Support(usable=True, native=native)
    missing = [f for f in BF16_REQUIRED_CPU_FLAGS if flags is not None and f not in flags]
    if missing:
        reason = (f"this CPU lacks {', '.join(missing)} (AVX-512), which oneDNN's bf16 kernels need")
    elif not paddle.base.core.is_compiled_with_mkldnn():
        reason = "this paddlepaddle build has no oneDNN, which bf16 on CPU needs"
    else:
        reason = "Paddle reports no bf16 support on this CPU"
    return Bf16Support(usable=False, native=native, reason=reason)


# oneDNN's int8 GEMM is faster than fp32 only with 8-bit dot-product instructions (VNNI, or AMX tiles);
# without them it emulates the dot products with 16-bit multiplies and int8 is no faster (inference.quantize).
INT8_FAST_CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_int8_flags(flags=None):
    """The CPU flags of INT8_FAST_CPU_FLAGS this machine has: empty when int8 inference is not faster here.

    Args:
      flags: iterable of CPU flag names (default: `cpu_flags()`; None there means unknown, i.e. none).

    Returns:
      tuple of flag names, in INT8_FAST_CPU_FLAGS order.
    """
    flags = cpu_flags() if flags is None else frozenset(flags)
    return tuple(f for f in INT8_FAST_CPU_FLAGS if flags and f in flags)


@dataclasses.dataclass
class Runtime:
    """What `init_runtime` set up.

    Attributes:
      device: "gpu" | "cpu".
      dist: DistEnv.
      place: the paddle Place of this process.
      exe: paddle.static.Executor on `place`.
    """
    device: str
    dist: DistEnv
    place: object
    exe: object

    @property
    def uses_fleet(self):
        """Multi-GPU runs go through Fleet's collective meta-optimizers."""
        return self.device == "gpu" and self.dist.world_size > 1

    def train_config_kwargs(self):
        """The data-parallel fields of `program.TrainConfig` for this runtime."""
        cpu_world = self.dist.world_size if self.device == "cpu" else 1
        return {"use_fleet": self.uses_fleet, "allreduce_world_size": cpu_world}

    def runnable(self, program, build_strategy):
        """What to pass to `exe.run` for a training program.

        On one GPU the build strategy's graph fusions (GEMM epilogue, fused attention, addto) only take
        effect through a CompiledProgram; under fleet, fleet applied them already; on CPU the plain
        program is what the exact-resume and gloo tests measure, and the fusions are GPU-only.
        """
        if self.device == "gpu" and not self.uses_fleet and build_strategy is not None:
            import paddle
            return paddle.static.CompiledProgram(program, build_strategy=build_strategy)
        return program


def _parse_cpulist(text):
    """Linux cpulist text ("0-15,128-143") -> sorted list of ints."""
    cpus = set()
    for part in text.strip().split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return sorted(cpus)


def _read(path):
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def _sysfs_bus_id(bus_id):
    """nvidia-smi's "00000000:07:00.0" -> sysfs's "0000:07:00.0" (4-digit domain, lower case)."""
    domain, _, rest = bus_id.strip().lower().partition(":")
    return f"{int(domain, 16):04x}:{rest}"


def gpu_bus_ids(run=None):
    """PCI bus id (sysfs form) of every GPU, keyed by nvidia-smi index and by UUID; {} if unknown.

    Args:
      run: callable(argv) -> stdout text (default: subprocess, 10 s timeout); for tests.
    """
    import subprocess

    if run is None:
        def run(argv):
            return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True).stdout
    try:
        text = run(["nvidia-smi", "--query-gpu=index,uuid,pci.bus_id", "--format=csv,noheader"])
    except (OSError, subprocess.SubprocessError):
        return {}
    ids = {}
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 3:
            ids[fields[0]] = ids[fields[1]] = _sysfs_bus_id(fields[2])
    return ids


def numa_cpu_share(local_rank, gpu_of_rank, bus_ids, allowed, sysfs="/sys"):
    """The CPUs local rank `local_rank` should run on: its share of its GPU's NUMA node.

    The local ranks whose GPUs sit on the same NUMA node split that node's physical cores in contiguous
    blocks, in local-rank order; each rank also gets the SMT siblings of its cores (on a DGX A100 they are
    numbered +128, so "contiguous CPU numbers" would hand ranks 4-7 the siblings of ranks 0-3).

    Args:
      local_rank: int, this process's index on the node.
      gpu_of_rank: list, the physical GPU (nvidia-smi index or UUID, as str) of every local rank.
      bus_ids: {physical GPU: sysfs PCI bus id} (`gpu_bus_ids`).
      allowed: set of CPUs this process may use (its current affinity).
      sysfs: root of the sysfs tree (a fake one in tests).

    Returns:
      (sorted list of CPUs, NUMA node), or (None, reason) when the topology is unknown.
    """
    def node_of(gpu):
        bus = bus_ids.get(gpu)
        text = _read(f"{sysfs}/bus/pci/devices/{bus}/numa_node") if bus else None
        return int(text) if text not in (None, "") and int(text) >= 0 else None

    mine = node_of(gpu_of_rank[local_rank])
    if mine is None:
        return None, f"no NUMA node known for GPU {gpu_of_rank[local_rank]}"
    cpulist = _read(f"{sysfs}/devices/system/node/node{mine}/cpulist")
    node_cpus = [c for c in _parse_cpulist(cpulist or "") if c in allowed]
    if not node_cpus:
        return None, f"NUMA node {mine} has no CPU this process may use"
    cores = {}  # physical core (its sibling list) -> its CPUs of this node
    for cpu in node_cpus:
        siblings = _read(f"{sysfs}/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        key = tuple(_parse_cpulist(siblings)) if siblings else (cpu,)
        cores.setdefault(key, []).append(cpu)
    cores = [cores[key] for key in sorted(cores)]
    sharing = [r for r, gpu in enumerate(gpu_of_rank) if r == local_rank or node_of(gpu) == mine]
    per = len(cores) // len(sharing)
    if per < 1:  # more ranks than cores on the node: share the whole node
        return node_cpus, mine
    index = sharing.index(local_rank)
    return sorted(c for core in cores[index * per:(index + 1) * per] for c in core), mine


def _set_process_affinity(cpus, task_dir="/proc/self/task"):
    """Pin every thread of this process (os.sched_setaffinity(0) pins only the calling thread on Linux;
    threads created later inherit the affinity of their creator)."""
    try:
        tids = [int(t) for t in os.listdir(task_dir)]
    except OSError:
        tids = [0]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except ProcessLookupError:  # the thread has exited meanwhile
            pass


def _physical_gpus(local_size, gpu_id, local_rank, environ):
    """The physical GPU of every local rank: CUDA_VISIBLE_DEVICES entry of its device index.

    Assumes rank r uses visible device r (paddle.distributed.launch's `--gpus 0,...,g-1`), except for this
    process, whose device is `gpu_id` (FLAGS_selected_gpus).
    """
    visible = [v.strip() for v in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    devices = list(range(local_size))
    devices[local_rank] = gpu_id
    return [visible[d] if d < len(visible) else str(d) for d in devices]


def pin_cpu_cores(local_rank, local_size, gpu_id, environ=None, sysfs="/sys", bus_ids=None,
                  task_dir="/proc/self/task"):
    """Pin this whole process to its share of the CPUs of its GPU's NUMA node (`numa_cpu_share`).

    GPU data loading and host-side work run on these cores; without pinning, 8 processes of a DGX contend
    for the same cores and migrate between NUMA nodes. The topology comes from nvidia-smi (PCI bus id) and
    sysfs (/sys/bus/pci/devices/<bus id>/numa_node, /sys/devices/system/node/node<N>/cpulist), as the
    NVIDIA reference does. When it is unknown (no nvidia-smi, numa_node -1), the process is left unpinned
    and one log line says why.

    Args:
      local_rank: int, index of this process on its node.
      local_size: int >= 1, processes on this node.
      gpu_id: int, this process's visible GPU index.
      environ: mapping with CUDA_VISIBLE_DEVICES (default os.environ).
      sysfs, bus_ids, task_dir: for tests (default: the real sysfs, nvidia-smi, /proc/self/task).

    Returns:
      The sorted list of CPUs this process is now pinned to, or None when it was left alone.
    """
    environ = os.environ if environ is None else environ
    bus_ids = gpu_bus_ids() if bus_ids is None else bus_ids
    gpus = _physical_gpus(max(local_size, local_rank + 1), gpu_id, local_rank, environ)
    cpus, node = numa_cpu_share(local_rank, gpus, bus_ids, set(os.sched_getaffinity(0)), sysfs)
    if cpus is None:
        logger.info("CPU affinity: not set for local rank %d (%s)", local_rank, node)
        return None
    _set_process_affinity(cpus, task_dir)
    logger.info("CPU affinity: local rank %d (GPU %s, NUMA node %d) on CPUs %s", local_rank,
                gpus[local_rank], node, _format_cpulist(cpus))
    return cpus


def _format_cpulist(cpus):
    """[0, 1, 2, 5] -> "0-2,5"."""
    ranges, start = [], None
    for i, cpu in enumerate(cpus):
        if start is None:
            start = cpu
        if i + 1 == len(cpus) or cpus[i + 1] != cpu + 1:
            ranges.append(f"{start}-{cpu}" if cpu != start else f"{cpu}")
            start = None
    return ",".join(ranges)


def seed_process(seed, rank):
    """Seed Paddle's global generator (dropout) and return the per-rank seed.

    Parameter initialisation does not depend on this (modeling seeds every weight by name, identical on
    all ranks); dropout masks must differ between ranks, hence seed + rank.
    """
    process_seed = seed + rank
    paddle.seed(process_seed)
    return process_seed


def init_runtime(device="auto", seed=42, environ=None, cpu_affinity=False):
    """Enable static mode, resolve the device, start the collective runtime and an executor.

    Args:
      device: `--device` value.
      seed: int, base seed; the process seeds its global generator with seed + rank.
      environ: mapping to read the rank layout from (default os.environ).
      cpu_affinity: on GPUs, pin each process to CPUs of its GPU's NUMA node (`pin_cpu_cores`); CPU runs are
        left alone (their OpenMP threads already share the cores, see utils.preflight).

    Returns:
      Runtime.

    Raises:
      ValueError: see `resolve_device` and `DistEnv.from_env`.
    """
    paddle.enable_static()
    dist_env = DistEnv.from_env(environ)
    resolved = resolve_device(device)
    if dist_env.world_size > 1:
        if resolved == "gpu":
            from paddle.distributed import fleet
            fleet.init(is_collective=True)
        else:
            # gloo: launch sets PADDLE_DISTRI_BACKEND=gloo for CPU processes.
            paddle.distributed.init_parallel_env()
            # The executor may run independent ops of a sub-block (the gradient-merge update) on
            # several threads in a different order on each rank; gloo then pairs all-reduces of
            # different gradients and aborts. Serial execution keeps every rank in program order.
            paddle.set_flags({"FLAGS_new_executor_serial_run": True})
        logger.info("rank %d of %d (%s)", dist_env.rank, dist_env.world_size,
                    "fleet collective" if resolved == "gpu" else "gloo all-reduce")
    # launch gives each process one GPU in FLAGS_selected_gpus; without launch it is the local rank.
    gpu_id = _env_int(os.environ if environ is None else environ, "FLAGS_selected_gpus",
                      dist_env.local_rank)
    place = paddle.CUDAPlace(gpu_id) if resolved == "gpu" else paddle.CPUPlace()
    if cpu_affinity and resolved == "gpu" and hasattr(os, "sched_setaffinity"):
        env = os.environ if environ is None else environ
        pin_cpu_cores(dist_env.local_rank, _env_int(env, "PADDLE_LOCAL_SIZE", dist_env.world_size),
                      gpu_id, env)
    seed_process(seed, dist_env.rank)
    return Runtime(device=resolved, dist=dist_env, place=place, exe=paddle.static.Executor(place))
