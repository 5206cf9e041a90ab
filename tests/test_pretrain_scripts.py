"""Tests of the pre-training launch scripts: syntax, presets, and the exact commands they produce.

The scripts are run for real, with DRY_RUN=1 (they print each command) or with fake `python`,
`srun` and `docker` executables that record their arguments, so no training, Slurm or Docker is needed.
The training commands are also parsed with run_pretraining.py's own argument parser, so a flag that the
scripts pass but the program does not know fails here.
"""
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "scripts" / "run_pretraining.sh"
CONFIGS = REPO / "configs" / "pretrain_config.sh"
SHELL_FILES = [
    "scripts/run_pretraining.sh", "scripts/run_pretraining_p1.sh", "scripts/run_pretraining_p2.sh",
    "configs/pretrain_config.sh", "scripts/configs/pretrain_config.sh", "run.sub",
    "scripts/docker/build.sh", "scripts/docker/launch.sh",
]
PY = "fakepy"  # PYTHON for dry runs: printed, never executed


def _env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("DEVICE", "DRY_RUN", "RESULTS_DIR", "VOCAB_FILE", "BERT_MODEL", "KEEP_CHECKPOINTS",
                        "SEQUENCE_LENGTH_ALIGNMENT", "BERT_PREP_WORKING_DIR", "PYTHON", "CONT")}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _bash(script, args=(), **env):
    return subprocess.run(["bash", str(script), *map(str, args)], cwd=REPO, env=_env(**env),
                          capture_output=True, text=True, timeout=60)


def _preset(name, **env):
    out = subprocess.run(["bash", "-c", f'source "{CONFIGS}" && {name}'], cwd=REPO, env=_env(**env),
                         capture_output=True, text=True, check=True)
    return out.stdout.split()


def _dry_run(args, tmp_path, **env):
    """Run run_pretraining.sh with DRY_RUN=1 (PYTHON=fakepy unless given); returns the printed commands as argv
    lists."""
    env.setdefault("RESULTS_DIR", tmp_path / "results")
    env.setdefault("PYTHON", PY)
    proc = _bash(RUN, args, DRY_RUN=1, **env)
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line) for line in proc.stdout.splitlines()]


def _flags(cmd):
    """The run_pretraining.py flags of a training command, as a sorted list (order does not matter)."""
    script = next(i for i, word in enumerate(cmd) if word.endswith("run_pretraining.py"))
    return sorted(cmd[script + 1:])


