"""utils.runtime / utils.preflight / tasks.flags: rank layout, device choice, thread defaults, shared flags."""
import argparse

import pytest

from tasks import flags as common
from utils.preflight import default_threads, usable_cores
from utils.runtime import DistEnv, resolve_device


def test_dist_env_defaults_to_one_process():
    assert DistEnv.from_env({}) == DistEnv(rank=0, world_size=1, local_rank=0)


def test_dist_env_reads_the_launch_variables():
    env = {"PADDLE_TRAINER_ID": "3", "PADDLE_TRAINERS_NUM": "8", "PADDLE_LOCAL_RANK": "1"}
    dist = DistEnv.from_env(env)
    assert (dist.rank, dist.world_size, dist.local_rank, dist.is_main) == (3, 8, 1, False)


@pytest.mark.parametrize("env, message", [
    ({"PADDLE_TRAINER_ID": "2", "PADDLE_TRAINERS_NUM": "2"}, "inconsistent"),
    ({"PADDLE_TRAINERS_NUM": "two"}, "PADDLE_TRAINERS_NUM"),
])
def test_dist_env_errors(env, message):
    with pytest.raises(ValueError, match=message):
        DistEnv.from_env(env)


def test_device_resolution_on_a_cpu_machine():
    import paddle
    if paddle.is_compiled_with_cuda():
        pytest.skip("GPU build")
    assert resolve_device("auto") == "cpu"
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="--device gpu: this paddlepaddle build has no CUDA"):
        resolve_device("gpu")
    with pytest.raises(ValueError, match="--device must be one of"):
        resolve_device("tpu")


def test_default_threads_share_the_cores_between_local_processes():
    cores = usable_cores()
    assert default_threads({}) == cores
    assert default_threads({"PADDLE_TRAINERS_NUM": "2"}) == max(1, cores // 2)
    assert default_threads({"PADDLE_LOCAL_SIZE": "1", "PADDLE_TRAINERS_NUM": "16"}) == cores
    assert default_threads({"PADDLE_TRAINERS_NUM": "many"}) == cores


@pytest.mark.parametrize("text, value", [("true", True), ("False", False), ("1", True), ("no", False)])
def test_str2bool(text, value):
    assert common.str2bool(text) is value


def test_str2bool_rejects_other_text():
    with pytest.raises(argparse.ArgumentTypeError):
        common.str2bool("maybe")


def _amp(**kw):
    base = dict(amp=False, amp_dtype="float16", use_pure_fp16=False, scale_loss=None,
                use_dynamic_loss_scaling=None)  # the parser's defaults
    return argparse.Namespace(**{**base, **kw})


def test_amp_fields():
    assert common.amp_fields(_amp()) == {"amp": "off", "use_pure_fp16": False}
    assert common.amp_fields(_amp(amp=True, amp_dtype="bfloat16")) == {"amp": "bf16", "use_pure_fp16": False}
    assert common.amp_fields(_amp(amp=True, scale_loss=2.0 ** 20, use_dynamic_loss_scaling=True)) == {
        "amp": "fp16", "use_pure_fp16": False, "scale_loss": 2.0 ** 20, "use_dynamic_loss_scaling": True}
    assert common.amp_fields(_amp(amp=True)) == {  # --amp alone: dynamic from TrainConfig's 2^15
        "amp": "fp16", "use_pure_fp16": False, "scale_loss": None, "use_dynamic_loss_scaling": True}
    # Contradictions are refused where the AMP rules live (program.TrainConfig), in the flags' words.
    from tasks.config import PrecisionConfig, train_config
    for flags in (_amp(use_pure_fp16=True), _amp(amp=True, amp_dtype="bfloat16", use_pure_fp16=True)):
        precision = PrecisionConfig(amp=common.amp_fields(flags), fuse_mha=False)
        with pytest.raises(ValueError, match="--use-pure-fp16 needs --amp with --amp-dtype float16"):
            train_config(None, precision, total_steps=1, seed=0, device="gpu")


def test_resolve_bert_config_takes_vocab_size_from_the_vocab(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]) + "\n")
    cfg, path, size = common.resolve_bert_config("bert-tiny", None, str(vocab))
    assert size == 7 and cfg.vocab_size == 7 and cfg.padded_vocab_size == 8
    assert path.endswith("bert_configs/bert-tiny.json") and cfg.hidden_size == 128
    with pytest.raises(ValueError, match="--bert-model custom needs --config-file"):
        common.resolve_bert_config("custom", None, str(vocab))
    with pytest.raises(ValueError, match="--vocab-file"):
        common.resolve_bert_config("bert-tiny", None, str(tmp_path / "missing.txt"))


