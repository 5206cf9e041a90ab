"""inference.batching.MicroBatcher with a recording model double: how items are gathered (bounded size and
wait, FIFO, equal keys only), admission (queue bound, all or nothing, not before the load), error isolation,
draining on close, and that the model is only ever touched by the one worker thread."""
import threading
import time

import pytest

from inference.batching import MicroBatcher, QueueFull, Unavailable


class Recorder:
    """A model double: answers payload -> (payload, key) and records each batch and the calling thread.
    With `gate` set, every call waits for the gate first (so tests can pile items up behind a batch)."""

    def __init__(self, gate=None, fail_on=None):
        self.batches, self.threads, self.gate, self.fail_on = [], set(), gate, fail_on
        self.entered = threading.Event()

    def run(self, model, payloads, key):
        assert model is self
        self.threads.add(threading.get_ident())
        self.batches.append(list(payloads))
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail_on is not None and self.fail_on in payloads:
            raise ValueError(f"cannot answer {self.fail_on!r}")
        return [(p, key) for p in payloads]


def make(recorder, **bounds):
    bounds = {"max_batch_size": 4, "max_wait_s": 0.0, "max_queue": 16, **bounds}
    batcher = MicroBatcher(lambda: recorder, recorder.run, **bounds)
    batcher.start()
    assert batcher.wait_ready(10)
    return batcher


def submit_behind_a_running_batch(recorder, batcher, payloads, key=None):
    """Start a batch of ["first"] and, while the model is busy with it, queue `payloads` one at a time."""
    first = batcher.submit(["first"], key)
    assert recorder.entered.wait(10)
    return first + [f for p in payloads for f in batcher.submit([p], key)]


def test_items_are_gathered_in_arrival_order_up_to_the_batch_bound():
    gate = threading.Event()
    recorder = Recorder(gate)
    batcher = make(recorder)
    futures = submit_behind_a_running_batch(recorder, batcher, list(range(9)))
    gate.set()
    assert [f.result(10) for f in futures] == [("first", None)] + [(i, None) for i in range(9)]
    assert recorder.batches == [["first"], [0, 1, 2, 3], [4, 5, 6, 7], [8]]
    stats = batcher.stats()
    assert (stats["batches"], stats["answered"], stats["largest_batch"]) == (4, 10, 4)
    assert stats["batch_sizes"] == {"1": 2, "4": 2}
    batcher.close()


def test_only_items_with_equal_keys_share_a_batch_and_nobody_is_overtaken():
    gate = threading.Event()
    recorder = Recorder(gate)
    batcher = make(recorder)
    futures = submit_behind_a_running_batch(recorder, batcher, [], key="a")
    for payload, key in [(1, "a"), (2, "a"), (3, "b"), (4, "a")]:
        futures += batcher.submit([payload], key)
    gate.set()
    assert [f.result(10)[1] for f in futures] == ["a", "a", "a", "b", "a"]
    assert recorder.batches == [["first"], [1, 2], [3], [4]]
    batcher.close()


def test_one_request_may_give_each_item_its_own_key():
    gate = threading.Event()
    recorder = Recorder(gate)
    batcher = make(recorder)
    futures = submit_behind_a_running_batch(recorder, batcher, [], key="a")
    futures += batcher.submit([1, 2, 3], keys=["a", "a", "b"])
    gate.set()
    assert [f.result(10) for f in futures] == [("first", "a"), (1, "a"), (2, "a"), (3, "b")]
    assert recorder.batches == [["first"], [1, 2], [3]]
    with pytest.raises(ValueError, match="2 keys for 1 payloads"):
        batcher.submit([4], keys=["a", "b"])
    batcher.close()


def test_the_oldest_item_waits_for_company_but_no_longer_than_the_bound():
    recorder = Recorder()
    batcher = make(recorder, max_wait_s=0.4)
    started = time.monotonic()
    first = batcher.submit(["a"])[0]
    time.sleep(0.05)
    second = batcher.submit(["b"])[0]
    assert first.result(10) == ("a", None) and second.result(10) == ("b", None)
    waited = time.monotonic() - started
    assert recorder.batches == [["a", "b"]]  # the straggler joined within the wait
    assert 0.35 <= waited < 2.0  # the batch ran when the oldest item's 0.4 s were up, not at once or never
    alone = time.monotonic()
    assert batcher.submit(["c"])[0].result(10) == ("c", None)
    assert 0.35 <= time.monotonic() - alone < 2.0
    batcher.close()


def test_items_queued_behind_a_running_batch_still_wait_for_company_once_the_worker_is_free():
    gate = threading.Event()
    recorder = Recorder(gate)
    batcher = make(recorder, max_wait_s=0.6)
    futures = batcher.submit(["first"])
    assert recorder.entered.wait(10)  # "first" ran alone after waiting its 0.6 s
    futures += batcher.submit([1])
    time.sleep(0.8)  # longer than the wait: measured from its arrival alone, 1 would leave by itself
    gate.set()
    time.sleep(0.05)  # a client just answered sends its next question
    futures += batcher.submit([2])
    assert [f.result(10)[0] for f in futures] == ["first", 1, 2]
    assert recorder.batches == [["first"], [1, 2]]
    batcher.close()


