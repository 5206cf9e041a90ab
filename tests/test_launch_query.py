"""tasks.launch_query: the questions scripts/run_pretraining.sh asks instead of re-implementing Python's rules.

`global-batch` is checked against hand-computed numbers and shown to start without paddle; `latest-step` on
phase directories holding complete, damaged and interrupted checkpoints (real ones, written by
`CheckpointManager.save` on a tiny program), and on none. The command's output contract (the answer alone on
stdout, nothing and status 0 for "no checkpoint", status 2 for a bad argument) is what the launcher relies on.
"""
import subprocess
import sys
from pathlib import Path

import pytest

from tasks import launch_query
from tasks.launch_query import global_batch, latest_complete_step

REPO = Path(__file__).resolve().parents[1]


def write_checkpoint(phase_dir, step):
    """Save a real, complete checkpoint of `step` under `phase_dir` (a two-parameter program), as a run would.

    Returns the step directory. Static mode and the scope are restored afterwards, so callers in any mode
    (tests/test_pretrain_scripts.py too) can use it.
    """
    import paddle
    from utils.checkpoint import CheckpointManager, Progress
    was_dynamic = paddle.in_dynamic_mode()
    paddle.enable_static()
    try:
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.scope_guard(paddle.static.Scope()), paddle.utils.unique_name.guard(), \
                paddle.static.program_guard(main, startup):
            x = paddle.static.data("x", [None, 2], "float32")
            paddle.static.nn.fc(x, 1, weight_attr=paddle.ParamAttr(name="w"), bias_attr=paddle.ParamAttr(name="b"))
            exe = paddle.static.Executor(paddle.CPUPlace())
            exe.run(startup)
            progress = Progress(phase=1, global_step=step, epoch=0, loader_state={}, lr_state={},
                                seeds={"base": 1}, config_fingerprint="f" * 64, world_size=1, global_batch_size=1)
            return Path(CheckpointManager(phase_dir, keep_last=10).save(exe, main, progress))
    finally:
        if was_dynamic:
            paddle.disable_static()


def _query(*args):
    return subprocess.run([sys.executable, "-m", "tasks.launch_query", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------------------------------ global-batch
@pytest.mark.parametrize("batch, merge, processes, expected", [
    (256, 32, 8, 65536),   # dgxa100-80g_8gpu_amp phase 1: the reference's gbs65536 log name
    (32, 128, 8, 32768),   # and its phase 2
    (128, 64, 8, 65536),   # dgxa100-80g_8gpu_tf32 phase 1
    (1, 1, 1, 1), (3, 5, 7, 105)])
def test_global_batch_by_hand(batch, merge, processes, expected):
    assert global_batch(batch, merge, processes) == expected


@pytest.mark.parametrize("bad", [0, -1, True, 2.0, "8", None])
def test_global_batch_refuses_what_is_not_a_positive_int(bad):
    with pytest.raises(ValueError, match="must be an int >= 1"):
        global_batch(8, bad, 1)


def test_pretrain_session_records_the_same_global_batch():
    pretraining = pytest.importorskip("tasks.pretraining")
    assert pretraining.global_batch is global_batch


def test_global_batch_command_prints_the_number_alone_and_never_imports_paddle():
    proc = _query("global-batch", "--batch-size", "0256", "--gradient-merge-steps", 32, "--processes", 8)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "65536\n", "")
    code = ("import sys; from tasks import launch_query; launch_query.main(['global-batch', '--batch-size', '2', "
            "'--gradient-merge-steps', '3', '--processes', '4']); assert 'paddle' not in sys.modules, 'imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, "24\n"), proc.stderr


@pytest.mark.parametrize("args", [
    ["global-batch", "--batch-size", "0", "--gradient-merge-steps", "1", "--processes", "1"],
    ["global-batch", "--batch-size", "x", "--gradient-merge-steps", "1", "--processes", "1"],
    ["global-batch", "--batch-size", "1"], ["latest-step"], ["no-such-verb"], []])
def test_bad_arguments_exit_2_and_print_no_answer(args):
    proc = _query(*args)
    assert proc.returncode == 2 and proc.stdout == "" and "error:" in proc.stderr


# ------------------------------------------------------------------------------------------ latest-step
def test_latest_step_skips_damaged_and_interrupted_checkpoints(tmp_path):
    phase = tmp_path / "phase1"
    for step in (100, 200):
        write_checkpoint(phase, step)
    (phase / "300").mkdir()
    (phase / "300" / "progress.json").write_text("{}")            # names no step: damaged
    truncated = write_checkpoint(phase, 400)
    params = truncated / "bert_paddle.pdparams"
    params.write_bytes(params.read_bytes()[:-1])                   # recorded size no longer matches
    (phase / "500").mkdir()                                        # no progress.json at all
    (phase / "600.tmp-abcd").mkdir()                               # a save that was killed
    assert latest_complete_step(str(phase)) == 200
    proc = _query("latest-step", phase)
    assert (proc.returncode, proc.stdout) == (0, "200\n"), proc.stderr


def test_latest_step_of_a_phase_without_a_complete_checkpoint_prints_nothing_and_exits_0(tmp_path):
    damaged = tmp_path / "damaged"
    (damaged / "7038").mkdir(parents=True)
    (damaged / "7038" / "progress.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    for phase in (damaged, tmp_path / "empty", tmp_path / "absent"):
        assert latest_complete_step(str(phase)) is None
        proc = _query("latest-step", phase)
        assert (proc.returncode, proc.stdout) == (0, ""), proc.stderr
    assert not (tmp_path / "absent").exists()  # asking creates nothing


def test_main_returns_the_answer(tmp_path, capsys):
    write_checkpoint(tmp_path / "p", 7)
    assert launch_query.main(["latest-step", str(tmp_path / "p")]) == 7
    assert launch_query.main(["latest-step", str(tmp_path / "none")]) is None
    assert launch_query.main(["global-batch", "--batch-size", "4", "--gradient-merge-steps", "2",
                              "--processes", "3"]) == 24
    assert capsys.readouterr().out == "7\n24\n"
