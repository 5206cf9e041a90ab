"""Local worker-process pools whose workers end with the process that started them.

Owns: `exit_with_parent` (the pool initializer that ties a worker's life to its parent's) and `process_pool`
(a `ProcessPoolExecutor` that installs it). Every local pool of the data pipeline is made here
(`data.prep.wikipedia`'s cleaning pool, `data.prep.preprocess_bert_pretrain`'s block pool). Does not own
what the workers run, nor the data loader's workers (`data.loader.loader_workers`, which are not a pool and
check their parent at every batch they hand over).

Why: a pool worker blocks on its task queue, and it holds that queue's write end itself, so it never sees
end-of-file when the main process is SIGKILLed (or dies of SIGTERM's default action, which runs no cleanup):
the workers of a killed run went on for a minute and more, each holding hundreds of MB.
"""
import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_WATCHDOG_SECONDS = 1.0


def exit_with_parent(parent_pid):
    """Worker initializer: end this worker as soon as the process that started it is gone.

    On Linux the kernel delivers SIGKILL to this worker when its parent dies (prctl PR_SET_PDEATHSIG; a
    worker has nothing to clean up, its results only matter to the dead parent). Elsewhere, or if prctl
    fails, a daemon thread polls the parent pid once a second. Either way a parent that died before this
    ran is caught by the first check.

    PR_SET_PDEATHSIG fires when the parent *thread* that started the worker ends, so a pool must be used
    (submitted to first) from a thread that lives as long as the pool, e.g. the main thread.

    Args:
      parent_pid: int, pid of the process that created the pool.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(_WATCHDOG_SECONDS)
        os._exit(1)  # no cleanup: nobody is left to receive this worker's results

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def process_pool(num_workers, start_method):
    """A ProcessPoolExecutor of `num_workers` processes started with `start_method` ('fork', 'spawn'), each
    of which ends when this process does, even when it is SIGKILLed (`exit_with_parent`)."""
    return ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context(start_method),
                               initializer=exit_with_parent, initargs=(os.getpid(),))
