"""utils.run_lock: one run per directory; dead holders (killed here, or silent elsewhere) are taken over."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from utils.run_lock import LOCK_NAME, LockedError, RunLock


def _plant(directory, **holder):
    directory.mkdir(parents=True, exist_ok=True)
    record = dict({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}, **holder)
    (directory / LOCK_NAME).write_text(json.dumps(record))
    return directory / LOCK_NAME


def test_acquire_release_and_a_second_holder_is_refused(tmp_path):
    with RunLock(tmp_path / "d") as lock:
        holder = json.loads((tmp_path / "d" / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname() and lock.held
        with pytest.raises(LockedError, match=rf"in use by another training run \(pid {os.getpid()} on host"):
            RunLock(tmp_path / "d").acquire()
    assert not (tmp_path / "d" / LOCK_NAME).exists()


def test_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    _plant(tmp_path, pid=int(dead.stdout))
    with RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert f"process {int(dead.stdout)} is not running" in caplog.text


def test_other_host_is_refused_while_its_heartbeat_is_fresh_and_taken_over_when_silent(tmp_path, caplog):
    path = _plant(tmp_path, host="node-that-cannot-be-checked", pid=1)
    with pytest.raises(LockedError, match="node-that-cannot-be-checked"):
        RunLock(tmp_path).acquire()
    old = time.time() - 600
    os.utime(path, (old, old))  # no heartbeat for 10 minutes: that node is gone
    with RunLock(tmp_path, stale_after_s=300):
        pass
    assert "heartbeat is 600 s old" in caplog.text


def test_heartbeat_keeps_the_lock_fresh(tmp_path):
    lock = RunLock(tmp_path, heartbeat_s=0.05).acquire()
    try:
        old = time.time() - 1000
        os.utime(tmp_path / LOCK_NAME, (old, old))
        time.sleep(0.3)
        assert time.time() - os.path.getmtime(tmp_path / LOCK_NAME) < 5
    finally:
        lock.release()


def test_release_leaves_a_lock_someone_else_took_over(tmp_path):
    lock = RunLock(tmp_path).acquire()
    _plant(tmp_path, pid=12345, host="another")
    lock.release()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["host"] == "another"
