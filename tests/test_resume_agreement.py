"""tasks.resume_agreement: rank 0 chooses, every rank verifies, a disagreement fails on every rank.

The ranks are threads sharing an in-memory store with the blocking `get` of Paddle's TCPStore; the real
store is exercised by tests/test_pretraining_faults.py (two CPU processes under paddle.distributed.launch).
"""
import threading

import pytest

from tasks import resume_agreement as ra


class _Store:
    """Paddle TCPStore's contract: set(key, str), get(key) blocks until the key exists, returns bytes."""

    def __init__(self):
        self._data, self._cond = {}, threading.Condition()

    def set(self, key, value):
        with self._cond:
            self._data[key] = value.encode("utf-8")
            self._cond.notify_all()

    def get(self, key):
        with self._cond:
            assert self._cond.wait_for(lambda: key in self._data, timeout=10), key
            return list(self._data[key])  # TCPStore returns a list of byte values


def _ranks(world, body):
    """Run body(rank, store) on `world` threads; returns {rank: result or the exception raised}."""
    store, results = _Store(), {}

    def run(rank):
        try:
            results[rank] = body(rank, store)
        except Exception as err:  # noqa: BLE001 -- collected for the assertions
            results[rank] = err

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    return results


def test_every_rank_gets_rank_0s_choice():
    chosen = []

    def body(rank, store):
        return ra.agree_on_step(store, rank, 3, "/ckpt", [2, 4, 6], lambda: chosen.append(rank) or 4)

    assert _ranks(3, body) == {0: 4, 1: 4, 2: 4}
    assert chosen == [0]  # only rank 0 chooses (e.g. verifies checksums)


def test_a_rank_that_cannot_see_the_checkpoint_fails_every_rank_naming_it():
    views = {0: [2, 4], 1: [2, 4], 2: []}

    def body(rank, store):
        return ra.agree_on_step(store, rank, 3, "/ckpt", views[rank], lambda: 4)

    results = _ranks(3, body)
    assert all(isinstance(e, ValueError) for e in results.values())
    message = str(results[1])
    assert message == str(results[0]) == str(results[2])
    assert "rank 0 resumes step 4 but rank 2 on host" in message and "sees no checkpoint" in message
    assert "shared by every node" in message and "rank 1" not in message


def test_rank_0_seeing_nothing_while_others_see_checkpoints_is_refused_too():
    views = {0: [], 1: [8]}
    results = _ranks(2, lambda rank, store: ra.agree_on_step(store, rank, 2, "/c", views[rank], lambda: None))
    assert "rank 0 sees no checkpoint but rank 1" in str(results[1])


def test_rank_0_unable_to_choose_fails_every_rank():
    def choose():
        raise ValueError("every checkpoint in /c is damaged")

    results = _ranks(2, lambda rank, store: ra.agree_on_step(store, rank, 2, "/c", [4], choose))
    assert all("rank 0 cannot resume: every checkpoint in /c is damaged" in str(e) for e in results.values())


def test_a_failed_restore_anywhere_fails_every_rank():
    errors = {0: None, 1: "cannot read /c/4/bert_paddle.pdopt", 2: None}
    results = _ranks(3, lambda rank, store: ra.agree_loaded(store, rank, 3, errors[rank]))
    assert all("rank 1 on host" in str(e) and "pdopt" in str(e) for e in results.values())
    same = _ranks(2, lambda rank, store: ra.agree_loaded(store, rank, 2, "is a phase 1 checkpoint"))
    assert [str(e) for e in same.values()] == ["is a phase 1 checkpoint"] * 2  # said once, not per rank
    assert _ranks(2, lambda rank, store: ra.agree_loaded(store, rank, 2, None)) == {0: None, 1: None}
