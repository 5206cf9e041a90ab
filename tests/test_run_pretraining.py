"""run_pretraining.py as a user runs it: validation errors, exact SIGKILL resume, phase hand-off, 2 ranks.

The runs are subprocesses on purpose: the zlib-before-paddle ordering and the launch environment only show
up that way. Shards come from the project's own CLIs on the embedded sample corpus (small, ~5 s).
"""
import glob
import json
import re
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO

PY = sys.executable
TINY = ["--bert-model", "bert-tiny", "--max-seq-length", "128", "--max-predictions-per-seq", "20",
        "--device", "cpu", "--num-workers", "0", "--sequence-length-alignment", "8",
        "--learning-rate", "1e-3", "--warmup-proportion", "0.2", "--log-freq", "1"]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=REPO)
    for key in [k for k in env if k.startswith(("PADDLE_", "FLAGS_selected"))]:
        del env[key]
    return env


def _run(args, check=True, cwd=REPO):
    proc = subprocess.run([PY, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """(shard dir, vocab file): 2 balanced shards of seq-128 statically masked pairs."""
    root = tmp_path_factory.mktemp("pretrain_data")
    _run(["-m", "data.prep.sample_corpus", "--output-dir", str(root / "source"), "--num-files", "2",
          "--max-bytes", "400000"])
    _run(["-m", "data.prep.build_vocab", "--input", str(root / "source"), "--output", str(root / "vocab.txt"),
          "--vocab-size", "2000", "--do-lower-case"])
    _run(["-m", "data.prep.preprocess_bert_pretrain", "--source", str(root / "source"), "--sink",
          str(root / "p128"), "--vocab-file", str(root / "vocab.txt"), "--do-lower-case",
          "--target-seq-length", "128", "--bin-size", "64", "--masking", "--max-predictions-per-seq", "20",
          "--num-workers", "1", "--seed", "3"])
    _run(["-m", "data.prep.balance_dask_output", "--indir", str(root / "p128"), "--num-shards", "2"])
    return str(root / "p128"), str(root / "vocab.txt")


def _pretrain_args(shards, out, *extra, phase="--phase1", steps=8, batch=4):
    data, vocab = shards
    return ["run_pretraining.py", "--input-dir", data, "--vocab-file", vocab, "--output-dir", str(out),
            phase, "--max-steps", str(steps), "--batch-size", str(batch), "--num-steps-per-checkpoint", "2",
            "--report-file", str(out / "report.json"), *TINY, *extra]


def _params(step_dir):
    import pickle
    with open(glob.glob(os.path.join(step_dir, "*.pdparams"))[0], "rb") as f:
        return pickle.load(f)


def _opt_state(step_dir):
    import pickle
    with open(glob.glob(os.path.join(step_dir, "*.pdopt"))[0], "rb") as f:
        return pickle.load(f)


def _assert_same_state(dir_a, dir_b):
    for load in (_params, _opt_state):
        a, b = load(dir_a), load(dir_b)
        assert sorted(a) == sorted(b)
        for name in a:
            np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]), err_msg=name)


# ------------------------------------------------------------------------------------------------------
# Validation: one line, exit 2, nothing written


@pytest.mark.parametrize("extra, message", [
    ([], "exactly one of --phase1 and --phase2"),
    (["--phase1", "--phase2"], "exactly one of --phase1 and --phase2"),
    (["--phase1", "--from-checkpoint", "x", "--from-pretrained-params", "y"], "exclusive"),
    (["--phase1", "--from-pretrained-params", "/nonexistent/params"], "--from-pretrained-params"),
    (["--phase2", "--from-phase1-final-params", "/nonexistent/p1"], "--from-phase1-final-params"),
    (["--phase1", "--from-phase1-final-params", "/tmp"], "is for --phase2"),
    (["--phase1", "--from-checkpoint", "/nonexistent/ckpt", "--last-step-of-checkpoint", "5"],
     "--from-checkpoint"),
    (["--phase1", "--last-step-of-checkpoint", "-3"], "--last-step-of-checkpoint"),
    (["--phase1", "--keep-checkpoints", "1"], "--keep-checkpoints"),
    (["--phase1", "--use-pure-fp16"], "--use-pure-fp16 needs --amp"),
    (["--phase1", "--bert-model", "custom"], "--config-file"),
])
def test_bad_flags_exit_2_with_one_line(shards, tmp_path, extra, message):
    data, vocab = shards
    out = tmp_path / "out"
    args = ["--input-dir", data, "--vocab-file", vocab, "--output-dir", str(out), "--max-steps", "2",
            "--device", "cpu", *extra]
    import run_pretraining
    proc_code = run_pretraining.cli(args)
    assert proc_code == 2
    assert not out.exists()


def test_bad_flag_message_names_the_flag_via_cli(shards, tmp_path):
    proc = _run(_pretrain_args(shards, tmp_path / "out", "--from-pretrained-params", "/nonexistent/p"),
                check=False)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: --from-pretrained-params '/nonexistent/p' does not exist"]
    assert not (tmp_path / "out").exists()


