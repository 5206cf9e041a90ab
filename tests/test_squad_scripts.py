"""scripts/run_squad.sh (positional arguments -> run_squad.py flags, via DRY_RUN) and configs/squad_config.sh."""
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "run_squad.sh"
CONFIG = REPO / "configs" / "squad_config.sh"


def dry_run(*args, **env):
    full_env = {"PATH": "/usr/bin:/bin", "DRY_RUN": "1", "PYTHON": "py", **env}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full_env, timeout=60)


def flags(words):
    """--name=value / --name words of a command -> {name: value or True}."""
    out = {}
    for word in words:
        if word.startswith("--"):
            name, _, value = word[2:].partition("=")
            out[name] = value if value else True
    return out


def preset(name):
    proc = subprocess.run(["bash", "-c", f'source "{CONFIG}" && {name}'], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_defaults_are_the_reference_ones():
    proc = dry_run("ckpt/dir")
    assert proc.returncode == 0, proc.stderr
    words = shlex.split(proc.stdout)
    assert words[:4] == ["py", "-m", "paddle.distributed.launch", "--gpus=0,1,2,3,4,5,6,7"]
    assert words[4] == str(REPO / "run_squad.py")
    f = flags(words[5:])
    prep = REPO / "data" / "download" / "squad" / "v1.1"
    assert f == {"from-pretrained-params": "ckpt/dir", "mode": "train_eval",
                 "train-file": f"{prep}/train-v1.1.json", "predict-file": f"{prep}/dev-v1.1.json",
                 "train-batch-size": "32", "predict-batch-size": "32", "do-lower-case": True,
                 "learning-rate": "4.6e-5", "warmup-proportion": "0.2",
                 "seed": "1", "epochs": "2", "max-seq-length": "384", "doc-stride": "128", "max-query-length": "64",
                 "output-dir": str(REPO / "results"), "vocab-file": str(REPO / "vocab" / "bert-large-uncased-vocab.txt"),
                 "max-steps": "-1", "optimizer": "AdamW", "log-freq": "100", "device": "auto", "amp": True,
                 "use-dynamic-loss-scaling": True, "scale-loss": "128.0", "fuse-mha": True,
                 "report-file": str(REPO / "results" / "dllogger_8_amp.json")}


def test_every_positional_argument_maps_to_its_flag(tmp_path):
    args = ["init", "3", "4", "1e-4", "0.1", "fp32", "1", "7", str(tmp_path / "sq"), "v.txt", str(tmp_path / "o"),
            "eval", str(REPO / "bert_configs" / "bert-base-cased.json"), "50", "true", "5", "2", "true"]
    proc = dry_run(*args, DEVICE="cpu", SQUAD_VERSION="2.0")
    assert proc.returncode == 0, proc.stderr
    words = shlex.split(proc.stdout)
    assert words[0] == "py" and words[1] == str(REPO / "run_squad.py")  # one process: no launcher
    f = flags(words[2:])
    assert f["from-pretrained-params"] == "init" and f["epochs"] == "3" and f["mode"] == "eval"
    assert f["train-batch-size"] == f["predict-batch-size"] == "4"
    assert f["learning-rate"] == "1e-4" and f["warmup-proportion"] == "0.1" and f["seed"] == "7"
    assert f["predict-file"] == f"{tmp_path}/sq/dev-v2.0.json" and "train-file" not in f
    assert f["version-2-with-negative"] is True
    assert f["vocab-file"] == "v.txt" and f["output-dir"] == f"{tmp_path}/o"
    assert f["config-file"].endswith("bert-base-cased.json") and f["bert-model"] == "bert-base-cased"
    assert "do-lower-case" not in f  # a cased model
    assert f["max-steps"] == "50" and f["device"] == "cpu"
    assert f["benchmark"] is True and f["benchmark-steps"] == "5" and f["benchmark-warmup-steps"] == "2"
    assert not {"amp", "fuse-mha", "scale-loss"} & set(f)  # fp32: no AMP, and fused MHA only with AMP
    assert f["report-file"] == f"{tmp_path}/o/dllogger_1_fp32.json"
    assert not (tmp_path / "o").exists()  # a dry run creates nothing


def test_cpu_processes_use_gloo_launch():
    words = shlex.split(dry_run("c", "2", "8", "1e-4", "0.1", "bf16", "2", DEVICE="cpu").stdout)
    assert words[:4] == ["py", "-m", "paddle.distributed.launch", "--nproc_per_node=2"]
    f = flags(words)
    assert f["amp"] is True and f["amp-dtype"] == "bfloat16" and f["fuse-mha"] is True
    assert "train-file" in f and "predict-file" in f


@pytest.mark.parametrize("args, message", [
    (["c", "0"], "<epochs> (argument 2) must be an integer >= 1"),
    (["c", "2", "32", "fast"], "<learning_rate> (argument 4)"),
    (["c", "2", "32", "1e-4", "0.1", "fp16"], "<precision> (argument 6)"),
    (["c", "2", "32", "1e-4", "0.1", "amp", "8", "1", "d", "v", "o", "predict"], "<mode> (argument 12)"),
    (["c", "2", "32", "1e-4", "0.1", "amp", "8", "1", "d", "v", "o", "train", "None", "0"], "<max_steps>"),
    (["c", "2", "32", "1e-4", "0.1", "amp", "8", "1", "d", "v", "o", "train", "None", "-1", "yes"],
     "<enable_benchmark>"),
    (["x"] * 19, "at most 18"),
])
def test_bad_arguments_fail_with_one_line(args, message):
    proc = dry_run(*args)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("run_squad.sh: error: ") and message in lines[0]


def test_presets_have_18_values_and_tf32_is_fp32():
    amp, tf32, cpu = preset("dgxa100-80g_8gpu_amp"), preset("dgxa100-80g_8gpu_tf32"), preset("cpu_demo")
    assert len(amp) == len(tf32) == len(cpu) == 18
    assert amp[5] == "amp" and tf32[5] == "fp32"  # the reference's tf32 preset said amp
    assert [v for i, v in enumerate(amp) if i != 5] == [v for i, v in enumerate(tf32) if i != 5]
    assert amp[:5] == [str(REPO / "results/bert-large-uncased/phase2/1563"), "2", "32", "4.6e-5", "0.2"]
    assert amp[6:8] == ["8", "1"] and amp[11] == "train_eval" and amp[13:] == ["-1", "false", "100", "100", "true"]
    assert cpu[5] == "fp32" and cpu[6] == "1" and cpu[12].endswith("bert-tiny.json")


def test_presets_drive_the_script():
    for name in ("dgxa100-80g_8gpu_tf32", "cpu_demo"):
        proc = dry_run(*preset(name))
        assert proc.returncode == 0, proc.stderr
        f = flags(shlex.split(proc.stdout))
        assert "amp" not in f
    f = flags(shlex.split(dry_run(*preset("cpu_demo")).stdout))
    assert f["bert-model"] == "bert-tiny" and f["max-steps"] == "100" and f["do-lower-case"] is True


def test_dry_run_lists_what_a_real_run_needs(tmp_path):
    """Issue 14 item 1: the dry run printed its command with nothing present and said nothing."""
    proc = dry_run(str(tmp_path / "ckpt"), "2", "32", "4.6e-5", "0.2", "fp32", "1", "1", str(tmp_path / "squad"),
                   str(tmp_path / "vocab.txt"))
    assert proc.returncode == 0 and "run_squad.py" in proc.stdout
    missing = [line for line in proc.stderr.splitlines() if line.startswith("run_squad.sh: missing: ")]
    assert len(missing) == 5 and "4 thing(s)" in missing[0]
    for path in ("ckpt", "squad/train-v1.1.json", "squad/dev-v1.1.json", "vocab.txt"):
        assert sum(str(tmp_path / path) in line for line in missing) == 1, path
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "vocab.txt").write_text("[PAD]\n")
    proc = dry_run(str(tmp_path / "ckpt"), "2", "32", "4.6e-5", "0.2", "fp32", "1", "1", "data/samples/squad",
                   str(tmp_path / "vocab.txt"))
    assert proc.returncode == 0 and proc.stderr == ""


