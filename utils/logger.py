"""Logging set-up for every entry point, in one place.

Owns: `init_logging(rank)` (the only function that configures Python logging) and `progress()` (the
progress bar used by long steps). Does not own metric sinks for training reports (those live with the
training loop's report writer).

Rank 0 logs at INFO; other ranks log warnings only, so an 8-GPU job prints one stream, not eight.
"""
import logging
import sys


_FORMAT = "[%(asctime)s] %(levelname)s %(name)s: %(message)s"


def init_logging(rank=0, level=logging.INFO, stream=None):
    """Configure the root logger once for this process.

    Args:
      rank: int, this process's rank; ranks other than 0 only log WARNING and above.
      level: logging level for rank 0.
      stream: where to write (default sys.stderr).

    Returns:
      The root logging.Logger.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level if rank == 0 else logging.WARNING)
    # Dask and fsspec are chatty at INFO; their warnings still get through.
    for noisy in ("distributed", "fsspec", "asyncio", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return root


def progress(iterable=None, total=None, desc=None, unit="it", disable=None, initial=0):
    """A tqdm progress bar on stderr, silent when stderr is not a terminal unless forced.

    Long steps (extraction, preprocessing, feature conversion) wrap their loops with this so users see
    that work is moving; logs and CI output stay clean because the bar only draws on a TTY. `initial`:
    work already done before (a resumed run), shown as done but left out of the rate and ETA.
    """
    from tqdm import tqdm

    if disable is None:
        disable = not sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, file=sys.stderr,
                dynamic_ncols=True, mininterval=0.5, initial=initial)
