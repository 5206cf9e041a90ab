"""Chaos: a tiny pretraining run is SIGKILLed again and again, at random moments and inside its saves,
resumed each time with `--last-step-of-checkpoint auto`, and must end bit-identical (parameters and
optimizer state) to a run that was never interrupted.

Kills inside a save are placed exactly by a wrapper process that runs `run_pretraining.py` with one
checkpoint-writing function patched to SIGKILL the process at a named point: after the parameters file,
after the optimizer file, after progress.json but before the rename, after the rename but before
retention. Random kills come from a seeded RNG, counted from the first training step. Bounded: six
interrupted runs of a few seconds each.
"""
import random
import signal
import subprocess
import time

import pytest

from conftest import REPO
from test_run_pretraining import (PY, _assert_same_state, _env, _pretrain_args, _run, shards,  # noqa: F401
                                  uninterrupted)

# Runs run_pretraining.py as __main__, first patching the save path to kill itself at CHAOS_POINT of the
# CHAOS_SAVE-th save of this process.
_WRAPPER = r"""
import os, runpy, signal, sys
import utils.preflight
from utils import checkpoint, checkpoint_io
point, nth, count = os.environ["CHAOS_POINT"], int(os.environ["CHAOS_SAVE"]), [0]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

write = checkpoint_io._write_digested
def write_then_maybe_die(path, dump):
    result = write(path, dump)
    if path.endswith(point) and count[0] == nth:
        die()
    return result
checkpoint_io._write_digested = write_then_maybe_die

atomic = checkpoint.atomic_write_text
def progress_then_maybe_die(path, text):
    atomic(path, text)
    if point == "progress" and count[0] == nth:
        die()
checkpoint.atomic_write_text = progress_then_maybe_die

move = checkpoint.CheckpointManager._move_into_place
def move_then_maybe_die(self, tmp, final):
    move(self, tmp, final)
    if point == "renamed" and count[0] == nth:
        die()
checkpoint.CheckpointManager._move_into_place = move_then_maybe_die

save = checkpoint.CheckpointManager.save
def counting_save(self, *args, **kwargs):
    count[0] += 1
    return save(self, *args, **kwargs)
checkpoint.CheckpointManager.save = counting_save

sys.argv = ["run_pretraining.py"] + sys.argv[1:]
runpy.run_path("run_pretraining.py", run_name="__main__")
"""


def _killed_inside_save(args, point, nth):
    env = dict(_env(), CHAOS_POINT=point, CHAOS_SAVE=str(nth))
    proc = subprocess.run([PY, "-c", _WRAPPER, *args[1:]], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    return proc


def _killed_after(args, seconds):
    """Start a run; SIGKILL it `seconds` after its first training step (or when it ends by itself)."""
    proc = subprocess.Popen([PY, *args], cwd=REPO, env=_env(), stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stderr:
            if " step " in line or "step 1/" in line or "restored step" in line:
                break
        time.sleep(seconds)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    return proc.returncode


@pytest.mark.parametrize("seed", [20261201])
def test_killed_anywhere_resumed_with_auto_ends_bit_identical(shards, tmp_path, uninterrupted, seed):  # noqa: F811
    ref_out, _ = uninterrupted
    rng = random.Random(seed)
    out = tmp_path / "out"
    root = out / "bert-tiny" / "phase1"
    args = _pretrain_args(shards, out, "--from-checkpoint", str(root), "--last-step-of-checkpoint", "auto")
    args[args.index("--num-steps-per-checkpoint") + 1] = "1"  # a save every step: more kills land in one
    args += ["--keep-checkpoints", "2"]
    in_save = [("bert_paddle.pdparams", 1), ("progress", 2), ("bert_paddle.pdopt", 1), ("renamed", 2)]
    rng.shuffle(in_save)
    plan = [("save", p) for p in in_save] + [("time", rng.uniform(0.0, 1.5)) for _ in range(2)]
    rng.shuffle(plan)
    killed = 0
    for kind, what in plan:
        if kind == "save":
            proc = _killed_inside_save(args, *what)
            code = proc.returncode
        else:
            code = _killed_after(args, what)
        killed += code == -signal.SIGKILL
        assert code in (-signal.SIGKILL, 0)
    assert killed >= 4  # the in-save kills always fire (a finished run would have exited 0)
    final = _run(args)
    assert "restored step" in final.stderr or "already finished" in final.stderr
    _assert_same_state(root / "8", ref_out / "bert-tiny" / "phase1" / "8")
    leftovers = [p.name for p in root.iterdir() if ".tmp-" in p.name]
    assert leftovers == [] and not (root / ".lock").exists()