def test_default_vocab_is_the_repos_wherever_the_script_runs(tmp_path):
    """Issue 14 item 7: "run from anywhere", yet the default vocab path was relative to the current dir."""
    proc = subprocess.run(["bash", str(SCRIPT), "ckpt"], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin", "DRY_RUN": "1", "PYTHON": "py"})
    assert flags(shlex.split(proc.stdout))["vocab-file"] == str(REPO / "vocab" / "bert-large-uncased-vocab.txt")


def test_cpu_demo_preset_runs_on_the_embedded_sample_without_a_download(tmp_path):
    """Issue 14 item 2: the README's cpu_demo command pointed at data/download/squad (absent on a fresh clone)."""
    env = {"PATH": "/usr/bin:/bin", "BERT_PREP_WORKING_DIR": str(tmp_path)}
    out = subprocess.run(["bash", "-c", f'source "{CONFIG}" && cpu_demo'], capture_output=True, text=True,
                         timeout=60, env=env).stdout.split()
    assert out[8] == str(REPO / "data" / "samples" / "squad") and out[1] == "10"
    (tmp_path / "squad" / "v1.1").mkdir(parents=True)
    (tmp_path / "squad" / "v1.1" / "train-v1.1.json").write_text("{}")
    out = subprocess.run(["bash", "-c", f'source "{CONFIG}" && cpu_demo'], capture_output=True, text=True,
                         timeout=60, env=env).stdout.split()
    assert out[8] == str(tmp_path / "squad" / "v1.1") and out[1] == "1"


# ------------------------------------------------------------------------ GPUs checked before launching
def run_for_real(tmp_path, *args, python, **env):
    """The script without DRY_RUN: it launches `python` (a real interpreter or a stub)."""
    full_env = {"PATH": "/usr/bin:/bin", "PYTHON": str(python), **env}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full_env, timeout=120,
                          cwd=tmp_path)


