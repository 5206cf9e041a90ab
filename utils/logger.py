"""Logging set-up for every entry point, in one place.

Owns: `init_logging(rank)` (the only function that configures Python logging), `progress()` (the progress
of every long step: a bar on a terminal, periodic log lines elsewhere) and `native_stderr()` (what C++ code
writes to the process's stderr, captured so a caller can keep what a user can act on). Does not own metric
sinks for training reports (those live with the training loop's report writer).

Rank 0 logs at INFO; other ranks log warnings only, so an 8-GPU job prints one stream, not eight.

Bars and log lines share stderr: the handler writes each record through `tqdm.write`, which clears the bars
first and redraws them after, so a log line never lands on (or is cut by) a bar's line.
"""
import contextlib
import logging
import os
import sys
import tempfile
import time


_FORMAT = "[%(asctime)s] %(levelname)s %(name)s: %(message)s"
# Seconds between two progress lines in a log (stderr not a terminal): often enough to show a run is alive
# and how long it has left, rare enough that a long evaluation adds a few dozen lines, not thousands.
LOG_INTERVAL_S = 30.0
_LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%) | {rate_fmt}{postfix} | ETA {remaining}"
_OPEN_LINE_FORMAT = "{desc}: {n_fmt} {unit} | {rate_fmt}{postfix} | elapsed {elapsed}"  # no total known


class _BarSafeHandler(logging.StreamHandler):
    """A StreamHandler that writes through `tqdm.write`: active bars on the same stream are cleared before
    the record and redrawn after it, instead of the record being appended to a bar's line."""

    def emit(self, record):
        try:
            from tqdm import tqdm

            stream = self.stream
            target = sys.stderr if getattr(stream, "follows_sys_stderr", False) else stream
            tqdm.write(self.format(record), file=target)
            target.flush()
        except Exception:  # noqa: BLE001 -- logging's own contract: report, never raise
            self.handleError(record)


def init_logging(rank=0, level=logging.INFO, stream=None):
    """Configure the root logger once for this process.

    Args:
      rank: int, this process's rank; ranks other than 0 only log WARNING and above.
      level: logging level for rank 0.
      stream: where to write (default sys.stderr); a stream with `follows_sys_stderr = True` stands for
        whatever sys.stderr is at each write.

    Returns:
      The root logging.Logger.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = _BarSafeHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level if rank == 0 else logging.WARNING)
    # Dask and fsspec are chatty at INFO; their warnings still get through.
    for noisy in ("distributed", "fsspec", "asyncio", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return root


class _LogLines:
    """A file for tqdm that turns its refreshes (tqdm writes "\r<status>", at most every LOG_INTERVAL_S) into
    log records. A step shorter than LOG_INTERVAL_S logs nothing: it was never silent for long, and a run's
    log should not get two lines per small loop."""

    def __init__(self, logger, interval):
        self.logger, self.last, self.interval = logger, None, interval
        self.started = time.monotonic()

    def write(self, text):
        line = text.replace("\r", "").strip()
        if line and line != self.last and time.monotonic() - self.started >= self.interval:
            self.last = line  # closing redraws the last state: once is enough
            self.logger.info("%s", line)

    def flush(self):
        pass


def progress(iterable=None, total=None, desc=None, unit="it", disable=None, initial=0, log=True):
    """The progress of a long step: a tqdm bar on a terminal, log lines with done/total, rate and ETA in a log.

    Long steps (feature conversion, training, evaluation, prediction) wrap their loops with this so users see
    that work is moving and how long it has left, wherever stderr goes. `initial`: work already done before
    (a resumed run), shown as done but left out of the rate and ETA.

    Args:
      disable: True shows nothing (e.g. ranks other than 0); False forces the bar; None (default) draws the
        bar on a terminal and otherwise logs a line every LOG_INTERVAL_S seconds (and one at the end).
      log: False leaves out those log lines (a loop that logs its own, e.g. training's metric lines).

    Returns:
      a tqdm object (iterate it, or call update / set_postfix_str / close).
    """
    from tqdm import tqdm

    if disable is None and not sys.stderr.isatty():
        if not log:
            return tqdm(iterable, total=total, disable=True, initial=initial)
        lines = _LogLines(logging.getLogger("progress"), LOG_INTERVAL_S)
        return tqdm(iterable, total=total, desc=desc, unit=unit, file=lines, mininterval=LOG_INTERVAL_S, maxinterval=max(LOG_INTERVAL_S, 1.0), miniters=1, initial=initial,
                    bar_format=_LINE_FORMAT if total is not None or _has_len(iterable) else _OPEN_LINE_FORMAT)
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=bool(disable), file=sys.stderr,
                dynamic_ncols=True, mininterval=0.5, initial=initial)


def _has_len(iterable):
    try:
        len(iterable)
    except TypeError:
        return False
    return True


class _Captured:
    """What `native_stderr` caught: `text` (str), filled when its block ends."""
    text = ""


@contextlib.contextmanager
def native_stderr():
    """Capture what is written to file descriptor 2 while the block runs (C++ code writes there directly:
    Python's sys.stderr cannot redirect it), and give it to the caller to filter.

    On an exception the captured text is written back to stderr unchanged, so nothing explaining a failure
    is lost. Python's own writes to sys.stderr during the block are flushed into the capture as well.

    Yields:
      a `_Captured`; its `text` is set when the block ends.
    """
    captured = _Captured()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        except BaseException:
            _restore(saved, sink, captured)
            sys.stderr.write(captured.text)
            raise
        _restore(saved, sink, captured)


def _restore(saved, sink, captured):
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    sink.seek(0)
    captured.text = sink.read().decode("utf-8", "replace")
