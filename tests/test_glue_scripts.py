"""scripts/run_glue.sh (the seed's 15 positional arguments -> run_glue.py flags, via DRY_RUN) and
configs/glue_config.sh (the seed's DGX A100 presets, their tf32 twins and the CPU preset)."""
import shlex
import subprocess
from pathlib import Path

import pytest

from test_squad_scripts import flags

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "run_glue.sh"
CONFIG = REPO / "configs" / "glue_config.sh"


def run_script(*args, **env):
    full_env = {"PATH": "/usr/bin:/bin", "DRY_RUN": "1", "PYTHON": "py", **env}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full_env, timeout=60)


def preset(name, **env):
    proc = subprocess.run(["bash", "-c", f'source "{CONFIG}" && {name}'], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", **env})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_positional_arguments_map_to_flags(tmp_path):
    args = ["init", str(tmp_path / "RTE"), "v.txt", str(REPO / "bert_configs" / "bert-base-cased.json"),
            str(tmp_path / "o"), "RTE", "1", "32", "4", "3e-5", "0.2", "5", "fp32", "7", "eval", "prediction"]
    proc = run_script(*args, DEVICE="cpu", MAX_STEPS="9")
    assert proc.returncode == 0, proc.stderr
    words = shlex.split(proc.stdout)
    assert words[:2] == ["py", str(REPO / "run_glue.py")]  # one process: no launcher
    assert flags(words[2:]) == {
        "task-name": "RTE", "data-dir": str(tmp_path / "RTE"), "from-checkpoint": "init",  # no train: fine-tuned
        "mode": "eval_prediction", "vocab-file": "v.txt", "bert-model": "bert-base-cased",
        "output-dir": str(tmp_path / "o"), "train-batch-size": "8", "gradient-merge-steps": "4",
        "eval-batch-size": "32", "learning-rate": "3e-5", "warmup-proportion": "0.2", "epochs": "5",
        "max-steps": "9", "seed": "7", "max-seq-length": "128", "log-freq": "10", "optimizer": "AdamW",
        "device": "cpu", "config-file": str(REPO / "bert_configs" / "bert-base-cased.json"),
        "report-file": str(tmp_path / "o" / "dllogger_glue_rte_1_fp32.json")}  # cased model: no lower-casing


@pytest.mark.parametrize("name, task, batch, lr, warmup, amp", [
    ("mrpc_dgxa100_8gpu_fp16", "mrpc", "16", "1.8e-5", "0.3", True),
    ("mrpc_dgxa100_8gpu_tf32", "mrpc", "16", "1.8e-5", "0.3", False),
    ("sst-2_dgxa100_8gpu_fp16", "sst-2", "128", "1e-5", "0.1", True),
    ("sst-2_dgxa100_8gpu_tf32", "sst-2", "128", "1e-5", "0.1", False),
])
def test_dgxa100_presets_are_the_seeds_recipe(name, task, batch, lr, warmup, amp):
    values = preset(name)
    assert len(values) == 16 and values[-2:] == ["train", "eval"]  # 14 values + the two mode words
    words = shlex.split(run_script(*values).stdout)
    assert words[:4] == ["py", "-m", "paddle.distributed.launch", "--gpus=0,1,2,3,4,5,6,7"]
    f = flags(words[5:])
    assert int(batch) * 8 in (128, 1024)  # the seeds' global batches
    assert (f["task-name"], f["train-batch-size"], f["learning-rate"], f["warmup-proportion"], f["epochs"]) == (
        task, batch, lr, warmup, "3")
    assert f["mode"] == "train_eval" and "from-pretrained-params" in f
    assert ("amp" in f) == amp


def test_eight_gpu_preset_on_a_cpu_machine_stops_in_one_line():
    values = preset("mrpc_dgxa100_8gpu_fp16")
    python = REPO.parent / "main" / ".venv" / "bin" / "python"
    proc = run_script(*values, DRY_RUN="0", PYTHON=str(python if python.exists() else "python3"))
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("run_glue.sh: error: ")
    if python.exists():  # a CPU paddle build
        assert "asks for 8 GPU process(es)" in lines[0] and "mrpc_cpu" in lines[0]


def test_cpu_preset_runs_minilm_on_real_mrpc_on_one_process(tmp_path):
    values = preset("mrpc_cpu", MINILM_DIR=str(tmp_path / "m"))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.safetensors").write_bytes(b"")
    f = flags(shlex.split(run_script(*values).stdout)[2:])
    # no --bert-model: run_glue.py names a Hugging Face checkpoint after its own config (custom)
    assert f["from-pretrained-params"] == str(tmp_path / "m") and "bert-model" not in f
    assert "config-file" not in f and "amp" not in f and f["data-dir"].endswith("glue/MRPC")


@pytest.mark.parametrize("args, message", [
    (["i", "d", "v", "None", "o", "squad"], "<task_name> (argument 6) must be one of"),
    (["i", "d", "v", "None", "o", "mrpc", "1", "16", "3"], "must be a multiple of <gradient_accumulation_steps>"),
    (["i", "d", "v", "None", "o", "mrpc", "1", "16", "1", "1e-5", "1.5"], "<warmup_proportion> (argument 11)"),
    (["i", "d", "v", "None", "o", "mrpc", "1", "16", "1", "1e-5", "0.1", "3", "fp8"], "<precision> (argument 13)"),
    (["i", "d", "v", "None", "o", "mrpc", "1", "16", "1", "1e-5", "0.1", "3", "fp32", "2", "train", "test"],
     "<mode> (argument 15) must be train, eval, prediction"),
])
def test_bad_arguments_are_one_error_line(args, message):
    proc = run_script(*args)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr


def test_dry_run_lists_what_a_real_run_needs_and_names_follow_the_checkpoint(tmp_path):
    """Issue 14 items 1 and 6 for GLUE: the dry run lists what is missing; without a config file or
    BERT_MODEL no --bert-model is passed, so run_glue.py names outputs after the checkpoint's config."""
    proc = run_script(str(tmp_path / "ckpt"), str(tmp_path / "MRPC"), str(tmp_path / "v.txt"))
    assert proc.returncode == 0 and "run_glue.py" in proc.stdout
    missing = [line for line in proc.stderr.splitlines() if line.startswith("run_glue.sh: missing: ")]
    assert len(missing) == 4 and "3 thing(s)" in missing[0]
    assert "bert-model" not in flags(shlex.split(proc.stdout))


def test_a_real_run_lists_every_missing_input_before_stopping(tmp_path):
    """Issue 24 item 8: the real mrpc_cpu run named 1 missing input (run_glue.py stops at the first) where the
    dry run listed all 3; now both list them all, and nothing is launched."""
    values = preset("mrpc_cpu", MINILM_DIR=str(tmp_path / "m"), BERT_PREP_WORKING_DIR=str(tmp_path / "d"))
    proc = run_script(*values, DRY_RUN="0", PYTHON=str(tmp_path / "never-run"))
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    missing = [line for line in proc.stderr.splitlines() if line.startswith("run_glue.sh: missing: ")]
    assert len(missing) == 4 and "3 thing(s)" in missing[0], proc.stderr
    assert [a in m for a, m in zip(("argument 1", "argument 2", "argument 3"), missing[1:])] == [True] * 3
    assert proc.stderr.splitlines()[-1].startswith("run_glue.sh: error: stopped before launching: 3 input(s)")
    assert not (tmp_path / "results").exists()


def test_cpu_demo_preset_fine_tunes_the_pretraining_demos_bert_tiny_on_mrpc(tmp_path):
    """Issue 24 item 8: a CPU GLUE first try of a few minutes (1.5 min on 2 shared cores): the bert-tiny the
    pretraining cpu_demo leaves, its demo vocab, real MRPC, one process, fp32, 1 epoch of batch 32."""
    env = dict(RESULTS_DIR=str(tmp_path / "r"), DEMO_DIR=str(tmp_path / "demo"), BERT_PREP_WORKING_DIR=str(tmp_path))
    values = preset("mrpc_cpu_demo", **env)
    assert len(values) == 16 and values[-2:] == ["train", "eval"]
    proc = run_script(*values)
    assert proc.returncode == 0, proc.stderr
    words = shlex.split(proc.stdout)
    assert words[:2] == ["py", str(REPO / "run_glue.py")]  # one process: no launcher
    f = flags(words[2:])
    assert f["from-pretrained-params"] == str(tmp_path / "r" / "bert-tiny" / "phase2" / "30")
    assert f["vocab-file"] == str(tmp_path / "demo" / "vocab.txt") and f["data-dir"] == str(tmp_path / "glue" / "MRPC")
    assert f["config-file"] == str(REPO / "bert_configs" / "bert-tiny.json") and f["bert-model"] == "bert-tiny"
    assert (f["train-batch-size"], f["epochs"], f["mode"]) == ("32", "1", "train_eval") and "amp" not in f
    assert "do-lower-case" in f
    missing = [line for line in proc.stderr.splitlines() if line.startswith("run_glue.sh: missing: ")]
    assert len(missing) == 4 and "3 thing(s)" in missing[0]  # checkpoint, MRPC and vocab of a fresh clone
