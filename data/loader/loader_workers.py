"""Worker processes for the pretraining loader: one epoch's batches built in parallel, yielded in order.

Owns: `WorkerPool` (start, collect in index order, report worker failures, stop). Does not own what a batch
holds (`data.loader.loader_plan.BatchProducer` with a reader) or the loader (`data.loader.lddl_loader`).

Workers (num_workers > 0): started from a `forkserver` context (forking a process that has imported paddle
and started OpenMP threads is unsafe); worker w builds batches i = w (mod W) of the same plan and the parent
yields them in index order, so the output equals num_workers=0 exactly. Every worker reads and tokenises
the files of the current windows itself (only collating and masking are split), so workers add little
throughput on a small machine; their use is to overlap loading with the training step. They start at each
iter() (~0.5 s) and stop at the end of the epoch, on close(), when the iterator is dropped, and at
interpreter exit. As with any `spawn`/`forkserver` multiprocessing, a script using workers must guard its
entry point with `if __name__ == "__main__":` (workers import the main module).
"""
import logging
import multiprocessing
import pickle
import queue as queue_lib
import signal
import weakref

from data.loader.loader_plan import BatchProducer

logger = logging.getLogger(__name__)

_WORKER_POLL_SECONDS = 0.1
_WORKER_JOIN_SECONDS = 10.0
_PREFETCH_PER_WORKER = 2


def _worker_main(plan, reader, epoch, start, worker_id, num_workers, out_queue, stop_event):
    """Build batches i >= start with i = worker_id (mod num_workers) and send (i, feed, None)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop (close())
    parent = multiprocessing.parent_process()
    producer, epoch_plan = BatchProducer(reader), plan.epoch(epoch)
    i = start + (worker_id - start) % num_workers
    try:
        for i in range(i, len(epoch_plan), num_workers):
            if not _send(out_queue, (i, producer.batch(epoch_plan, i), None), stop_event, parent):
                return
    except BaseException as exc:  # noqa: BLE001 -- every failure must reach the parent
        _send(out_queue, (i, None, _picklable(exc)), stop_event, parent)


def _send(out_queue, item, stop_event, parent):
    """Put `item`, waiting while the queue is full; False (and no flush at exit) once the parent stops."""
    while not stop_event.is_set():
        try:
            out_queue.put(item, timeout=_WORKER_POLL_SECONDS)
            return True
        except queue_lib.Full:
            if parent is not None and not parent.is_alive():
                break
    out_queue.cancel_join_thread()  # nobody will read what is still buffered: exit without flushing it
    return False


def _picklable(exc):
    try:
        pickle.dumps(exc)
        return exc
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(exc).__name__}: {exc}")


class WorkerPool:
    """num_workers processes building one epoch's batches from `start`; iterate for (i, feed) in order."""

    def __init__(self, plan, reader, epoch, start, num_batches, num_workers):
        ctx = multiprocessing.get_context(
            "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn")
        self._start, self._num_batches, self._num_workers = start, num_batches, num_workers
        self._stop = ctx.Event()
        self._queues = [ctx.Queue(maxsize=_PREFETCH_PER_WORKER) for _ in range(num_workers)]
        self._procs = [ctx.Process(target=_worker_main, daemon=True, name=f"bert-loader-{w}",
                                   args=(plan, reader, epoch, start, w, num_workers, self._queues[w], self._stop))
                       for w in range(num_workers)]
        for p in self._procs:
            p.start()
        self._finalizer = weakref.finalize(self, _shutdown_workers, self._procs, self._queues, self._stop)

    def __iter__(self):
        for i in range(self._start, self._num_batches):
            w = i % self._num_workers
            got, feed, exc = self._get(w)
            if exc is not None:
                exc.add_note(f"(raised in data loader worker {w} while building batch {got})")
                raise exc
            if got != i:
                raise RuntimeError(f"loader worker {w} sent batch {got} where {i} was due")
            yield i, feed

    def _get(self, w):
        while True:
            try:
                return self._queues[w].get(timeout=_WORKER_POLL_SECONDS)
            except queue_lib.Empty:
                if not self._procs[w].is_alive():
                    break
        try:  # the worker may have flushed its last item just before exiting
            return self._queues[w].get(timeout=_WORKER_POLL_SECONDS)
        except queue_lib.Empty:
            raise RuntimeError(f"data loader worker {w} exited with code {self._procs[w].exitcode} before "
                               f"sending its batches") from None

    def close(self):
        self._finalizer()


def _shutdown_workers(procs, queues, stop_event):
    stop_event.set()
    for p in procs:
        p.join(timeout=_WORKER_JOIN_SECONDS)
        if p.is_alive():
            logger.warning("loader worker %s did not stop in %.0f s; terminating it", p.name, _WORKER_JOIN_SECONDS)
            p.terminate()
            p.join()
    for q in queues:
        q.close()
