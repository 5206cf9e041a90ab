"""Micro-batching: concurrent callers' items gathered into bounded batches run by ONE worker thread.

Owns: `MicroBatcher` -- a bounded FIFO of pending items, the single worker thread that loads the model and
then runs it on batches (at most `max_batch_size` items, waiting at most `max_wait_s` after the oldest
pending item arrived for more to join), the admission rule (a caller's items are all queued or none: the
queue never holds more than `max_queue` items), draining on close, and counters that show the batching at
work. Does not own HTTP, request validation or what the model computes (`inference.server`,
`inference.predictor`).

Why one thread: a Paddle Inference predictor is not thread-safe, and one predictor running a batch of 8 is
faster than 8 runs of one. The thread that loads the model is the only one that ever calls it.

Items carry a hashable `key` (for QA: the `(n_best, max_answer_length)` options): only items with equal keys
share a batch, because the model call takes those options once per batch. Gathering takes items from the
front of the queue only, so a caller is never overtaken by later arrivals. A batch closes when full, or
`max_wait_s` after its oldest item arrived or the worker became free, whichever is later.

Usage:

    batcher = MicroBatcher(lambda: QAPredictor.load(d), lambda p, items, key: p.answer(items, n_best=key[0]),
                           max_batch_size=8, max_wait_s=0.005, max_queue=64)
    batcher.start()
    futures = batcher.submit([("who?", "tom has a car .")], key=(1,))   # concurrent.futures.Future each
    answers = [f.result() for f in futures]
    batcher.close()                                                      # finishes what was queued
"""
import collections
import concurrent.futures
import logging
import threading
import time

logger = logging.getLogger(__name__)

LOADING, READY, FAILED, CLOSED = "loading", "ready", "failed", "closed"


class Unavailable(Exception):
    """The batcher cannot take items now (model not loaded yet, load failed, or shutting down).

    Attributes:
      reason: str for the caller, e.g. "the model is still loading".
    """

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


class QueueFull(Unavailable):
    """Admitting the items would exceed the queue bound; the caller should retry later.

    Attributes:
      queued: int, items pending when the request came.
      requested: int, items the caller asked to queue.
      limit: int, the bound (`max_queue`).
    """

    def __init__(self, queued, requested, limit):
        super().__init__(f"the queue holds {queued} of at most {limit} questions; {requested} more do not fit")
        self.queued, self.requested, self.limit = queued, requested, limit


class _Pending:
    __slots__ = ("payload", "key", "future", "arrived")

    def __init__(self, payload, key, arrived):
        self.payload, self.key, self.arrived = payload, key, arrived
        self.future = concurrent.futures.Future()


