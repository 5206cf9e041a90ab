"""Every process of a multi-process run resumes the same checkpoint, or none of them starts.

Owns: `agree_on_step` (rank 0 chooses the step, every rank checks it can see that checkpoint) and
`agree_loaded` (every rank reports whether its restore succeeded), both over the key-value store that
`paddle.distributed.launch` starts for every job (`PADDLE_MASTER`). Does not own choosing or loading a
checkpoint (`utils.checkpoint`).

Why: if each rank picked its resume step alone, a node that cannot see the results directory (not on a
shared filesystem, a stale NFS cache) would start at step 0 from random weights while the others resume,
run a different number of steps and hang in the first all-reduce it does not share. Here every rank
learns the same verdict and, on a disagreement, every rank fails with the same message naming the ranks
and hosts that differ, so the job ends at once instead of hanging until a collective timeout.
"""
import json
import logging
import socket

logger = logging.getLogger(__name__)

_PREFIX = "bert/resume"


def global_store():
    """The job's TCP key-value store (created by the first caller, rank 0 listening on PADDLE_MASTER)."""
    from paddle.base import core
    return core.create_or_get_global_tcp_store()


def _put(store, key, value):
    store.set(f"{_PREFIX}/{key}", json.dumps(value))


def _get(store, key):
    return json.loads(bytes(store.get(f"{_PREFIX}/{key}")).decode("utf-8"))


def agree_on_step(store, rank, world_size, root_dir, visible_steps, choose):
    """The step every rank restores: rank 0's choice, if every rank can see that checkpoint.

    Args:
      store: key-value store with `set(key, str)` and blocking `get(key) -> bytes`.
      rank, world_size: this process's place in the job.
      root_dir: str, the checkpoint directory (named in messages).
      visible_steps: list of int, the complete checkpoints this rank sees in `root_dir`.
      choose: callable() -> int or None, run on rank 0 only: the step to resume (None: start fresh).

    Returns:
      int step or None, the same on every rank.

    Raises:
      ValueError: on every rank, naming each rank (and host) that does not see the chosen checkpoint.
    """
    _put(store, f"view/{rank}", {"host": socket.gethostname(), "steps": sorted(visible_steps)})
    if rank == 0:
        _put(store, "verdict", _verdict(store, world_size, root_dir, choose))
    verdict = _get(store, "verdict")
    if verdict["problems"]:
        raise ValueError(f"--from-checkpoint: the processes of this job do not see the same checkpoints in "
                         f"{root_dir}: " + "; ".join(verdict["problems"])
                         + ". The output directory must be on a filesystem shared by every node.")
    logger.info("all %d processes resume %s", world_size,
                f"step {verdict['step']}" if verdict["step"] is not None else "nothing (fresh start)")
    return verdict["step"]


def _verdict(store, world_size, root_dir, choose):
    try:
        step = choose()
    except ValueError as err:  # e.g. every checkpoint damaged: the same error on every rank
        return {"step": None, "problems": [f"rank 0 cannot resume: {err}"]}
    problems = []
    for other in range(world_size):
        view = _get(store, f"view/{other}")
        if step is None and view["steps"]:
            problems.append(f"rank 0 sees no checkpoint but rank {other} on host {view['host']} sees steps "
                            f"{view['steps']}")
        elif step is not None and step not in view["steps"]:
            seen = f"steps {view['steps']}" if view["steps"] else "no checkpoint"
            problems.append(f"rank 0 resumes step {step} but rank {other} on host {view['host']} sees {seen}")
    return {"step": step, "problems": problems}


def agree_loaded(store, rank, world_size, error):
    """Every rank reports whether its restore worked; if one failed, every rank raises its message.

    Args:
      error: None, or the str message of this rank's failure.

    Raises:
      ValueError: on every rank, when any rank failed (naming the ranks, hosts and messages).
    """
    _put(store, f"loaded/{rank}", {"host": socket.gethostname(), "error": error})
    failures = []
    for other in range(world_size):
        status = _get(store, f"loaded/{other}")
        if status["error"]:
            failures.append(f"rank {other} on host {status['host']}: {status['error']}")
    messages = {_get(store, f"loaded/{other}")["error"] for other in range(world_size)} - {None}
    if len(messages) == 1 and len(failures) == world_size:
        raise ValueError(messages.pop())  # the same refusal everywhere (e.g. the wrong phase): say it once
    if failures:
        raise ValueError("restoring the checkpoint failed on " + "; ".join(failures))
