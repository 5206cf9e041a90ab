"""utils.runtime / utils.preflight / utils.args: rank layout, device choice, thread defaults, shared flags."""
import argparse

import pytest

from utils import args as common
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
    assert common.amp_fields(_amp()) == {"amp": "off"}
    assert common.amp_fields(_amp(amp=True, amp_dtype="bfloat16")) == {"amp": "bf16"}
    assert common.amp_fields(_amp(amp=True, scale_loss=2.0 ** 20, use_dynamic_loss_scaling=True)) == {
        "amp": "fp16", "use_pure_fp16": False, "scale_loss": 2.0 ** 20, "use_dynamic_loss_scaling": True}
    assert common.amp_fields(_amp(amp=True)) == {  # --amp alone: dynamic from TrainConfig's 2^15
        "amp": "fp16", "use_pure_fp16": False, "scale_loss": None, "use_dynamic_loss_scaling": True}
    with pytest.raises(ValueError, match="needs --amp"):
        common.amp_fields(_amp(use_pure_fp16=True))
    with pytest.raises(ValueError, match="float16"):
        common.amp_fields(_amp(amp=True, amp_dtype="bfloat16", use_pure_fp16=True))


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


def test_pin_cpu_cores_gives_each_local_process_its_own_block(monkeypatch):
    import os
    from utils import runtime
    calls = []
    monkeypatch.setattr(os, "sched_setaffinity", lambda pid, cores: calls.append(list(cores)))
    assert runtime.pin_cpu_cores(1, 4, cores=range(16)) == [4, 5, 6, 7]
    assert runtime.pin_cpu_cores(3, 4, cores=range(16)) == [12, 13, 14, 15]
    assert calls == [[4, 5, 6, 7], [12, 13, 14, 15]]
    assert runtime.pin_cpu_cores(0, 8, cores=[0, 1]) == [0, 1]  # fewer cores than processes: unchanged
    assert len(calls) == 2


# ------------------------------------------------------------------------------------- bf16 capability
AVX512_CORE = {"sse4_2", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq"}


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