class MicroBatcher:
    """A bounded queue of items served in micro-batches by one worker thread that owns the model.

    Args:
      load: callable() -> model, run once in the worker thread (the model is only ever used there).
      run: callable(model, payloads: list, key) -> list of results, one per payload, in order.
      max_batch_size: int >= 1, most items per `run` call.
      max_wait_s: float >= 0, longest time the oldest pending item waits for others to join its batch
        once the worker is free.
      max_queue: int >= 1, most items pending (queued, not yet running) at once.
      on_load_error: optional callable(exception), called in the worker when `load` raises (the batcher is
        then FAILED and refuses items; e.g. the server stops itself).

    Raises:
      ValueError: a bound out of range (these come from the server's flags, so the message names the flag).
    """

    def __init__(self, load, run, *, max_batch_size, max_wait_s, max_queue, on_load_error=None):
        if not (isinstance(max_batch_size, int) and max_batch_size >= 1):
            raise ValueError(f"--max-batch-size must be an integer >= 1, got {max_batch_size!r}")
        if not max_wait_s >= 0:
            raise ValueError(f"--max-wait-ms must be >= 0, got {max_wait_s * 1000!r}")
        if not (isinstance(max_queue, int) and max_queue >= 1):
            raise ValueError(f"--max-queue must be an integer >= 1, got {max_queue!r}")
        self._load, self._run, self._on_load_error = load, run, on_load_error
        self.max_batch_size, self.max_wait_s, self.max_queue = max_batch_size, float(max_wait_s), max_queue
        self._cond = threading.Condition()
        self._queue = collections.deque()
        self._state = LOADING
        self._closing = False
        self._load_error = None
        self._model = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._work, name="predictor-worker", daemon=True)
        self._counts = collections.Counter()
        self._batch_sizes = collections.Counter()
        self._compute_s = 0.0

    # ------------------------------------------------------------------------------------------ public
    def start(self):
        """Start the worker thread (it loads the model first). Call once."""
        self._thread.start()

    @property
    def state(self):
        """"loading", "ready", "failed" (see `load_error`) or "closed"."""
        with self._cond:
            return self._state

    @property
    def load_error(self):
        """The exception `load` raised, or None."""
        return self._load_error

    @property
    def model(self):
        """The loaded model (None until ready). Read its plain attributes only; call it via `submit`."""
        return self._model

    def wait_ready(self, timeout=None):
        """Block until the model is loaded or its load failed; True when it is ready."""
        self._ready.wait(timeout)
        return self.state == READY

    def submit(self, payloads, key=None, *, keys=None):
        """Queue `payloads` (all of them or none) to be run with `key` (or each with its own of `keys`).

        Args:
          payloads: non-empty sequence of items for `run`.
          key: hashable; only items with equal keys share a batch.
          keys: optional sequence of hashables, one per payload, instead of `key` (a batch request whose
            questions ask for different options).

        Returns:
          list of concurrent.futures.Future, one per payload, in order; each resolves to the result of
          `run` for that payload, or to the exception `run` raised for it.

        Raises:
          QueueFull: the queue would hold more than `max_queue` items (nothing was queued).
          Unavailable: the model is not loaded (yet), its load failed, or the batcher is closing.
        """
        keys = [key] * len(payloads) if keys is None else list(keys)
        if len(keys) != len(payloads):
            raise ValueError(f"{len(keys)} keys for {len(payloads)} payloads")
        now = time.monotonic()
        with self._cond:
            if self._closing or self._state != READY:
                self._counts["refused_unavailable"] += len(payloads)
                raise Unavailable(self._unavailable_reason())
            if len(self._queue) + len(payloads) > self.max_queue:
                self._counts["refused_queue_full"] += len(payloads)
                raise QueueFull(len(self._queue), len(payloads), self.max_queue)
            pending = [_Pending(p, k, now) for p, k in zip(payloads, keys)]
            self._queue.extend(pending)
            self._counts["submitted"] += len(pending)
            self._cond.notify_all()
        return [p.future for p in pending]

    def close(self, timeout=None):
        """Refuse new items, let the worker finish every queued item, and wait for it to stop.

        Args:
          timeout: seconds to wait for the worker (None: as long as it takes).

        Returns:
          True when the worker has stopped (every queued item was answered).
        """
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        stopped = not self._thread.is_alive()
        if stopped:
            with self._cond:
                self._state = CLOSED
        return stopped

    def stats(self):
        """Counters (JSON-able dict): what was submitted, refused, answered, and how it was batched.

        Keys: state, queue_depth, max_batch_size, max_wait_ms, max_queue, submitted, answered, failed,
        refused_queue_full, refused_unavailable, cancelled, batches, largest_batch, batch_sizes ({size as
        str: count}), compute_seconds (time inside `run`).
        """
        with self._cond:
            sizes = dict(sorted(self._batch_sizes.items()))
            return {"state": self._state, "queue_depth": len(self._queue),
                    "max_batch_size": self.max_batch_size, "max_wait_ms": self.max_wait_s * 1000.0,
                    "max_queue": self.max_queue,
                    **{name: self._counts[name] for name in ("submitted", "answered", "failed",
                                                             "refused_queue_full", "refused_unavailable",
                                                             "cancelled", "batches")},
                    "largest_batch": max(sizes, default=0), "batch_sizes": {str(k): v for k, v in sizes.items()},
                    "compute_seconds": round(self._compute_s, 6)}

    # ------------------------------------------------------------------------------------------ worker
    def _unavailable_reason(self):
        if self._closing or self._state == CLOSED:
            return "the server is shutting down"
        if self._state == FAILED:
            return f"the model failed to load: {self._load_error}"
        return "the model is still loading"

    def _work(self):
        try:
            model = self._load()
        except Exception as err:  # noqa: BLE001 -- reported to the owner, which decides how to stop
            with self._cond:
                self._state, self._load_error = FAILED, err
            logger.error("loading the model failed: %s", err)
            try:
                if self._on_load_error is not None:
                    self._on_load_error(err)
            finally:  # waiters wake only after the owner was told, so they see its reaction
                self._ready.set()
            return
        with self._cond:
            self._model, self._state = model, READY
        self._ready.set()
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._run_batch(model, batch)

    def _next_batch(self):
        """Wait for items and gather one batch from the queue's front; None once closing and empty.

        The batch closes when it is full, or `max_wait_s` after its oldest item arrived -- or after the
        worker became free, if that was later: items that queued up while a batch ran would otherwise leave
        at once, without the clients just answered (who send their next request right away) and under
        steady load every batch would hold about half of the clients.
        """
        free_since = time.monotonic()
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            deadline = max(self._queue[0].arrived, free_since) + self.max_wait_s
            while True:
                same = self._leading_same_key()
                # A different key right behind the run of equal keys means nothing more can join it.
                if same >= self.max_batch_size or self._closing or same < len(self._queue):
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return [self._queue.popleft() for _ in range(self._leading_same_key())]

    def _leading_same_key(self):
        key, count = self._queue[0].key, 0
        for item in self._queue:
            if item.key != key or count == self.max_batch_size:
                break
            count += 1
        return count

    def _run_batch(self, model, batch):
        live = [p for p in batch if p.future.set_running_or_notify_cancel()]  # callers gone: skip their work
        with self._cond:
            self._counts["cancelled"] += len(batch) - len(live)
        if not live:
            return
        started = time.perf_counter()
        try:
            results = self._call(model, live)
        except Exception as err:  # noqa: BLE001 -- one bad item must not fail the others: retry singly
            results = self._singly(model, live, err)
        elapsed = time.perf_counter() - started
        answered = 0
        for item, result in zip(live, results):
            if isinstance(result, _Failure):
                item.future.set_exception(result.error)
            else:
                item.future.set_result(result)
                answered += 1
        with self._cond:
            self._counts["batches"] += 1
            self._counts["answered"] += answered
            self._counts["failed"] += len(live) - answered
            self._batch_sizes[len(live)] += 1
            self._compute_s += elapsed
        logger.debug("batch of %d (key %r) in %.1f ms", len(live), live[0].key, elapsed * 1000)

    def _call(self, model, items):
        results = list(self._run(model, [p.payload for p in items], items[0].key))
        if len(results) != len(items):
            raise RuntimeError(f"the model returned {len(results)} results for {len(items)} items")
        return results

    def _singly(self, model, items, batch_error):
        if len(items) == 1:
            logger.warning("a request failed in the model: %s", batch_error)
            return [_Failure(batch_error)]
        out = []
        for item in items:
            try:
                out.extend(self._call(model, [item]))
            except Exception as err:  # noqa: BLE001 -- handed to that caller's future
                logger.warning("a request failed in the model: %s", err)
                out.append(_Failure(err))
        return out


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error):
        self.error = error