def _write_executable(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


@pytest.fixture
def fake_bin(tmp_path):
    """A bin dir whose `recorder` appends its argv (one shell-quoted line) to $RECORD, then exits $FAKE_RC;
    asked how many GPUs paddle sees (`-c <code>`, the scripts' pre-launch check) it answers 8. The launcher's
    questions (`-m tasks.launch_query ...`: global batch, latest checkpoint) go to the real interpreter, unrecorded:
    they are how the script decides, not what it runs (with $FAKE_QUERY_RC set, they fail with that status)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _write_executable(bindir / "recorder", '#!/usr/bin/env bash\n'
                      'if [[ $1 == -c ]]; then echo 8; exit 0; fi\n'
                      'if [[ $1 == -m && $2 == tasks.launch_query ]]; then\n'
                      '  [[ -z ${FAKE_QUERY_RC:-} ]] || exit "$FAKE_QUERY_RC"\n'
                      f'  exec {shlex.quote(sys.executable)} "$@"\nfi\n'
                      'printf "%q " "$@" >> "$RECORD"; printf "\\n" >> "$RECORD"\n'
                      'echo "recorder ran: $*"\nexit "${FAKE_RC:-0}"\n')
    return bindir


def _recorded(path):
    return [shlex.split(line) for line in Path(path).read_text().splitlines()] if Path(path).exists() else []


# ------------------------------------------------------------------------------------------ syntax
@pytest.mark.parametrize("name", SHELL_FILES)
def test_bash_syntax(name):
    proc = subprocess.run(["bash", "-n", str(REPO / name)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_clean():
    proc = subprocess.run(["shellcheck", "-x", "-s", "bash", *SHELL_FILES], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout


# ------------------------------------------------------------------------------------------ presets
DGX_AMP = ["256", "6e-3", "amp", "8", "0.2843", "7038", "200", "false", "32", "42", "bert_lamb_pretraining",
           "32", "4e-3", "0.128", "1563", "128"]
DGX_TF32 = ["128", "6e-3", "tf32", "8", "0.2843", "7038", "200", "false", "64", "42", "bert_lamb_pretraining",
            "16", "4e-3", "0.128", "1563", "256"]


@pytest.mark.parametrize("name, head, fuse", [("dgxa100-80g_8gpu_amp", DGX_AMP, "true"),
                                              ("dgxa100-80g_8gpu_tf32", DGX_TF32, "false")])
def test_dgxa100_presets_carry_the_reference_numbers(name, head, fuse, tmp_path):
    values = _preset(name, BERT_PREP_WORKING_DIR=tmp_path)
    assert len(values) == 32
    assert values[:16] == head
    assert values[16:21] == [f"{tmp_path}/pretrain/phase1/unbinned/parquet",
                             f"{tmp_path}/pretrain/phase2/bin_size_64/parquet", str(REPO), "None",
                             f"{tmp_path}/wikipedia/source"]
    assert values[21:] == ["128", "128", "4", "0.9", "64", "static",
                           str(REPO / "bert_configs" / "bert-large-uncased.json"), "false", "10", "10", fuse]


def test_cpu_demo_preset_is_small_and_offline():
    values = _preset("cpu_demo")
    assert len(values) == 32
    assert values[2] == "fp32" and values[3] == "1"            # fp32, one process
    assert values[20] == f"sample:{REPO}/demo_output/source"    # the embedded corpus
    assert values[27] == str(REPO / "bert_configs" / "bert-tiny.json")
    assert int(values[5]) * int(values[0]) <= 10_000 and int(values[14]) <= 100


def test_scripts_configs_path_sources_the_same_presets():
    proc = subprocess.run(["bash", "-c", "source scripts/configs/pretrain_config.sh && cpu_demo && "
                           "dgxa100-80g_8gpu_amp"], cwd=REPO, env=_env(), capture_output=True, text=True,
                          check=True)
    assert proc.stdout.split() == _preset("cpu_demo") + _preset("dgxa100-80g_8gpu_amp")


# ------------------------------------------------------------------------------------------ dry runs
def _dgx_args(tmp_path, name="dgxa100-80g_8gpu_amp"):
    (tmp_path / "wikipedia" / "source").mkdir(parents=True)
    (tmp_path / "wikipedia" / "source" / "wiki-0.txt").write_text("1 A document.\n")
    return _preset(name, BERT_PREP_WORKING_DIR=tmp_path)


def _expected_training_flags(phase, tmp_path, results):
    model = "bert-large-uncased"
    if phase == 1:
        specific = ["--phase1", f"--input-dir={tmp_path}/pretrain/phase1/unbinned/parquet", "--batch-size=256",
                    "--max-seq-length=128", "--max-predictions-per-seq=20", "--max-steps=7038",
                    "--warmup-proportion=0.2843", "--learning-rate=6e-3", "--gradient-merge-steps=32",
                    f"--from-checkpoint={results}/{model}/phase1", f"--report-file={results}/dllogger_p1.json"]
    else:
        specific = ["--phase2", f"--input-dir={tmp_path}/pretrain/phase2/bin_size_64/parquet", "--batch-size=32",
                    "--max-seq-length=512", "--max-predictions-per-seq=80", "--max-steps=1563",
                    "--warmup-proportion=0.128", "--learning-rate=4e-3", "--gradient-merge-steps=128",
                    f"--from-checkpoint={results}/{model}/phase2",
                    f"--from-phase1-final-params={results}/{model}/phase1/7038",
                    f"--report-file={results}/dllogger_p2.json"]
    common = [f"--vocab-file={REPO}/vocab/bert-large-uncased-vocab.txt", f"--output-dir={results}",
              f"--bert-model={model}", f"--config-file={REPO}/bert_configs/{model}.json", "--seed=42",
              "--log-freq=1", "--optimizer=Lamb", "--num-steps-per-checkpoint=200", "--num-workers=4",
              "--device=auto", "--amp", "--use-dynamic-loss-scaling", "--scale-loss=1048576", "--fuse-mha",
              "--last-step-of-checkpoint=auto"]
    return sorted(specific + common)


def test_dgxa100_amp_dry_run_prepares_data_then_runs_both_phases(tmp_path):
    results = tmp_path / "results"
    cmds = _dry_run(_dgx_args(tmp_path), tmp_path)
    assert len(cmds) == 6
    prep1, balance1, train1, prep2, balance2, train2 = cmds
    launch = [PY, "-m", "paddle.distributed.launch", "--gpus=0,1,2,3,4,5,6,7", f"{REPO}/run_pretraining.py"]
    assert train1[:5] == launch and train2[:5] == launch
    assert _flags(train1) == _expected_training_flags(1, tmp_path, results)
    assert _flags(train2) == _expected_training_flags(2, tmp_path, results)
    vocab = f"{REPO}/vocab/bert-large-uncased-vocab.txt"
    source = f"{tmp_path}/wikipedia/source"
    p1, p2 = f"{tmp_path}/pretrain/phase1/unbinned/parquet", f"{tmp_path}/pretrain/phase2/bin_size_64/parquet"
    assert prep1 == [PY, "-m", "data.prep.preprocess_bert_pretrain", "--wikipedia", source, "--sink", p1,
                     "--vocab-file", vocab, "--target-seq-length", "128", "--no-bin",
                     "--max-predictions-per-seq", "20", "--masking", "--sample-ratio", "0.9", "--seed", "42",
                     "--num-workers", "128"]
    assert prep2 == [PY, "-m", "data.prep.preprocess_bert_pretrain", "--wikipedia", source, "--sink", p2,
                     "--vocab-file", vocab, "--target-seq-length", "512", "--bin-size", "64",
                     "--max-predictions-per-seq", "80", "--masking", "--sample-ratio", "0.9", "--seed", "42",
                     "--num-workers", "128"]
    # 128 shards per loader worker x 4 workers x 8 GPUs
    assert balance1 == [PY, "-m", "data.prep.balance_dask_output", "--indir", p1, "--num-shards", "4096"]
    assert balance2 == [PY, "-m", "data.prep.balance_dask_output", "--indir", p2, "--num-shards", "4096"]


def test_existing_shards_skip_data_preparation(tmp_path):
    args = _dgx_args(tmp_path)
    for phase_dir in (args[16], args[17]):
        Path(phase_dir).mkdir(parents=True)
        (Path(phase_dir) / "shard-0.parquet").write_bytes(b"x")
    cmds = _dry_run(args, tmp_path)
    assert len(cmds) == 2 and "--phase1" in cmds[0] and "--phase2" in cmds[1]
    assert not [c for c in cmds if any(w.startswith("data.") for w in c)]


def test_only_the_missing_phase_is_prepared(tmp_path):
    args = _dgx_args(tmp_path)
    Path(args[16]).mkdir(parents=True)
    (Path(args[16]) / "shard-0.parquet").write_bytes(b"x")
    Path(args[17]).mkdir(parents=True)  # empty: counts as missing, replaced with --overwrite
    cmds = _dry_run(args, tmp_path)
    assert [c[2] if c[1] == "-m" else None for c in cmds] == [
        "paddle.distributed.launch", "data.prep.preprocess_bert_pretrain", "data.prep.balance_dask_output",
        "paddle.distributed.launch"]
    assert "--phase1" in cmds[0] and "--overwrite" in cmds[1] and "--phase2" in cmds[3]


def test_missing_corpus_is_an_early_error(tmp_path):
    args = _preset("dgxa100-80g_8gpu_amp", BERT_PREP_WORKING_DIR=tmp_path)  # no wikipedia/source
    proc = _bash(RUN, args, PYTHON=PY, RESULTS_DIR=tmp_path / "results")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "wikipedia_source" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("preset", ["dgxa100-80g_8gpu_amp", "dgxa100-80g_8gpu_tf32"])
def test_dry_run_on_a_fresh_clone_prints_the_plan_and_what_is_missing(tmp_path, preset):
    """Issue 14 item 1: the dry run exited 2 at the missing corpus and never looked at the vocab."""
    args = _preset(preset, BERT_PREP_WORKING_DIR=tmp_path)
    proc = _bash(RUN, args, DRY_RUN=1, PYTHON=PY, RESULTS_DIR=tmp_path / "results",
                 VOCAB_FILE=tmp_path / "no-vocab.txt")
    assert proc.returncode == 0, proc.stderr
    cmds = [shlex.split(line) for line in proc.stdout.splitlines()]
    modules = [c[2] for c in cmds]
    assert modules == ["data.prep.preprocess_bert_pretrain", "data.prep.balance_dask_output",
                       "paddle.distributed.launch"] * 2
    missing = [line for line in proc.stderr.splitlines() if line.startswith("run_pretraining.sh: missing: ")]
    assert len(missing) == 3 and "2 thing(s)" in missing[0]
    assert "wikipedia_source" in missing[1] and str(tmp_path / "wikipedia" / "source") in missing[1]
    assert str(tmp_path / "no-vocab.txt") in missing[2]
    assert not (tmp_path / "results").exists()


def test_cpu_demo_dry_run_single_process_on_the_sample_corpus(tmp_path):
    demo = f"{REPO}/demo_output"
    args = [v.replace(demo, str(tmp_path / "demo")) for v in _preset("cpu_demo")]
    cmds = _dry_run(args, tmp_path, DEVICE="cpu")
    modules = [c[2] if c[1] == "-m" else c[1] for c in cmds]
    assert modules == ["data.prep.sample_corpus", "data.prep.build_vocab",
                       "data.prep.preprocess_bert_pretrain", "data.prep.balance_dask_output",
                       f"{REPO}/run_pretraining.py",
                       "data.prep.preprocess_bert_pretrain", "data.prep.balance_dask_output",
                       f"{REPO}/run_pretraining.py"]
    vocab = f"{tmp_path}/demo/vocab.txt"
    assert cmds[1][cmds[1].index("--output") + 1] == vocab
    train1, train2 = cmds[4], cmds[7]
    assert train1[0] == PY and train2[0] == PY  # no launcher for one process
    for cmd in (train1, train2):
        assert f"--vocab-file={vocab}" in cmd and "--bert-model=bert-tiny" in cmd and "--device=cpu" in cmd
        assert f"--config-file={REPO}/bert_configs/bert-tiny.json" in cmd
        assert not {"--amp", "--fuse-mha", "--use-dynamic-loss-scaling"} & set(cmd)
    assert f"--from-phase1-final-params={tmp_path}/results/bert-tiny/phase1/{args[5]}" in train2
    # 4 shards per worker x 1 loader worker x 1 process
    assert cmds[3][-2:] == ["--num-shards", "4"]


@pytest.mark.parametrize("precision, expected", [
    ("amp", {"--amp", "--use-dynamic-loss-scaling", "--scale-loss=1048576"}),
    ("bf16", {"--amp", "--amp-dtype=bfloat16"}),
    ("fp32", set()), ("tf32", set())])
def test_precision_mapping(precision, expected, tmp_path):
    args = _dgx_args(tmp_path)
    args[2] = precision
    amp_flags = {"--amp", "--use-dynamic-loss-scaling", "--scale-loss=1048576", "--amp-dtype=bfloat16"}
    for cmd in _dry_run(args, tmp_path)[2::3]:
        assert amp_flags & set(cmd) == expected


def test_fuse_mha_false_and_device_cpu_processes(tmp_path):
    args = _dgx_args(tmp_path)
    args[3], args[31] = "2", "false"
    train = _dry_run(args, tmp_path, DEVICE="cpu")[2::3]
    for cmd in train:
        assert cmd[:4] == [PY, "-m", "paddle.distributed.launch", "--nproc_per_node=2"]
        assert "--fuse-mha" not in cmd and "--device=cpu" in cmd


def test_benchmark_mode_neither_resumes_nor_loads_phase1(tmp_path):
    args = _dgx_args(tmp_path)
    args[28:31] = ["true", "7", "3"]
    for cmd in _dry_run(args, tmp_path)[2::3]:
        assert {"--benchmark", "--benchmark-steps=7", "--benchmark-warmup-steps=3"} <= set(cmd)
        assert not [w for w in cmd if w.startswith(("--from-", "--last-step"))]


def test_init_checkpoint_and_custom_config(tmp_path):
    args = _dgx_args(tmp_path)
    custom = tmp_path / "my-bert.json"
    custom.write_text("{}")
    args[19], args[27] = str(tmp_path / "ckpt"), str(custom)
    train1, train2 = _dry_run(args, tmp_path)[2::3]
    assert f"--from-checkpoint={tmp_path}/ckpt" in train1
    assert "--bert-model=custom" in train1 and f"--config-file={custom}" in train2
    assert f"--from-phase1-final-params={tmp_path}/results/custom/phase1/7038" in train2


@pytest.mark.parametrize("position, value, word", [
    (3, "fp8", "precision"), (1, "12x", "train_batch_size"), (4, "0", "num_gpus"),
    (5, "1.5", "warmup_proportion"), (27, "random", "masking"), (26, "100", "phase2_bin_size"),
    (32, "yes", "fuse_mha"), (28, "/nonexistent/bert.json", "bert_config_file")])
def test_bad_argument_exits_2_with_one_line(position, value, word, tmp_path):
    args = _dgx_args(tmp_path)
    args[position - 1] = value
    proc = _bash(RUN, args, DRY_RUN=1, PYTHON=PY)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and word in lines[0] and value in lines[0], proc.stderr


def test_too_many_arguments_and_bad_device(tmp_path):
    args = _dgx_args(tmp_path)
    proc = _bash(RUN, args + ["extra"], DRY_RUN=1, PYTHON=PY)
    assert proc.returncode == 2 and "at most 32" in proc.stderr
    proc = _bash(RUN, args, DRY_RUN=1, PYTHON=PY, DEVICE="tpu")
    assert proc.returncode == 2 and "DEVICE" in proc.stderr


def test_training_flags_are_known_to_run_pretraining(tmp_path):
    run_pretraining = pytest.importorskip("run_pretraining")
    parser = run_pretraining.build_parser()
    args = _dgx_args(tmp_path)
    args[2] = "bf16"
    for cmd in _dry_run(args, tmp_path)[2::3]:
        parsed = parser.parse_args(_flags(cmd))
        assert parsed.bert_model == "bert-large-uncased" and parsed.amp
    demo = [v.replace(f"{REPO}/demo_output", str(tmp_path / "demo")) for v in _preset("cpu_demo")]
    demo[28] = "true"
    for cmd in _dry_run(demo, tmp_path)[4::3]:
        parsed = parser.parse_args(_flags(cmd))
        assert parsed.benchmark and parsed.bert_model == "bert-tiny" and not parsed.amp


# ------------------------------------------------------------------------------------------ real runs (fake python)
def test_real_run_logs_to_file_and_stops_on_failure(tmp_path, fake_bin):
    args = _dgx_args(tmp_path)
    for phase_dir in (args[16], args[17]):
        Path(phase_dir).mkdir(parents=True)
        (Path(phase_dir) / "shard-0.parquet").write_bytes(b"x")
    args[7] = "true"  # create_logfile
    (tmp_path / "vocab.txt").write_text("[PAD]\n")
    record, results = tmp_path / "record.txt", tmp_path / "results"
    common = dict(PYTHON=fake_bin / "recorder", RECORD=record, RESULTS_DIR=results,
                  VOCAB_FILE=tmp_path / "vocab.txt")
    proc = _bash(RUN, args, **common)
    assert proc.returncode == 0, proc.stderr
    assert [("--phase1" in c, "--phase2" in c) for c in _recorded(record)] == [(True, False), (False, True)]
    logs = sorted(p.name for p in results.glob("*.log"))
    assert len(logs) == 2 and all(re.fullmatch(
        r"bert_lamb_pretraining\.paddle_bert_pretraining_phase[12]_amp_gbs\d+\.\d{12}\.log", n) for n in logs)
    assert "gbs65536" in logs[0] and "gbs32768" in logs[1]  # 256*8*32 and 32*8*128
    assert "recorder ran:" in (results / logs[0]).read_text()
    record.unlink()
    proc = _bash(RUN, args, FAKE_RC=3, **common)
    assert proc.returncode == 3 and len(_recorded(record)) == 1  # phase 2 never starts


@pytest.mark.parametrize("script, phase", [("scripts/run_pretraining_p1.sh", 1), ("scripts/run_pretraining_p2.sh", 2)])
def test_named_flag_scripts(script, phase, tmp_path, fake_bin):
    record = tmp_path / "record.txt"
    proc = _bash(REPO / script, ["--max-steps=5"], PYTHON=fake_bin / "recorder", RECORD=record)
    assert proc.returncode == 0, proc.stderr
    (cmd,) = _recorded(record)
    assert cmd[:4] == ["-m", "paddle.distributed.launch", "--gpus=0,1,2,3,4,5,6,7", "run_pretraining.py"]
    assert f"--phase{phase}" in cmd and f"--report-file=results/dllogger_p{phase}.json" in cmd
    assert f"--from-checkpoint=results/bert-large-uncased/phase{phase}" in cmd and cmd[-1] == "--max-steps=5"
    assert ("--from-phase1-final-params=results/bert-large-uncased/phase1/7038" in cmd) == (phase == 2)
    run_pretraining = pytest.importorskip("run_pretraining")
    assert run_pretraining.build_parser().parse_args(cmd[4:]).max_steps == 5


# ------------------------------------------------------------------------------------------ run.sub
def _slurm_env(tmp_path, **extra):
    data = tmp_path / "data"
    shards = data / "pretrain" / "phase1" / "unbinned" / "parquet"
    shards.mkdir(parents=True, exist_ok=True)
    (shards / "shard-0.parquet").write_bytes(b"x")
    env = dict(SLURM_JOB_ID="77", SLURM_JOB_NUM_NODES="4", SLURM_GPUS_ON_NODE="8", DATADIR=data,
               RESULTS=tmp_path / "res", MASTER_ADDR="10.0.0.1")
    env.update(extra)
    return env


def test_run_sub_one_launcher_per_node(tmp_path, fake_bin):
    _write_executable(fake_bin / "srun", '#!/usr/bin/env bash\n'
                      'printf "%q " "$@" >> "$SRUN_RECORD"; printf "\\n" >> "$SRUN_RECORD"\n'
                      'while [[ $1 == --* ]]; do shift; done\nSLURM_NODEID=3 exec "$@"\n')
    env = _slurm_env(tmp_path, PATH=f"{fake_bin}:{os.environ['PATH']}", PYTHON=fake_bin / "recorder",
                     RECORD=tmp_path / "record.txt", SRUN_RECORD=tmp_path / "srun.txt")
    proc = _bash(REPO / "run.sub", **env)
    assert proc.returncode == 0, proc.stderr
    (srun,) = _recorded(tmp_path / "srun.txt")
    assert srun[:2] == ["--nodes=4", "--ntasks-per-node=1"] and "--mpi=pmix" not in srun
    (cmd,) = _recorded(tmp_path / "record.txt")
    assert cmd[:7] == ["-m", "paddle.distributed.launch", "--master=10.0.0.1:36123", "--nnodes=4", "--rank=3",
                       cmd[5], "--gpus=0,1,2,3,4,5,6,7"] and cmd[5].startswith("--host=")
    assert cmd[8] == f"{REPO}/run_pretraining.py" and "--phase1" in cmd and "--amp" in cmd
    run_pretraining = pytest.importorskip("run_pretraining")
    assert run_pretraining.build_parser().parse_args(cmd[9:]).batch_size == 256


def test_run_sub_phase2_in_container_builds_missing_shards(tmp_path):
    env = _slurm_env(tmp_path, PHASE=2, CONT="bert:latest", GPUS_PER_NODE=2, DRY_RUN=1)
    proc = _bash(REPO / "run.sub", **env)
    assert proc.returncode == 0, proc.stderr
    prep, balance, train = [shlex.split(line) for line in proc.stdout.splitlines()]
    assert "--container-image=bert:latest" in prep
    assert prep[prep.index("python") + 2] == "data.prep.preprocess_bert_pretrain"
    assert balance[-2:] == ["--num-shards", str(128 * 4 * 4 * 2)]
    assert "--phase2" in train and "--gpus=0,1" not in train  # the GPU list is an argument of the task
    assert "0,1" in train and f"--from-phase1-final-params={tmp_path}/res/bert-large-uncased/phase1/7038" in train


def _srun_options(cmd):
    """The options of a printed `srun ...` command (up to the program it starts)."""
    assert cmd[0] == "srun"
    options = []
    for word in cmd[1:]:
        if not word.startswith("--"):
            break
        options.append(word)
    return options


def _mounts(options):
    (value,) = [o.split("=", 1)[1] for o in options if o.startswith("--container-mounts=")]
    return dict(m.split(":") for m in value.split(","))


def test_run_sub_requests_gpus_and_every_step_runs_in_the_code_dir(tmp_path):
    assert "#SBATCH --gpus-per-node=8\n" in (REPO / "run.sub").read_text()  # the job's own request
    data = tmp_path / "data"
    env = _slurm_env(tmp_path, PHASE=2, GPUS_PER_NODE=4, DRY_RUN=1, CODEDIR=tmp_path / "code")
    proc = _bash(REPO / "run.sub", **env)
    assert proc.returncode == 0, proc.stderr
    commands = [shlex.split(line) for line in proc.stdout.splitlines()]
    assert len(commands) == 3 and str(data) in " ".join(commands[0])  # prep, balance, train
    for cmd in commands:
        options = _srun_options(cmd)
        assert f"--chdir={tmp_path}/code" in options and "--kill-on-bad-exit=1" in options
    assert "--gpus-per-node=4" in _srun_options(commands[2])


def test_run_sub_mounts_inputs_outside_the_container_mounts(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    env = _slurm_env(tmp_path, PHASE=2, CONT="bert:latest", GPUS_PER_NODE=8, DRY_RUN=1,
                     VOCAB_FILE=elsewhere / "vocab" / "v.txt", CONFIG_FILE=elsewhere / "cfg" / "c.json",
                     INPUT_DIR=elsewhere / "shards" / "p2", PHASE1_FINAL=elsewhere / "p1" / "7038")
    proc = _bash(REPO / "run.sub", **env)
    assert proc.returncode == 0, proc.stderr
    commands = [shlex.split(line) for line in proc.stdout.splitlines()]
    for cmd in commands:
        mounts = _mounts(_srun_options(cmd))
        assert mounts[str(tmp_path / "data")] == str(tmp_path / "data")
        assert mounts[str(tmp_path / "res")] == str(tmp_path / "res")
        for inside in ("vocab", "cfg", "shards", "p1"):
            assert mounts[str(elsewhere / inside)] == str(elsewhere / inside), (inside, mounts)
    train = commands[-1]
    assert f"--vocab-file={elsewhere}/vocab/v.txt" in train
    assert f"--from-phase1-final-params={elsewhere}/p1/7038" in train
    # The defaults (inside the code and data mounts) add no mount.
    proc = _bash(REPO / "run.sub", **_slurm_env(tmp_path, CONT="bert:latest", DRY_RUN=1))
    (train,) = [shlex.split(line) for line in proc.stdout.splitlines()]
    assert len(_mounts(_srun_options(train))) == 3


def test_run_sub_refuses_a_relative_path_it_would_have_to_mount(tmp_path):
    proc = _bash(REPO / "run.sub", **_slurm_env(tmp_path, CONT="bert:latest", DRY_RUN=1,
                                                  VOCAB_FILE="vocab/v.txt"))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines()[-1] == (
        "run.sub: error: VOCAB_FILE must be an absolute path when CONT is set (it is mounted into the "
        "container), got 'vocab/v.txt'")


@pytest.mark.parametrize("extra, word", [({"PHASE": "3"}, "PHASE"), ({"PRECISION": "fp8"}, "PRECISION"),
                                         ({"SLURM_JOB_ID": ""}, "sbatch")])
def test_run_sub_rejects_bad_settings(extra, word, tmp_path):
    proc = _bash(REPO / "run.sub", **_slurm_env(tmp_path, DRY_RUN=1, **extra))
    assert proc.returncode == 2 and word in proc.stderr and proc.stdout == ""


# ------------------------------------------------------------------------------------------ docker
def test_docker_scripts_call_docker_as_documented(tmp_path, fake_bin):
    shutil.copy(fake_bin / "recorder", fake_bin / "docker")
    env = dict(PATH=f"{fake_bin}:{os.environ['PATH']}", RECORD=tmp_path / "record.txt")
    assert _bash(REPO / "scripts/docker/build.sh", **env).returncode == 0
    dirs = dict(RESULTS_DIR=tmp_path / "res", VOCAB_DIR=tmp_path / "voc", BERT_PREP_WORKING_DIR=tmp_path / "dat")
    assert _bash(REPO / "scripts/docker/launch.sh", ["nvidia-smi"], **env, **dirs).returncode == 0
    build, launch = _recorded(tmp_path / "record.txt")
    assert build[0] == "build" and build[-3:] == ["-t", "bert:latest", "."]
    assert launch[0] == "run" and launch[launch.index("--gpus") + 1] == "all" and launch[-2:] == [
        "bert:latest", "nvidia-smi"]
    mounts = {launch[i + 1] for i, w in enumerate(launch) if w == "-v"}
    assert mounts == {f"{REPO}:/workspace/bert", f"{tmp_path}/res:/workspace/bert/results",
                      f"{tmp_path}/voc:/workspace/bert/vocab", f"{tmp_path}/dat:/workspace/bert/data/download"}
    assert all((tmp_path / d).is_dir() for d in ("res", "voc", "dat"))


def test_dockerfile_keeps_the_gpu_paddle_and_the_other_pins():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG FROM_IMAGE_NAME=paddlepaddle/paddle:2\.6\.2-gpu-\S+$", text, re.M)
    assert "WORKDIR /workspace/bert" in text
    # The filter the Dockerfile applies to requirements.txt drops exactly the CPU paddle pin.
    pattern = re.search(r"grep -v -E '([^']+)' requirements\.txt", text).group(1)
    proc = subprocess.run(["grep", "-v", "-E", pattern, "requirements.txt"], cwd=REPO, capture_output=True,
                          text=True, check=True)
    kept = [line.split("==")[0] for line in proc.stdout.splitlines() if "==" in line and not line.startswith("#")]
    original = [line.split("==")[0] for line in (REPO / "requirements.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#")]
    assert "paddlepaddle" in original and kept == [name for name in original if name != "paddlepaddle"]
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", "results", "demo_output", "data/download"} <= set(ignored)


def test_8_gpu_preset_on_a_cpu_machine_fails_in_one_line_before_any_work(tmp_path):
    import paddle
    if paddle.is_compiled_with_cuda():
        pytest.skip("a CUDA build of paddle: this test is about CPU-only machines")
    results, vocab = tmp_path / "results", tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n")
    proc = _bash(RUN, _dgx_args(tmp_path), PYTHON=REPO / ".venv" / "bin" / "python", RESULTS_DIR=results,
                 VOCAB_FILE=vocab)
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("run_pretraining.sh: error: <num_gpus> (argument 4) asks for 8 GPU process(es) but no "
                           "GPU is usable") and "cpu_demo" in line
    assert not results.exists() and not (tmp_path / "wikipedia" / "phase1").exists()  # no data prepared


def test_init_checkpoint_seeds_phase1_only_until_phase1_has_checkpoints(tmp_path, fake_bin):
    from test_launch_query import write_checkpoint
    args = _dgx_args(tmp_path)
    args[19] = str(tmp_path / "ckpt")
    write_checkpoint(tmp_path / "results" / "bert-large-uncased" / "phase1", 200)  # a complete one, as a run saves
    train1 = _dry_run(args, tmp_path, PYTHON=fake_bin / "recorder")[2]
    assert f"--from-checkpoint={tmp_path}/results/bert-large-uncased/phase1" in train1  # resume own run


def test_a_damaged_phase1_checkpoint_is_no_checkpoint_for_the_launcher_either(tmp_path, fake_bin):
    """The launcher counts checkpoints by CheckpointManager's rule, as run_pretraining.py does when it refuses to
    mix runs: a step directory whose progress.json names no step neither stops <init_checkpoint> from seeding
    phase 1 nor finishes phase 1 (issue 21: the shell's own glob counted it)."""
    args = _dgx_args(tmp_path)
    args[19] = str(tmp_path / "ckpt")
    for step in ("200", "7038"):
        damaged = tmp_path / "results" / "bert-large-uncased" / "phase1" / step
        damaged.mkdir(parents=True)
        (damaged / "progress.json").write_text("{}")
    train1 = _dry_run(args, tmp_path, PYTHON=fake_bin / "recorder")[2]
    assert f"--from-checkpoint={tmp_path}/ckpt" in train1
    for phase_dir in (args[16], args[17]):
        Path(phase_dir).mkdir(parents=True)
        (Path(phase_dir) / "shard-0.parquet").write_bytes(b"x")
    (tmp_path / "vocab.txt").write_text("[PAD]\n")
    proc = _bash(RUN, args, PYTHON=fake_bin / "recorder", RECORD=tmp_path / "record.txt", STEPS_THIS_RUN=50,
                 RESULTS_DIR=tmp_path / "results", VOCAB_FILE=tmp_path / "vocab.txt")
    assert proc.returncode == 0 and "phase 1 stopped after STEPS_THIS_RUN=50" in proc.stderr, proc.stderr
    assert len(_recorded(tmp_path / "record.txt")) == 1


def test_a_dry_run_whose_python_cannot_answer_still_prints_the_plan(tmp_path):
    """DRY_RUN asks Python only when <init_checkpoint> is given and phase 1's directory exists; an interpreter
    that cannot answer (here the printed-only `fakepy`) becomes a `missing:` line, as a missing vocab does."""
    args = _dgx_args(tmp_path)
    args[19] = str(tmp_path / "ckpt")
    (tmp_path / "results" / "bert-large-uncased" / "phase1").mkdir(parents=True)
    proc = _bash(RUN, args, DRY_RUN=1, PYTHON=PY, RESULTS_DIR=tmp_path / "results")
    assert proc.returncode == 0, proc.stderr
    train1 = shlex.split(proc.stdout.splitlines()[2])
    assert f"--from-checkpoint={tmp_path}/ckpt" in train1
    missing = [line for line in proc.stderr.splitlines() if line.startswith("run_pretraining.sh: missing: ")]
    assert "tasks.launch_query latest-step failed" in missing[-1]


def test_a_real_run_whose_python_cannot_answer_stops_before_phase_2(tmp_path, fake_bin):
    args = _dgx_args(tmp_path)
    for phase_dir in (args[16], args[17]):
        Path(phase_dir).mkdir(parents=True)
        (Path(phase_dir) / "shard-0.parquet").write_bytes(b"x")
    (tmp_path / "vocab.txt").write_text("[PAD]\n")
    common = dict(PYTHON=fake_bin / "recorder", RECORD=tmp_path / "record.txt", RESULTS_DIR=tmp_path / "results",
                  VOCAB_FILE=tmp_path / "vocab.txt", FAKE_QUERY_RC=1)
    (tmp_path / "results" / "bert-large-uncased" / "phase1").mkdir(parents=True)
    proc = _bash(RUN, args, STEPS_THIS_RUN=50, **common)
    assert proc.returncode == 2 and len(_recorded(tmp_path / "record.txt")) == 1  # phase 1 ran, phase 2 did not
    assert proc.stderr.strip().splitlines()[-1] == (
        "run_pretraining.sh: error: cannot tell whether phase 1 finished: "
        f"{fake_bin}/recorder -m tasks.launch_query latest-step failed (see above)")
    args[7] = "true"  # create_logfile: the log file is named by the global batch
    proc = _bash(RUN, args, **common)
    assert proc.returncode == 2 and "global-batch failed" in proc.stderr
    assert len(_recorded(tmp_path / "record.txt")) == 1  # nothing more ran


def test_create_datasets_hint_builds_the_shards_run_pretraining_looks_for(tmp_path):
    """Issue 14 item 4: the hint's --sink and flags built shards run_pretraining.sh never found (and rebuilt)."""
    text = (REPO / "data" / "create_datasets_from_start.sh").read_text()
    hint = re.search(r'echo "  \$PY -m data.prep.preprocess_bert_pretrain (.*?)"\necho "(.*?)"\necho "(.*?)"\n', text)
    hint_words = shlex.split(" ".join(hint.groups()).replace("\\\\", "").replace("$SOURCE", "SRC")
                             .replace("$OUT", str(tmp_path)))
    args = _dgx_args(tmp_path)
    cmds = _dry_run(args, tmp_path, VOCAB_FILE=tmp_path / "vocab.txt")
    prep = next(c for c in cmds if "data.prep.preprocess_bert_pretrain" in c)
    value = lambda words, flag: words[words.index(flag) + 1]  # noqa: E731
    assert value(hint_words, "--sink") == value(prep, "--sink") == args[16]
    for flag in ("--target-seq-length", "--max-predictions-per-seq"):
        assert value(hint_words, flag) == value(prep, flag)
    for flag in ("--no-bin", "--masking"):
        assert flag in hint_words and flag in prep


# ------------------------------------------------------------------------------------------ issue 13 knobs
def test_steps_this_run_stops_the_script_before_phase_2_and_eval_dirs_are_passed(tmp_path, fake_bin):
    args = _dgx_args(tmp_path)
    for phase_dir in (args[16], args[17]):
        Path(phase_dir).mkdir(parents=True)
        (Path(phase_dir) / "shard-0.parquet").write_bytes(b"x")
    (tmp_path / "vocab.txt").write_text("[PAD]\n")
    record, results = tmp_path / "record.txt", tmp_path / "results"
    common = dict(PYTHON=fake_bin / "recorder", RECORD=record, RESULTS_DIR=results, VOCAB_FILE=tmp_path / "vocab.txt",
                  STEPS_THIS_RUN=50, EVAL_DIR_PHASE1=tmp_path / "held", NUM_EVAL_BATCHES=4)
    proc = _bash(RUN, args, **common)
    assert proc.returncode == 0, proc.stderr
    (phase1,) = _recorded(record)  # phase 1 is unfinished (no step-7038 checkpoint): phase 2 does not start
    assert "phase 1 stopped after STEPS_THIS_RUN=50" in proc.stderr
    assert {"--phase1", "--steps-this-run=50", f"--eval-dir={tmp_path}/held", "--num-eval-batches=4"} <= set(phase1)
    run_pretraining = pytest.importorskip("run_pretraining")
    assert run_pretraining.build_parser().parse_args(_flags(phase1)).steps_this_run == 50
    # Once phase 1 has its final checkpoint, the next invocation goes on to phase 2 (without phase 1's eval set).
    from test_launch_query import write_checkpoint
    write_checkpoint(results / "bert-large-uncased" / "phase1", 7038)
    record.unlink()
    proc = _bash(RUN, args, **common)
    assert proc.returncode == 0, proc.stderr
    phase1, phase2 = _recorded(record)
    assert "--phase2" in phase2 and "--steps-this-run=50" in phase2 and not any("--eval-dir" in a for a in phase2)
    assert _bash(RUN, args, **{**common, "STEPS_THIS_RUN": "0"}).returncode == 2


def test_run_sub_passes_steps_this_run(tmp_path):
    proc = _bash(REPO / "run.sub", **_slurm_env(tmp_path, DRY_RUN=1, GPUS_PER_NODE=8, STEPS_THIS_RUN=300))
    assert proc.returncode == 0, proc.stderr
    assert "--steps-this-run=300" in proc.stdout.splitlines()[-1]
    assert _bash(REPO / "run.sub", **_slurm_env(tmp_path, DRY_RUN=1, STEPS_THIS_RUN="x")).returncode == 2


def test_dgxa100_on_a_cpu_machine_says_no_gpu_before_missing_data(tmp_path):
    """Issue 24 item 8: with neither GPUs nor data, the first (and only) line is the GPU one, naming cpu_demo
    (it was the missing corpus; a GPU-less machine cannot use that data anyway)."""
    cpu_python = tmp_path / "python"
    cpu_python.write_text('#!/usr/bin/env bash\nif [[ $1 == -c ]]; then echo nocuda; exit 0; fi\nexit 9\n')
    cpu_python.chmod(0o755)
    args = _preset("dgxa100-80g_8gpu_amp", BERT_PREP_WORKING_DIR=tmp_path)  # no corpus, no shards
    proc = _bash(RUN, args, PYTHON=cpu_python, RESULTS_DIR=tmp_path / "results", VOCAB_FILE=tmp_path / "no.txt")
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("run_pretraining.sh: error: <num_gpus> (argument 4) asks for 8 GPU process(es) but no "
                           "GPU is usable") and "cpu_demo" in line, line
