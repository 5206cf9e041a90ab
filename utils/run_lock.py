"""One training run per checkpoint directory: an exclusive lock file with a heartbeat.

Owns: `RunLock`, taken by the writing process (rank 0) of a run before it writes or deletes anything in a
phase directory, and released when the run ends. Does not own what is locked (the caller passes the
directory) nor what a run does with it.

Why: two runs writing into one directory destroy each other's work (one run's retention deletes the
other's in-progress save). The second run must be refused up front, naming the holder.

How a lock works, and why this way:
  * `<dir>/.lock` is created with O_EXCL (atomic on local filesystems and NFSv3+), holding JSON with
    the holder's pid, host, start time and command;
  * the holder refreshes the file's mtime every `HEARTBEAT_S` seconds from a daemon thread;
  * a lock is stale, and is taken over with a warning, when its holder is on this host and that pid is
    not running (a killed run), or when its heartbeat is older than `STALE_AFTER_S` (a dead node: a
    cluster job requeued on another host must be able to resume). `flock` alone would not do: it is
    not reliable on the network filesystems clusters share checkpoints on;
  * a take-over first renames the stale file to a name unique to the taker: of two processes taking
    over at once only one rename succeeds, so only one of them gets the lock.
"""
import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time

from utils.fs import pid_running

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0


class LockedError(ValueError):
    """The directory is locked by a live run (the message names it)."""


def _read_holder(path):
    try:
        with open(path, encoding="utf-8") as f:
            holder = json.load(f)
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}  # being written, or garbage: judged by its age alone


def _describe(holder):
    if not (isinstance(holder.get("pid"), int) and holder.get("host")):
        return "the lock file is unreadable: empty or not a lock record (a run writing it right now, or debris)"
    since = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {when}"


class RunLock:
    """An exclusive, heartbeat-refreshed lock on one directory.

    Args:
      directory: the directory to lock (created if missing).
      stale_after_s: heartbeat age after which a holder on another host is presumed dead.
      heartbeat_s: how often the holder refreshes the lock (must be well below stale_after_s).

    Raises (from `acquire`):
      LockedError: another live run holds the lock.
      OSError: the directory cannot be created or written (e.g. read-only).
    """

    def __init__(self, directory, *, stale_after_s=STALE_AFTER_S, heartbeat_s=HEARTBEAT_S):
        self.directory = os.path.abspath(directory)
        self.path = os.path.join(self.directory, LOCK_NAME)
        self.stale_after_s, self.heartbeat_s = float(stale_after_s), float(heartbeat_s)
        self._stop = threading.Event()
        self._thread = None
        self.held = False

    def _holder_record(self):
        return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                "command": " ".join(sys.argv)[:500]}

    def _try_create(self):
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(self._holder_record(), f)
            f.flush()
            os.fsync(f.fileno())
        return True

    def _stale_reason(self, holder):
        """Why the existing lock may be taken over, or None when its holder may be alive."""
        try:
            age = time.time() - os.path.getmtime(self.path)
        except FileNotFoundError:
            return "it was just released"
        pid = holder.get("pid")
        if holder.get("host") == socket.gethostname() and isinstance(pid, int) and not pid_running(pid):
            return f"process {pid} is not running"
        if age > self.stale_after_s:
            return f"its heartbeat is {age:.0f} s old (holder presumed dead)"
        return None

    def acquire(self):
        """Take the lock, taking over a stale one; start the heartbeat. Returns self."""
        os.makedirs(self.directory, exist_ok=True)
        for _ in range(5):  # a few rounds: another process may release or take over in between
            if self._try_create():
                self.held = True
                self._start_heartbeat()
                return self
            holder = _read_holder(self.path)
            reason = self._stale_reason(holder)
            if reason is None:
                raise LockedError(
                    f"--output-dir: '{self.directory}' is in use by another training run ({_describe(holder)}). "
                    f"Wait for it to finish, or use another --output-dir. If that run is certainly gone, "
                    f"delete {self.path}")
            logger.warning("taking over the lock of %s: %s (%s)", self.directory, reason, _describe(holder))
            aside = f"{self.path}.stale-{socket.gethostname()}-{os.getpid()}"
            with contextlib.suppress(FileNotFoundError):  # lost the race: someone else took it over
                os.replace(self.path, aside)
                os.unlink(aside)
        raise LockedError(f"--output-dir: could not lock '{self.directory}': other processes keep taking it")

    def _start_heartbeat(self):
        def beat():
            while not self._stop.wait(self.heartbeat_s):
                with contextlib.suppress(OSError):
                    os.utime(self.path)

        self._thread = threading.Thread(target=beat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()

    def release(self):
        """Stop the heartbeat and remove the lock if this process still holds it (safe to call twice)."""
        if not self.held:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        holder = _read_holder(self.path)
        if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