# A DGX A100 as sysfs shows it: 2 sockets x 4 NUMA nodes (NPS4) of 16 cores, SMT siblings numbered +128,
# and GPUs attached to nodes 3, 3, 1, 1, 7, 7, 5, 5 (not monotonic).
DGX_GPU_NODES = [3, 3, 1, 1, 7, 7, 5, 5]


def fake_dgx_sysfs(root):
    for node in range(8):
        cores = range(16 * node, 16 * node + 16)
        (root / f"devices/system/node/node{node}").mkdir(parents=True)
        (root / f"devices/system/node/node{node}/cpulist").write_text(
            f"{16 * node}-{16 * node + 15},{128 + 16 * node}-{128 + 16 * node + 15}\n")
        for core in cores:
            for cpu in (core, core + 128):
                topo = root / f"devices/system/cpu/cpu{cpu}/topology"
                topo.mkdir(parents=True)
                topo.joinpath("thread_siblings_list").write_text(f"{core},{core + 128}\n")
    bus_ids = {}
    for gpu, node in enumerate(DGX_GPU_NODES):
        bus = f"0000:{0x07 + 0x10 * gpu:02x}:00.0"
        (root / f"bus/pci/devices/{bus}").mkdir(parents=True)
        (root / f"bus/pci/devices/{bus}/numa_node").write_text(f"{node}\n")
        bus_ids[str(gpu)] = bus
    return bus_ids


@pytest.fixture
def affinity_calls(monkeypatch):
    import os
    calls = []
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(256)))
    monkeypatch.setattr(os, "sched_setaffinity", lambda tid, cpus: calls.append((tid, sorted(cpus))))
    return calls


def test_pin_by_numa_node_on_a_dgx_a100_topology(tmp_path, affinity_calls):
    from utils import runtime
    bus_ids = fake_dgx_sysfs(tmp_path / "sys")
    tasks = tmp_path / "task"
    for tid in (4242, 4243, 4250):  # the main thread and two started by paddle/fleet
        (tasks / str(tid)).mkdir(parents=True)
    pinned = {rank: runtime.pin_cpu_cores(rank, 8, rank, environ={}, sysfs=str(tmp_path / "sys"),
                                          bus_ids=bus_ids, task_dir=str(tasks)) for rank in range(8)}
    # Ranks 0 and 1 share node 3 (cores 48-63): 8 cores each, with their own SMT siblings.
    assert pinned[0] == list(range(48, 56)) + list(range(176, 184))
    assert pinned[1] == list(range(56, 64)) + list(range(184, 192))
    assert pinned[4] == list(range(112, 120)) + list(range(240, 248))  # node 7
    assert pinned[7] == list(range(88, 96)) + list(range(216, 224))    # node 5
    every = [cpu for cpus in pinned.values() for cpu in cpus]
    assert len(every) == len(set(every)) == 8 * 16  # disjoint, no rank on another's siblings
    # The whole process: every thread of it, not just the calling one.
    assert len(affinity_calls) == 8 * 3
    assert {tid for tid, _ in affinity_calls[:3]} == {4242, 4243, 4250}
    assert all(cpus == pinned[0] for _, cpus in affinity_calls[:3])


def test_pin_follows_cuda_visible_devices(tmp_path, affinity_calls):
    from utils import runtime
    bus_ids = fake_dgx_sysfs(tmp_path / "sys")
    # Two processes on physical GPUs 4 and 2 (nodes 7 and 1): each has a node to itself.
    environ = {"CUDA_VISIBLE_DEVICES": "4,2"}
    first = runtime.pin_cpu_cores(0, 2, 0, environ, sysfs=str(tmp_path / "sys"), bus_ids=bus_ids,
                                  task_dir=str(tmp_path / "none"))
    second = runtime.pin_cpu_cores(1, 2, 1, environ, sysfs=str(tmp_path / "sys"), bus_ids=bus_ids,
                                   task_dir=str(tmp_path / "none"))
    assert first == list(range(112, 128)) + list(range(240, 256))
    assert second == list(range(16, 32)) + list(range(144, 160))