def test_amp_on_cpu_is_refused_clearly(shards, tmp_path):
    proc = _run(_pretrain_args(shards, tmp_path / "out", "--amp"), check=False)
    assert proc.returncode == 2
    assert "training needs --device gpu" in proc.stderr


def test_missing_input_dir(tmp_path, shards):
    args = _pretrain_args(shards, tmp_path / "out")
    args[args.index("--input-dir") + 1] = str(tmp_path / "nope")
    proc = _run(args, check=False)
    assert proc.returncode == 2 and "--input-dir" in proc.stderr


# ------------------------------------------------------------------------------------------------------
# Training, resume, phases


@pytest.fixture(scope="module")
def uninterrupted(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    proc = _run(_pretrain_args(shards, out))
    return out, proc


def test_a_finished_phase_writes_results_json_and_says_what_next(uninterrupted):
    """Issue 14: runs ended without saying what to run next, and without a plain results file."""
    out, proc = uninterrupted
    results = json.loads((out / "results.json").read_text())
    assert results["global_step"] == 8 and results["final_loss"] > 0
    from utils.report import read_dllogger_report
    summary = [r for r in read_dllogger_report(out / "report.json") if r.get("step") == []][-1]["data"]
    assert results["final_loss"] == summary["final_loss"]
    assert "next: phase 2" in proc.stderr
    assert f"--from-phase1-final-params {out / 'bert-tiny' / 'phase1' / '8'}" in proc.stderr


def test_uninterrupted_run_writes_checkpoints_report_and_learns(uninterrupted):
    out, proc = uninterrupted
    root = out / "bert-tiny" / "phase1"
    assert sorted(int(p) for p in os.listdir(root)) == [4, 6, 8]  # keep 3, saved every 2
    progress = json.loads((root / "8" / "progress.json").read_text())
    assert progress["global_step"] == 8 and progress["phase"] == 1 and progress["world_size"] == 1
    assert progress["loader_state"]["batches_consumed"] == 8
    from utils.report import read_dllogger_report
    records = read_dllogger_report(out / "report.json")
    losses = [r["data"]["loss"] for r in records if r.get("type") == "LOG" and "loss" in r.get("data", {})
              and r.get("step") not in ([], "PARAMETER")]
    assert len(losses) == 8
    assert np.mean(losses[-3:]) < np.mean(losses[:3])  # lr 1e-3 on a tiny model: loss falls
    summary = [r for r in records if r.get("step") == []]
    assert {"e2e_train_time", "training_sequences_per_second", "final_loss", "raw_train_time"} <= set(
        summary[-1]["data"])


def _run_until(args, pattern, timeout=240):
    """Start a run and SIGKILL it as soon as a stderr line contains `pattern`."""
    proc = subprocess.Popen([PY, *args], cwd=REPO, env=_env(), stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    deadline = time.time() + timeout
    try:
        for line in proc.stderr:
            if pattern in line or time.time() > deadline:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return proc.returncode


def test_sigkill_anywhere_then_auto_resume_equals_uninterrupted(shards, tmp_path, uninterrupted):
    ref_out, _ = uninterrupted
    out = tmp_path / "out"
    root = out / "bert-tiny" / "phase1"
    resume = ["--from-checkpoint", str(root), "--last-step-of-checkpoint", "auto"]
    args = _pretrain_args(shards, out, *resume)
    # Killed in the middle of a step right after the checkpoint of step 2 was written ...
    assert _run_until(args, "saved checkpoint for step 2") == -signal.SIGKILL
    # ... then killed mid-step 3 (after its log line, before any save) ...
    assert _run_until(args, "step 3/8") == -signal.SIGKILL
    # ... then what a kill during a save leaves behind: a temp dir and a step dir without progress.json.
    (root / "4.tmp-deadbeef").mkdir()
    (root / "4.tmp-deadbeef" / "bert_paddle.pdparams").write_bytes(b"partial")
    (root / "6").mkdir()
    (root / "6" / "bert_paddle.pdparams").write_bytes(b"partial")
    proc = _run(args)
    assert "restored step 2" in proc.stderr
    _assert_same_state(root / "8", ref_out / "bert-tiny" / "phase1" / "8")
    assert not (root / "4.tmp-deadbeef").exists()


def test_auto_with_no_checkpoint_starts_fresh_and_finished_phase_is_a_no_op(shards, tmp_path):
    out = tmp_path / "out"
    root = out / "bert-tiny" / "phase1"
    args = _pretrain_args(shards, out, "--from-checkpoint", str(root), "--last-step-of-checkpoint", "auto",
                          steps=2)
    first = _run(args)
    assert "starting phase 1 from step 0" in first.stderr
    again = _run(args)
    assert "already finished" in again.stderr


def test_phase2_starts_from_phase1_final_params_then_resumes(shards, tmp_path, uninterrupted):
    ref_out, _ = uninterrupted
    p1_final = ref_out / "bert-tiny" / "phase1" / "8"
    out = tmp_path / "out"
    root = out / "bert-tiny" / "phase2"
    args = _pretrain_args(shards, out, "--from-phase1-final-params", str(p1_final),
                          "--from-checkpoint", str(root), "--last-step-of-checkpoint", "auto",
                          phase="--phase2", steps=2)
    proc = _run(args)
    loaded = re.search(r"parameters: (\d+) of (\d+) from \S+pdparams(;.*)?$", proc.stderr, re.M)
    assert loaded and loaded.group(1) == loaded.group(2) and not loaded.group(3), proc.stderr[-2000:]
    progress = json.loads((root / "2" / "progress.json").read_text())
    assert progress["phase"] == 2 and progress["global_step"] == 2
    assert progress["lr_state"]["last_epoch"] == 2  # a fresh schedule, not phase 1's step 8
    # Phase 2's optimizer starts fresh: beta1^t starts at beta1 and is multiplied once per update,
    # so after 2 updates it is 0.9**3 (carrying phase 1's state would give 0.9**11).
    p2_opt = _opt_state(root / "2")
    pows = [v for k, v in p2_opt.items() if "beta1_pow_acc" in k]
    assert pows
    np.testing.assert_allclose(np.asarray(pows[0]).ravel()[0], 0.9 ** 3, rtol=1e-6)
    longer = [a if a != "2" else "4" for a in args]
    resumed = _run(longer)
    assert "resuming phase 2 at step 2" in resumed.stderr and "restored step 2" in resumed.stderr
    assert "next: fine-tune on SQuAD" in resumed.stderr
    assert f"--from-pretrained-params {root / '4'}" in resumed.stderr


def test_phase2_params_of_another_architecture_are_an_error(shards, tmp_path, uninterrupted):
    ref_out, _ = uninterrupted
    args = _pretrain_args(shards, tmp_path / "out", "--from-phase1-final-params",
                          str(ref_out / "bert-tiny" / "phase1" / "8"), phase="--phase2", steps=2)
    args[args.index("bert-tiny")] = "bert-mini"
    proc = _run(args, check=False)
    assert proc.returncode == 2
    assert "bert.encoder.layer.0" in proc.stderr or "shape" in proc.stderr or "lacks" in proc.stderr


def test_resume_with_another_batch_size_is_refused(shards, tmp_path, uninterrupted):
    ref_out, _ = uninterrupted
    args = _pretrain_args(shards, tmp_path / "out", "--from-checkpoint",
                          str(ref_out / "bert-tiny" / "phase1"), "--last-step-of-checkpoint", "auto",
                          batch=2, steps=10)
    proc = _run(args, check=False)
    assert proc.returncode == 2 and "global batch size changed" in proc.stderr


def test_benchmark_mode_writes_no_checkpoint(shards, tmp_path):
    out = tmp_path / "out"
    proc = _run(_pretrain_args(shards, out, "--benchmark", "--benchmark-steps", "2",
                               "--benchmark-warmup-steps", "1"))
    assert not (out / "bert-tiny").exists()
    assert "training_sequences_per_second" in proc.stderr


def test_two_cpu_ranks_run_under_paddle_launch(shards, tmp_path):
    out = tmp_path / "out"
    script_args = _pretrain_args(shards, out, steps=2, batch=2)
    script_args[0] = os.path.join(REPO, "run_pretraining.py")
    args = ["-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(tmp_path / "log"),
            *script_args]
    # The launcher writes http.log into its working directory: keep it out of the repository.
    proc = _run(args, check=False, cwd=tmp_path)
    logs = "".join(p.read_text() for p in sorted((tmp_path / "log").glob("workerlog.*")))
    assert proc.returncode == 0, logs[-3000:]
    progress = json.loads((out / "bert-tiny" / "phase1" / "2" / "progress.json").read_text())
    assert progress["world_size"] == 2 and progress["global_batch_size"] == 4
    assert "gloo all-reduce" in logs


def test_trains_on_nvidia_hdf5_shards(tmp_path):
    """Existing NVIDIA/Google HDF5 datasets keep working: the same command on a directory of .hdf5 files."""
    from test_hdf5_loader import SPECIALS, WORDS, _random_samples, write_shard
    rng = np.random.default_rng(0)
    data = tmp_path / "hdf5"
    data.mkdir()
    for k in range(2):
        write_shard(data / f"part_{k}.hdf5", _random_samples(rng, 24), seq_len=16, max_pred=4)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(SPECIALS + WORDS) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    args = _pretrain_args((str(data), str(vocab)), out, steps=3)
    args[args.index("--max-seq-length") + 1] = "16"
    _run(args)
    progress = json.loads((out / "bert-tiny" / "phase1" / "3" / "progress.json").read_text())
    assert progress["loader_state"]["kind"] == "hdf5" and progress["global_step"] == 3
