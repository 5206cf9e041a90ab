"""utils.fs: atomic files and directories leave either the old state or the complete new one."""
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO, shared_path
from utils.fs import atomic_output_dir, atomic_write_json, atomic_write_text


def test_atomic_dir_success_and_failure(tmp_path):
    out = tmp_path / "out"
    with atomic_output_dir(out) as tmp:
        open(os.path.join(tmp, "a.txt"), "w").write("x")
        assert not out.exists()            # invisible until the block succeeds
    assert (out / "a.txt").read_text() == "x"

    with pytest.raises(FileExistsError):
        with atomic_output_dir(out):
            pass
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out, overwrite=True) as tmp:
            open(os.path.join(tmp, "b.txt"), "w").write("y")
            raise RuntimeError("boom")
    assert sorted(os.listdir(out)) == ["a.txt"]          # old content intact
    assert sorted(os.listdir(tmp_path)) == ["out"]       # no temp debris

    with atomic_output_dir(out, overwrite=True) as tmp:
        open(os.path.join(tmp, "c.txt"), "w").write("z")
    assert sorted(os.listdir(out)) == ["c.txt"]
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_atomic_files(tmp_path):
    p = tmp_path / "sub" / "f.json"
    atomic_write_json(p, {"b": 1, "a": [1, 2]})
    assert json.loads(p.read_text()) == {"a": [1, 2], "b": 1}
    atomic_write_text(p, "new")
    assert p.read_text() == "new"
    assert os.listdir(p.parent) == ["f.json"]


# ------------------------------------------------------------------------------------------------
# Debris of killed runs (issue 8 defect 7)
# ------------------------------------------------------------------------------------------------

def _dead_pid():
    """A pid that belonged to a process which has exited (so `os.kill(pid, 0)` fails)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    return int(proc.stdout)


def _debris(parent, name, nbytes=1000):
    path = parent / name
    path.mkdir()
    (path / "part.0.parquet").write_bytes(b"x" * nbytes)
    return path


def test_stale_temp_dirs_of_dead_runs_are_removed_and_live_ones_kept(tmp_path, caplog):
    host = socket.gethostname()
    dead = _dead_pid()
    stale = _debris(tmp_path, f"out.tmp-{dead}@{host}-abcd_123", nbytes=3 * 1024 * 1024)
    stale_old = _debris(tmp_path, f"out.old-{dead}@{host}-zz00zz00")
    live = _debris(tmp_path, f"out.tmp-{os.getpid()}@{host}-live0000")       # a concurrent job's work
    elsewhere = _debris(tmp_path, f"out.tmp-{dead}@other-host.example-abcdefgh")  # cannot be checked
    unmarked = _debris(tmp_path, "out.tmp-k2j4h5g6")                          # an older version's
    other_output = _debris(tmp_path, f"outer.tmp-{dead}@{host}-abcdefgh")     # not this output's
    (tmp_path / f"out.tmp-{dead}@{host}-file0000").write_text("a file, not a directory")
    (tmp_path / "out").mkdir()
    with caplog.at_level(logging.INFO, logger="utils.fs"):
        with atomic_output_dir(tmp_path / "out", overwrite=True) as tmp:
            assert re.fullmatch(rf"out\.tmp-{os.getpid()}@.+-[a-z0-9_]{{8}}", os.path.basename(tmp))
    assert not stale.exists() and not stale_old.exists()
    assert live.exists() and elsewhere.exists() and unmarked.exists() and other_output.exists()
    assert (tmp_path / f"out.tmp-{dead}@{host}-file0000").is_file()
    removed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("removed")]
    assert len(removed) == 2 and any(str(stale) in m and "(1 files, 3.0 MB)" in m for m in removed)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert f"kept {live}" in messages and f"kept {elsewhere}" in messages and str(unmarked) in messages


def test_output_moved_aside_by_a_killed_run_is_restored(tmp_path):
    # Killed between "move the old output aside" and "rename the new one into place": the old output
    # is the only copy, so it comes back instead of being deleted (and is then not overwritten).
    aside = _debris(tmp_path, f"out.old-{_dead_pid()}@{socket.gethostname()}-abcdefgh")
    with pytest.raises(FileExistsError):
        with atomic_output_dir(tmp_path / "out"):
            pass
    assert (tmp_path / "out" / "part.0.parquet").read_bytes() == b"x" * 1000 and not aside.exists()


def test_rerun_of_a_killed_preprocessing_cleans_its_temp_dir(tmp_path):
    vocab = shared_path("vocab", "bert-base-uncased-vocab.txt")
    from data.prep.sample_corpus import build_sample_corpus

    source = tmp_path / "source"
    build_sample_corpus(str(source), num_files=2, max_documents=60)
    sink = tmp_path / "sink"
    argv = [sys.executable, "-m", "data.prep.preprocess_bert_pretrain", "--source", str(source), "--sink", str(sink),
            "--vocab-file", str(vocab), "--num-workers", "0", "--block-size-mb", "0.01", "--duplicate-factor", "1"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not [p for p in tmp_path.iterdir() if p.name.startswith("sink.tmp-")]:
        assert proc.poll() is None and time.monotonic() < deadline, "no temporary directory appeared"
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    stale = [p for p in tmp_path.iterdir() if p.name.startswith("sink.tmp-")]
    assert len(stale) == 1 and not sink.exists()
    rerun = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"removed {stale[0]}" in rerun.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sink", "source"]


def test_output_dir_that_cannot_be_created_fails_before_the_work(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="cannot create output directory") as err:
        with atomic_output_dir(blocker / "out"):
            raise AssertionError("the block ran")
    assert err.value.filename is not None