def test_unknown_topology_leaves_the_process_alone_with_one_line(tmp_path, affinity_calls, caplog):
    import logging
    from utils import runtime
    bus_ids = fake_dgx_sysfs(tmp_path / "sys")
    (tmp_path / "sys/bus/pci/devices" / bus_ids["0"] / "numa_node").write_text("-1\n")
    with caplog.at_level(logging.INFO, logger="utils.runtime"):
        assert runtime.pin_cpu_cores(0, 8, 0, {}, sysfs=str(tmp_path / "sys"), bus_ids=bus_ids) is None
        assert runtime.pin_cpu_cores(0, 1, 0, {}, sysfs=str(tmp_path / "sys"), bus_ids={}) is None
    assert affinity_calls == []
    lines = [r.getMessage() for r in caplog.records if "CPU affinity" in r.getMessage()]
    assert len(lines) == 2 and all("not set" in line for line in lines)


def test_gpu_bus_ids_from_nvidia_smi():
    from utils import runtime
    out = ("0, GPU-aaaa, 00000000:07:00.0\n"
           "1, GPU-bbbb, 00000000:0F:00.0\n")
    assert runtime.gpu_bus_ids(run=lambda argv: out) == {
        "0": "0000:07:00.0", "GPU-aaaa": "0000:07:00.0", "1": "0000:0f:00.0", "GPU-bbbb": "0000:0f:00.0"}

    def missing(argv):
        raise FileNotFoundError("nvidia-smi")
    assert runtime.gpu_bus_ids(run=missing) == {}



# ------------------------------------------------------------------------------------- bf16 capability
AVX512_CORE = {"sse4_2", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq"}


def test_int8_is_fast_only_with_vnni_or_amx_int8():
    from utils.runtime import cpu_int8_flags

    assert cpu_int8_flags({"avx2", "amx_int8", "avx512_vnni", "avx512f"}) == ("avx512_vnni", "amx_int8")
    assert cpu_int8_flags({"avx2", "avx512f", "avx512bw"}) == ()
    assert cpu_int8_flags(set()) == ()


def test_cpu_flags_reads_the_flags_line(tmp_path):
    from utils.runtime import cpu_flags

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 avx512f amx_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(str(info)) == {"fpu", "avx2", "avx512f", "amx_bf16"}
    assert cpu_flags(str(tmp_path / "absent")) is None
    (tmp_path / "noflags").write_text("processor\t: 0\n")
    assert cpu_flags(str(tmp_path / "noflags")) is None


@pytest.mark.parametrize("flags, paddle_says, usable, native, reason", [
    (AVX512_CORE | {"avx512_bf16"}, True, True, True, ""),
    (AVX512_CORE | {"amx_bf16"}, True, True, True, ""),
    (AVX512_CORE, True, True, False, ""),  # oneDNN emulates bf16 on plain AVX-512
    ({"sse4_2", "avx2"}, False, False, False, "this CPU lacks avx512f, avx512bw, avx512vl, avx512dq"),
    (AVX512_CORE - {"avx512bw"}, False, False, False, "this CPU lacks avx512bw (AVX-512)"),
    (AVX512_CORE, False, False, False, "Paddle reports no bf16 support"),
])
def test_cpu_bf16_support_decides_with_paddle_and_explains_with_the_flags(flags, paddle_says, usable, native,
                                                                          reason, monkeypatch):
    import paddle
    from utils.runtime import cpu_bf16_support

    monkeypatch.setattr(paddle.base.core, "is_compiled_with_mkldnn", lambda: True)

    found = cpu_bf16_support(flags=flags, paddle_supports=paddle_says)
    assert (found.usable, found.native) == (usable, native)
    assert found.reason.startswith(reason) and bool(found.reason) == (not usable)


def test_cpu_bf16_support_defaults_agree_with_paddle():
    import paddle
    from utils.runtime import cpu_bf16_support

    assert cpu_bf16_support().usable == bool(paddle.base.core.supports_bfloat16())


def test_single_gpu_runs_the_compiled_program_with_the_build_strategy(static_graph):
    """Issue 15 item 12: single-GPU pretraining ran the plain Program, so the fusions never applied."""
    import paddle
    from utils.runtime import DistEnv, Runtime
    program, strategy = paddle.static.Program(), paddle.static.BuildStrategy()
    strategy.fuse_gemm_epilogue = True

    def runtime(device, world):
        return Runtime(device=device, dist=DistEnv(rank=0, world_size=world, local_rank=0),
                       place=paddle.CPUPlace(), exe=None)

    compiled = runtime("gpu", 1).runnable(program, strategy)
    assert isinstance(compiled, paddle.static.CompiledProgram)
    assert compiled._build_strategy is strategy and compiled._program is program
    assert runtime("gpu", 8).runnable(program, strategy) is program  # fleet applied the strategy itself
    assert runtime("cpu", 1).runnable(program, strategy) is program
    assert runtime("gpu", 1).runnable(program, None) is program