def reference_args(tmp_path, num_gpus="8"):
    """The reference defaults, with out_dir (argument 11) under tmp_path."""
    return ["ckpt", "2", "32", "4.6e-5", "0.2", "amp", num_gpus, "1", str(tmp_path / "sq"), "vocab.txt",
            str(tmp_path / "out")]


def stub_python(tmp_path, gpus):
    """An interpreter stand-in: answers the GPU query with `gpus` and logs every other call."""
    stub = tmp_path / "python"
    stub.write_text(f'#!/bin/bash\nif [[ $1 == -c ]]; then echo {gpus}; else echo "ran $*" >> "{tmp_path}/calls"; fi\n')
    stub.chmod(0o755)
    return stub


def test_default_8_gpu_run_on_a_cpu_machine_fails_in_one_line_before_launching(tmp_path):
    import paddle
    if paddle.is_compiled_with_cuda():
        pytest.skip("a CUDA build of paddle: this test is about CPU-only machines")
    proc = run_for_real(tmp_path, *reference_args(tmp_path), python=REPO / ".venv" / "bin" / "python")
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("run_squad.sh: error: <num_gpus> (argument 7) asks for 8 GPU process(es) but no GPU "
                               "is usable: paddlepaddle-gpu is not installed")
    assert "cpu_demo" in lines[0]
    assert not (tmp_path / "out").exists()  # nothing launched, no log file


def test_fewer_visible_gpus_than_num_gpus_is_refused(tmp_path):
    proc = run_for_real(tmp_path, *reference_args(tmp_path), python=stub_python(tmp_path, 2))
    assert proc.returncode == 2 and not (tmp_path / "calls").exists() and not (tmp_path / "out").exists()
    assert proc.stderr.strip() == ("run_squad.sh: error: <num_gpus> (argument 7) asks for 8 GPU process(es) but 2 "
                                   "GPU(s) are visible; give at most 2, or on a CPU machine use the CPU preset: "
                                   "bash scripts/run_squad.sh $(source configs/squad_config.sh && cpu_demo) "
                                   "(or DEVICE=cpu)")


@pytest.mark.parametrize("num_gpus, device, gpus", [("8", "auto", 8), ("1", "auto", "nocuda"), ("2", "cpu", "nocuda"),
                                                    ("1", "gpu", 1)])
def test_runs_that_have_their_gpus_or_need_none_are_launched(tmp_path, num_gpus, device, gpus):
    proc = run_for_real(tmp_path, *reference_args(tmp_path, num_gpus), python=stub_python(tmp_path, gpus),
                        DEVICE=device)
    assert proc.returncode == 0, proc.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert len(calls) == 1 and "run_squad.py" in calls[0]