def test_a_full_queue_refuses_the_whole_request_and_says_the_limit():
    gate = threading.Event()
    recorder = Recorder(gate)
    batcher = make(recorder, max_queue=3)
    futures = submit_behind_a_running_batch(recorder, batcher, [1, 2])  # "first" runs; 2 of 3 slots used
    with pytest.raises(QueueFull) as err:
        batcher.submit([3, 4])  # 2 more do not fit in the 1 slot left: neither is queued
    assert (err.value.queued, err.value.requested, err.value.limit) == (2, 2, 3)
    assert "at most 3" in err.value.reason
    futures += batcher.submit([3])  # the last slot still takes one
    with pytest.raises(QueueFull):
        batcher.submit([5])
    assert batcher.stats()["refused_queue_full"] == 3
    gate.set()
    assert [f.result(10)[0] for f in futures] == ["first", 1, 2, 3]
    assert sorted(p for b in recorder.batches for p in b if p != "first") == [1, 2, 3]  # 4 and 5 never ran
    batcher.close()


def test_nothing_is_accepted_before_the_model_is_loaded():
    loaded = threading.Event()
    recorder = Recorder()
    batcher = MicroBatcher(lambda: loaded.wait(10) and recorder, recorder.run,
                           max_batch_size=2, max_wait_s=0, max_queue=4)
    batcher.start()
    assert batcher.state == "loading" and batcher.model is None
    with pytest.raises(Unavailable, match="still loading"):
        batcher.submit(["early"])
    loaded.set()
    assert batcher.wait_ready(10) and batcher.model is recorder
    assert batcher.submit(["late"])[0].result(10) == ("late", None)
    batcher.close()


def test_a_failed_load_is_reported_and_refuses_items():
    seen = []

    def load():
        raise FileNotFoundError("no model in /nowhere")

    batcher = MicroBatcher(load, lambda *a: [], max_batch_size=1, max_wait_s=0, max_queue=1,
                           on_load_error=seen.append)
    batcher.start()
    assert batcher.wait_ready(10) is False
    assert batcher.state == "failed" and isinstance(batcher.load_error, FileNotFoundError)
    assert seen == [batcher.load_error]
    with pytest.raises(Unavailable, match="failed to load: no model in /nowhere"):
        batcher.submit(["q"])
    assert batcher.close(10)


def test_a_bad_item_fails_alone_and_its_batch_mates_are_answered():
    gate = threading.Event()
    recorder = Recorder(gate, fail_on="bad")
    batcher = make(recorder)
    futures = submit_behind_a_running_batch(recorder, batcher, ["ok1", "bad", "ok2"])
    gate.set()
    assert futures[1].result(10) == ("ok1", None) and futures[3].result(10) == ("ok2", None)
    with pytest.raises(ValueError, match="cannot answer 'bad'"):
        futures[2].result(10)
    assert batcher.stats()["failed"] == 1 and batcher.stats()["answered"] == 3
    batcher.close()


def test_a_model_returning_the_wrong_number_of_results_fails_those_items():
    batcher = MicroBatcher(lambda: None, lambda model, payloads, key: payloads[:-1],
                           max_batch_size=2, max_wait_s=0, max_queue=2)
    batcher.start()
    batcher.wait_ready(10)
    with pytest.raises(RuntimeError, match="0 results for 1 items"):
        batcher.submit(["q"])[0].result(10)
    batcher.close()


def test_close_answers_everything_queued_then_refuses_new_items():
    gate = threading.Event()
    recorder = Recorder(gate)
    batcher = make(recorder, max_batch_size=2)
    futures = submit_behind_a_running_batch(recorder, batcher, [1, 2, 3])
    closer = threading.Thread(target=batcher.close)
    closer.start()
    time.sleep(0.05)
    with pytest.raises(Unavailable, match="shutting down"):
        batcher.submit([4])
    gate.set()
    closer.join(10)
    assert not closer.is_alive() and batcher.state == "closed"
    assert [f.result(0) for f in futures] == [("first", None), (1, None), (2, None), (3, None)]
    assert recorder.batches == [["first"], [1, 2], [3]]


def test_cancelled_items_are_not_computed():
    gate = threading.Event()
    recorder = Recorder(gate)
    batcher = make(recorder)
    futures = submit_behind_a_running_batch(recorder, batcher, [1, 2])
    assert futures[1].cancel()  # its caller went away before the batch started
    gate.set()
    assert futures[2].result(10) == (2, None)
    assert recorder.batches == [["first"], [2]] and batcher.stats()["cancelled"] == 1
    batcher.close()


def test_the_model_is_loaded_and_called_only_in_the_worker_thread():
    loader_threads = []
    recorder = Recorder()
    batcher = MicroBatcher(lambda: loader_threads.append(threading.get_ident()) or recorder, recorder.run,
                           max_batch_size=3, max_wait_s=0.01, max_queue=64)
    batcher.start()
    batcher.wait_ready(10)
    results, lock = [], threading.Lock()

    def client(i):
        value = batcher.submit([i])[0].result(10)
        with lock:
            results.append(value)

    clients = [threading.Thread(target=client, args=(i,)) for i in range(24)]
    for t in clients:
        t.start()
    for t in clients:
        t.join(10)
    assert sorted(r[0] for r in results) == list(range(24))  # none lost, none duplicated
    assert recorder.threads == set(loader_threads) and threading.get_ident() not in recorder.threads
    assert max(len(b) for b in recorder.batches) <= 3
    batcher.close()


@pytest.mark.parametrize("bounds, flag", [({"max_batch_size": 0}, "--max-batch-size"),
                                          ({"max_wait_s": -0.001}, "--max-wait-ms"),
                                          ({"max_queue": 0}, "--max-queue")])
def test_bounds_out_of_range_name_their_flag(bounds, flag):
    with pytest.raises(ValueError, match=flag):
        MicroBatcher(lambda: None, lambda *a: [], **{"max_batch_size": 1, "max_wait_s": 0, "max_queue": 1, **bounds})
