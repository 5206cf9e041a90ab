"""run_pretraining.py under the faults of issue 8, run as a user runs it (subprocesses).

Each test reproduces one defect: resuming from an older step, runs mixing in one directory, a damaged
newest checkpoint, a phase-1 checkpoint given to phase 2, two runs at once, an unwritable output dir.
"""
import json
import os
import signal
import socket
import subprocess
import time

import numpy as np
import pytest

from conftest import REPO
from test_run_pretraining import PY, _assert_same_state, _env, _params, _pretrain_args, _run, shards  # noqa: F401


def _errors(proc):
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def six_steps(shards, tmp_path_factory):  # noqa: F811
    """An uninterrupted 6-step run saving every 2 steps: checkpoints 2, 4, 6."""
    out = tmp_path_factory.mktemp("six")
    _run(_pretrain_args(shards, out, steps=6))
    return out


def _copy_run(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_resume_from_an_older_step_replays_and_moves_later_ones_aside(shards, six_steps, tmp_path):  # noqa: F811
    """Defect 1: this crashed in retention (TypeError) after replacing step 4 with the new run's."""
    out = _copy_run(six_steps, tmp_path / "out")
    root = out / "bert-tiny" / "phase1"
    proc = _run(_pretrain_args(shards, out, "--from-checkpoint", str(root), "--last-step-of-checkpoint", "2",
                               steps=6))
    assert "restored step 2" in proc.stderr and "moved checkpoint(s) of step 4, 6 aside" in proc.stderr
    aside = [p for p in root.iterdir() if p.name.startswith("superseded-")]
    assert len(aside) == 1 and sorted(p.name for p in aside[0].iterdir()) == ["4", "6"]
    assert sorted(p.name for p in root.iterdir() if p.name.isdigit()) == ["2", "4", "6"]
    _assert_same_state(root / "6", six_steps / "bert-tiny" / "phase1" / "6")
    again = _run(_pretrain_args(shards, out, "--from-checkpoint", str(root), "--last-step-of-checkpoint",
                                "auto", steps=6))
    assert "already finished" in again.stderr  # auto picks this run's step 6, nothing mixed


def test_fresh_run_into_a_directory_with_checkpoints_is_refused(shards, six_steps, tmp_path):  # noqa: F811
    out = _copy_run(six_steps, tmp_path / "out")
    root = out / "bert-tiny" / "phase1"
    before = sorted(os.listdir(root))
    proc = _run(_pretrain_args(shards, out, steps=4), check=False)
    assert proc.returncode == 2
    assert len(_errors(proc)) == 1 and "already holds checkpoints of another run (steps 2, 4, 6)" in proc.stderr
    assert "--replace-checkpoints" in _errors(proc)[0]
    assert sorted(os.listdir(root)) == before  # nothing touched, lock released
    # Resuming ANOTHER directory into this one would mix runs the same way.
    other = _copy_run(six_steps, tmp_path / "other")
    proc = _run(_pretrain_args(shards, out, "--from-checkpoint", str(other / "bert-tiny" / "phase1"),
                               "--last-step-of-checkpoint", "2", steps=4), check=False)
    assert proc.returncode == 2 and "already holds checkpoints of another run" in proc.stderr
    # With the explicit flag the old checkpoints are moved aside, not deleted.
    proc = _run(_pretrain_args(shards, out, "--replace-checkpoints", steps=2))
    assert sorted(p.name for p in root.iterdir() if p.name.isdigit()) == ["2"]
    aside = [p for p in root.iterdir() if p.name.startswith("superseded-")]
    assert sorted(p.name for p in aside[0].iterdir()) == ["2", "4", "6"]


def test_truncated_newest_checkpoint_falls_back_and_ends_identical(shards, six_steps, tmp_path):  # noqa: F811
    """Defect 2: auto resume died with `pickle data was truncated`."""
    out = _copy_run(six_steps, tmp_path / "out")
    root = out / "bert-tiny" / "phase1"
    params = root / "6" / "bert_paddle.pdparams"
    damaged = params.read_bytes()[: params.stat().st_size // 2]
    params.write_bytes(damaged)
    proc = _run(_pretrain_args(shards, out, "--from-checkpoint", str(root), "--last-step-of-checkpoint",
                               "auto", steps=6))
    assert f"ignoring checkpoint directory {root / '6'}" in proc.stderr and "bert_paddle.pdparams has" in proc.stderr
    assert "restored step 4" in proc.stderr
    _assert_same_state(root / "6", six_steps / "bert-tiny" / "phase1" / "6")
    # Issue 20 item 4: the damaged step 6 was deleted when the replay saved step 6 again; now it is kept.
    assert "moved checkpoint(s) of step 6 aside" in proc.stderr and "replacing existing" not in proc.stderr
    kept, = root.glob("superseded-*/6/bert_paddle.pdparams")
    assert kept.read_bytes() == damaged


def test_phase2_from_a_phase1_checkpoint_is_refused(shards, six_steps, tmp_path):  # noqa: F811
    """Defect 3: phase 2 silently continued phase 1 (its step, optimizer state and LR schedule)."""
    p1 = six_steps / "bert-tiny" / "phase1"
    proc = _run(_pretrain_args(shards, tmp_path / "out", "--from-checkpoint", str(p1),
                               "--last-step-of-checkpoint", "auto", phase="--phase2", steps=2), check=False)
    assert proc.returncode == 2
    (line,) = _errors(proc)
    assert "is a phase 1 checkpoint but this run is --phase2" in line
    assert f"--from-phase1-final-params {p1 / '6'}" in line
    assert not (tmp_path / "out" / "bert-tiny" / "phase2").exists() or not any(
        p.name.isdigit() for p in (tmp_path / "out" / "bert-tiny" / "phase2").iterdir())


def test_second_run_into_a_busy_directory_is_refused_then_a_dead_lock_is_taken_over(shards, tmp_path):  # noqa: F811
    """Defect 5: two runs in one directory deleted each other's in-progress saves."""
    out = tmp_path / "out"
    root = out / "bert-tiny" / "phase1"
    resume = ["--from-checkpoint", str(root), "--last-step-of-checkpoint", "auto"]
    first = subprocess.Popen([PY, *_pretrain_args(shards, out, *resume, steps=400)], cwd=REPO, env=_env(),
                             stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        for line in first.stderr:  # wait until it trains (holds the lock)
            if "saved checkpoint for step 2" in line:
                break
        second = _run(_pretrain_args(shards, out, *resume, steps=400), check=False)
        assert second.returncode == 2
        (line,) = _errors(second)
        assert f"is in use by another training run (pid {first.pid} on host {socket.gethostname()}" in line
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    holder = json.loads((root / ".lock").read_text())
    assert holder["pid"] == first.pid  # SIGKILL left the lock behind ...
    third = _run(_pretrain_args(shards, out, *resume, steps=4))
    assert f"process {first.pid} is not running" in third.stderr  # ... and it is taken over
    assert "restored step" in third.stderr and not (root / ".lock").exists()


def test_unwritable_output_dir_is_found_before_training(shards, tmp_path):  # noqa: F811
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    start = time.time()
    proc = _run(_pretrain_args(shards, blocker / "out", steps=2), check=False)
    assert proc.returncode == 2
    (line,) = _errors(proc)
    assert line.startswith("error: --output-dir: cannot write checkpoints to") and "Not a directory" in line
    assert "step 1/" not in proc.stderr and time.time() - start < 120


def test_nan_parameters_stop_the_run_without_a_checkpoint(shards, six_steps, tmp_path):  # noqa: F811
    """A checkpoint with NaN parameters must never be written (it would replace good ones)."""
    import pickle
    out = _copy_run(six_steps, tmp_path / "out")
    root = out / "bert-tiny" / "phase1"
    # Plant NaN into the resumable state: a parameter of step 6, with its checksum updated to match,
    # as if the run itself had produced it.
    from utils.checkpoint_io import file_digest
    params_file = root / "6" / "bert_paddle.pdparams"
    with open(params_file, "rb") as f:
        params = pickle.load(f)
    name = sorted(n for n in params if n.endswith("word_embeddings.weight") or "embeddings" in n)[0]
    params[name] = np.full_like(params[name], np.nan)
    with open(params_file, "wb") as f:
        pickle.dump(params, f, protocol=4)
    from utils.checkpoint import RECORD_CHECKSUM, Progress
    progress = json.loads((root / "6" / "progress.json").read_text())
    progress["files"]["bert_paddle.pdparams"] = file_digest(params_file)
    del progress[RECORD_CHECKSUM]  # re-signed below, as the run would have written it
    (root / "6" / "progress.json").write_text(Progress(**progress).to_json())
    proc = _run(_pretrain_args(shards, out, "--from-checkpoint", str(root), "--last-step-of-checkpoint",
                               "auto", steps=8), check=False)
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert "parameters hold NaN/inf at step 8" in proc.stderr and "latest good one is step 6" in proc.stderr
    assert sorted(p.name for p in root.iterdir() if p.name.isdigit()) == ["2", "4", "6"]


def test_a_diverging_run_skips_nonfinite_updates_then_stops_with_exit_4(shards, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    args = _pretrain_args(shards, out, "--max-nonfinite-steps", "3", steps=40)
    args[args.index("--learning-rate") + 1] = "1e30"  # LAMB steps of ~1e30 * |w|: overflow within a few
    proc = _run(args, check=False)
    assert proc.returncode == 4, proc.stderr[-2000:]
    (line,) = _errors(proc)
    assert "training diverged: 3 consecutive updates" in line and "--learning-rate" in line
    assert proc.stderr.count("1 update(s) skipped since the last check") == 3  # --log-freq 1: read every step
    for step_dir in (out / "bert-tiny" / "phase1").iterdir():
        if step_dir.name.isdigit():
            assert all(np.isfinite(v).all() for v in _params(step_dir).values())


def test_two_ranks_resume_the_step_rank_0_chose(shards, tmp_path):  # noqa: F811
    """Issue 15 item 9, over the launcher's real key-value store: both processes resume the same step."""
    out = tmp_path / "out"
    root = out / "bert-tiny" / "phase1"

    def launch(steps, log):
        script = _pretrain_args(shards, out, "--from-checkpoint", str(root), "--last-step-of-checkpoint",
                                "auto", steps=steps, batch=2)
        script[0] = os.path.join(REPO, "run_pretraining.py")
        proc = _run(["-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir",
                     str(tmp_path / log), *script], check=False, cwd=tmp_path)
        logs = [p.read_text() for p in sorted((tmp_path / log).glob("workerlog.*"))]
        assert proc.returncode == 0, logs[0][-3000:]
        return logs

    first = launch(2, "log1")
    assert "all 2 processes resume nothing (fresh start)" in first[0]  # rank 1 logs warnings only
    second = launch(4, "log2")
    assert "all 2 processes resume step 2" in second[0] and "restored step 2" in second[0]
    assert json.loads((root / "4" / "progress.json").read_text())["world_size"] == 2


def test_reports_go_beside_the_run_outputs_by_default(shards, tmp_path):  # noqa: F811
    """Issue 14 item 5: without --report-file the report went to ./report.json of wherever the user stood."""
    out, cwd = tmp_path / "out", tmp_path / "cwd"
    cwd.mkdir()
    args = _pretrain_args(shards, out, steps=2)
    del args[args.index("--report-file"):args.index("--report-file") + 2]
    args[0] = os.path.join(REPO, "run_pretraining.py")
    _run(args, cwd=cwd)
    from utils.report import read_dllogger_report
    records = read_dllogger_report(out / "bert-tiny" / "phase1" / "report.json")
    assert any(r.get("step") == "PARAMETER" for r in records) and list(cwd.iterdir()) == []
