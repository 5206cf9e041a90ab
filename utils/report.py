"""Training reports: metric sinks and a writer/reader for DLLogger's JSON-lines format.

Owns: the `MetricSink` protocol, `DLLoggerJSONSink` (the machine-readable report file),
`StdoutSink` (one human-readable log line per step), `MetricLogger` (fan-out, rank 0 only),
`build_metric_logger` and `read_dllogger_report`. Does not own Python logging set-up
(`utils.logger.init_logging`), what the training loop measures, or plotting (`utils.plot_report`).

The report format is the one NVIDIA's `dllogger` `JSONStreamBackend` writes (the package cannot be
installed here, so this is an independent writer of the same format). One record per line:

    DLLL {"timestamp": "1732540000.123456", "datetime": "2024-11-25 14:26:40.123456+01:00",
          "elapsedtime": "12.5", "type": "LOG", "step": [0, 120], "data": {"loss": 7.23}}
    DLLL {"timestamp": "...", "elapsedtime": "...", "datetime": "...", "type": "METADATA",
          "metric": "loss", "metadata": {"unit": "", "format": ":.4f"}}

- `timestamp` (POSIX seconds) and `elapsedtime` (seconds since the sink was opened) are JSON
  *strings*, as dllogger writes them; `datetime` is the local time with its UTC offset.
- `step` is an int, a list such as `[epoch, global_step]`, the string `"PARAMETER"` for run
  parameters, or `[]` for the final summary (dllogger's `step=tuple()`).
- The reference BERT writes PARAMETER records (`SEED`, `batch_size_per_gpu`, `learning_rate`, ...),
  per-step records (`loss`, `learning_rate`, `seqs_per_sec`, ...) and a `[]` summary with
  `e2e_train_time`, `training_sequences_per_second`, `final_loss`, `raw_train_time`; SQuAD adds
  `e2e_inference_time`, `inference_sequences_per_second`, `exact_match`, `F1`.
- NaN and infinities are written as `NaN`/`Infinity` (Python's json default, same as dllogger), which
  Python's json reads back; strict JSON parsers would not.
"""
import json
import logging
import math
import os
from datetime import datetime
from typing import Protocol, runtime_checkable

import numpy as np

from utils.checks import is_int

log = logging.getLogger(__name__)

PREFIX = "DLLL "
PARAMETER_STEP = "PARAMETER"
# Per-step metric names that sinks and the plotter treat as learning rate / throughput. The first
# name of each tuple is the one the reference BERT writes.
LR_KEYS = ("learning_rate", "lr")
THROUGHPUT_KEYS = ("seqs_per_sec", "sequences_per_second")
TOKEN_THROUGHPUT_KEYS = ("tokens_per_sec", "tokens_per_second")
# Seconds until a phase ends (`tasks.progress.UpdateProgress.eta_seconds`), shown as h:mm:ss.
ETA_KEYS = ("eta_seconds",)
_WRITE_MODES = ("w", "a")
_STEP_NAMES = ("epoch", "step", "iter")


@runtime_checkable
class MetricSink(Protocol):
    """Where metrics go. Implementations must accept every call in any order until `close()`."""

    def log(self, metrics, step):
        """Record `metrics` (dict str -> number/str/bool) at `step` (int, list/tuple of ints, or str)."""

    def log_parameters(self, params):
        """Record run parameters (dict str -> JSON-able value) once, typically before training."""

    def log_metadata(self, name, meta):
        """Record metadata (e.g. {"unit": "seq/s", "format": ":.1f"}) about metric `name`."""

    def close(self):
        """Release resources; further calls are errors. Calling it twice is allowed."""


def to_jsonable(value, where="value"):
    """Convert `value` to plain Python types that `json.dumps` writes without loss.

    Args:
      value: None, bool, int, float, str, numpy scalar/array, os.PathLike, or a dict/list/tuple of these.
      where: name used in the error message (e.g. the metric key).

    Returns:
      The same value built from dict/list/str/int/float/bool/None (numpy scalars become Python
      numbers, arrays become nested lists, tuples become lists, paths become str).

    Raises:
      ValueError: a dict key is not a str, or a value has a type JSON cannot hold.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: key {key!r} is {type(key).__name__}, expected str")
            out[key] = to_jsonable(item, f"{where}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise ValueError(f"{where}: cannot write a {type(value).__name__} to a report; "
                     "convert it to a number, string or list first")


def normalize_step(step):
    """Check a step and return its JSON form.

    Args:
      step: int (or numpy integer); list/tuple of ints such as (epoch, global_step); `[]`/`()` for the
        final summary; or a non-empty str such as "PARAMETER".

    Returns:
      int, list of int, or str.

    Raises:
      ValueError: any other type (bools and floats included), or a non-int element.
    """
    if isinstance(step, (bool, np.bool_)):
        raise ValueError(f"step must be an int, a list of ints or a str, got bool {step!r}")
    if isinstance(step, (int, np.integer)):
        return int(step)
    if isinstance(step, str) and step:
        return step
    if isinstance(step, (list, tuple)):
        if any(isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)) for s in step):
            raise ValueError(f"step elements must be ints, got {step!r}")
        return [int(s) for s in step]
    raise ValueError(f"step must be an int, a list of ints or a non-empty str, got {step!r}")


def _check_metrics(metrics, what="metrics"):
    if not isinstance(metrics, dict):
        raise ValueError(f"{what} must be a dict of str -> value, got {type(metrics).__name__}")
    return to_jsonable(metrics, what)


def _local_now():
    return datetime.now().astimezone()


def _repair_unterminated_tail(path):
    """Make `path` end with a newline before appending to it.

    A final line without a newline was cut short by a killed run. If it still parses as a record it is
    kept (a newline is added); otherwise the fragment is removed with a warning. Why: appending after
    it would glue the next record onto the fragment and turn a tolerated truncated last line into a
    corrupt record in the middle of the file.
    """
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        start = _last_line_start(f, size)
        if start == size:
            return
        f.seek(start)
        tail = f.read(size - start)
        try:
            _parse_line(tail)
        except ValueError:
            log.warning("%s: dropping %d bytes of an unterminated final record before appending",
                        path, size - start)
            f.truncate(start)
            return
        f.seek(size)
        f.write(b"\n")


def _last_line_start(f, size):
    """Offset just past the last newline of binary file `f` (== size if it ends with one, 0 if none)."""
    pos = size
    while pos > 0:
        start = max(0, pos - 65536)
        f.seek(start)
        chunk = f.read(pos - start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        pos = start
    return 0


class DLLoggerJSONSink:
    """Writes a DLLogger JSON-lines report (format in the module docstring).

    Each record is written with one `write` and flushed at once, so a killed run leaves every
    completed record readable; at most the last line is cut short, which `read_dllogger_report`
    tolerates.

    Args:
      path: report file; missing parent directories are created.
      mode: "w" starts a new report (truncating an old one); "a" appends, for a resumed run. When
        appending, a half-written final line left by a killed run is removed first (with a warning).
        `elapsedtime` restarts at 0 in every process, as in dllogger.
      clock: callable returning a timezone-aware datetime (tests inject a fixed clock).

    Raises:
      ValueError: `mode` is not "w" or "a".
      OSError: the file cannot be opened.
    """

    def __init__(self, path, mode="w", clock=None):
        if mode not in _WRITE_MODES:
            raise ValueError(f"DLLoggerJSONSink mode must be one of {_WRITE_MODES}, got {mode!r}")
        self.path = os.fspath(path)
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        if mode == "a" and os.path.exists(self.path):
            _repair_unterminated_tail(self.path)
        self._clock = clock or _local_now
        self._start = self._clock()
        # buffering=1 is line buffering; the explicit flush below makes the guarantee independent of it.
        self._file = open(self.path, mode, buffering=1, encoding="utf-8", newline="\n")

    def _stamp(self):
        now = self._clock()
        elapsed = (now - self._start).total_seconds()
        return str(now.timestamp()), str(now), str(elapsed)

    def _write(self, record):
        if self._file is None:
            raise ValueError(f"report {self.path} is closed")
        self._file.write(PREFIX + json.dumps(record) + "\n")
        self._file.flush()

    def log(self, metrics, step):
        """Write one LOG record. Raises ValueError on a bad step or a value JSON cannot hold."""
        step = normalize_step(step)
        data = _check_metrics(metrics)
        timestamp, date, elapsed = self._stamp()
        self._write({"timestamp": timestamp, "datetime": date, "elapsedtime": elapsed,
                     "type": "LOG", "step": step, "data": data})

    def log_parameters(self, params):
        """Write run parameters as a LOG record with step "PARAMETER" (how dllogger users do it)."""
        self.log(_check_metrics(params, "parameters"), PARAMETER_STEP)

    def log_metadata(self, name, meta):
        """Write one METADATA record for metric `name`. Raises ValueError on a bad name or dict."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"metadata name must be a non-empty str, got {name!r}")
        meta = _check_metrics(meta, f"metadata for {name}")
        timestamp, date, elapsed = self._stamp()
        self._write({"timestamp": timestamp, "elapsedtime": elapsed, "datetime": date,
                     "type": "METADATA", "metric": name, "metadata": meta})

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def format_step(step, total_steps=None):
    """Human-readable step label used by `StdoutSink`.

    Args:
      step: a step as accepted by `normalize_step`.
      total_steps: optional int, appended to the global step as "/total".

    Returns:
      str: `120` -> "step 120/7038"; `[0, 120]` -> "epoch 0 step 120/7038";
      `[0, 120, 5]` -> "epoch 0 step 120/7038 iter 5"; `[0]` -> "epoch 0"; `[]` -> "summary";
      "PARAMETER" -> "parameters"; any other str as is; longer lists -> "step [a, b, c, d]".
    """
    step = normalize_step(step)
    suffix = f"/{total_steps}" if total_steps else ""
    if isinstance(step, int):
        return f"step {step}{suffix}"
    if isinstance(step, str):
        return "parameters" if step == PARAMETER_STEP else step
    if not step:
        return "summary"
    if len(step) > len(_STEP_NAMES):
        return f"step {step}"
    parts = [f"{name} {value}" for name, value in zip(_STEP_NAMES, step)]
    if len(step) > 1:
        parts[1] += suffix
    return " ".join(parts)


def format_duration(seconds):
    """Seconds as "h:mm:ss" (e.g. 3725.2 -> "1:02:05"); negative values count as 0."""
    total = int(round(max(float(seconds), 0.0)))
    return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"


def format_value(key, value, meta=None):
    """Format one metric for a log line (the rules `StdoutSink` documents).

    Args:
      key: metric name.
      value: JSON-able value (already converted by `to_jsonable`).
      meta: optional metadata dict for this metric; "format" (e.g. ":.5f" or ".5f") and "unit" are used.

    Returns:
      str such as "loss 7.2311", "lr 1.2e-04", "312.4 seq/s".
    """
    meta = meta or {}
    if "format" in meta and isinstance(value, (int, float)) and not isinstance(value, bool):
        text = format(value, str(meta["format"]).lstrip(":"))
        unit = f" {meta['unit']}" if meta.get("unit") else ""
        return f"{key} {text}{unit}"
    if key in THROUGHPUT_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.1f} seq/s"
    if key in TOKEN_THROUGHPUT_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.0f} tok/s"
    if key in ETA_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return f"ETA {format_duration(value)}"
    if isinstance(value, float):
        if key in LR_KEYS:
            return f"{key} {value:.1e}"
        if not math.isfinite(value) or value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{key} {value:.4f}"
        return f"{key} {value:.3e}"
    return f"{key} {value}"


class StdoutSink:
    """One human-readable line per `log` call, sent through Python logging (never print).

    Line: `<step> | <metric> | <metric> ...`, metrics in the order given, e.g.
    "step 120/7038 | loss 7.2311 | mlm_acc 0.0312 | lr 1.2e-04 | 312.4 seq/s". Formatting rules:
      - a metric with metadata "format"/"unit" (from `log_metadata`) uses them;
      - throughput (`seqs_per_sec`, `sequences_per_second`) -> "312.4 seq/s";
      - token throughput (`tokens_per_sec`, `tokens_per_second`) -> "40012 tok/s";
      - the phase ETA (`eta_seconds`) -> "ETA 1:02:05";
      - learning rate (`learning_rate`, `lr`) floats -> 2 significant digits, "1.2e-04";
      - other floats -> 4 decimals if 1e-3 <= |x| < 1e5 (or x is 0, nan or inf), else "1.234e-05";
      - ints, bools and strings -> as is.
    Parameters are one line "parameters | key=value | ...". Metadata produces no output.

    Args:
      logger: logging.Logger to write to (default: this module's logger).
      total_steps: optional positive int shown as "step N/total".
      level: logging level of the lines (default INFO).
      hidden: metric names left out of the lines (kept for the machine-readable report only).

    Raises:
      ValueError: total_steps is not a positive int.
    """

    def __init__(self, logger=None, total_steps=None, level=logging.INFO, hidden=()):
        if total_steps is not None and (not is_int(total_steps)
                                        or total_steps <= 0):
            raise ValueError(f"StdoutSink total_steps must be a positive int or None, got {total_steps!r}")
        self._logger = logger or log
        self._total = total_steps
        self._level = level
        self._meta = {}
        self._hidden = frozenset(hidden)

    def log(self, metrics, step):
        data = _check_metrics(metrics)
        parts = [format_step(step, self._total)]
        parts += [format_value(k, v, self._meta.get(k)) for k, v in data.items() if k not in self._hidden]
        self._logger.log(self._level, " | ".join(parts))

    def log_parameters(self, params):
        data = _check_metrics(params, "parameters")
        self._logger.log(self._level, " | ".join(["parameters"] + [f"{k}={v}" for k, v in data.items()]))

    def log_metadata(self, name, meta):
        self._meta.setdefault(name, {}).update(_check_metrics(meta, f"metadata for {name}"))

    def close(self):
        pass


class MetricLogger:
    """Fans metrics out to sinks on rank 0; on every other rank each call does nothing.

    Why rank 0 only: every rank computes the same reduced metrics, and N processes appending to one
    report would interleave records. Build sinks only on rank 0 (see `build_metric_logger`) so other
    ranks never open the report file.

    Args:
      sinks: list of `MetricSink`s; this object owns them and closes them in `close()`.
      rank: int >= 0, this process's rank.

    Raises:
      ValueError: rank is not a non-negative int, or a sink lacks the `MetricSink` methods.
    """

    def __init__(self, sinks, rank=0):
        if not is_int(rank) or rank < 0:
            raise ValueError(f"MetricLogger rank must be a non-negative int, got {rank!r}")
        sinks = list(sinks)
        for sink in sinks:
            if not isinstance(sink, MetricSink):
                raise ValueError(f"{sink!r} is not a MetricSink (needs log, log_parameters, "
                                 "log_metadata and close)")
        self.sinks = sinks
        self.rank = rank
        self.active = rank == 0

    def log(self, metrics, step):
        """Send `metrics` at `step` (see `normalize_step`) to every sink, on rank 0 only."""
        if self.active:
            for sink in self.sinks:
                sink.log(metrics, step)

    def log_summary(self, metrics):
        """Send the end-of-run summary (DLLogger step `[]`)."""
        self.log(metrics, [])

    def log_parameters(self, params):
        if self.active:
            for sink in self.sinks:
                sink.log_parameters(params)

    def log_metadata(self, name, meta):
        if self.active:
            for sink in self.sinks:
                sink.log_metadata(name, meta)

    def close(self):
        """Close every sink (on all ranks: closing writes nothing). Safe to call twice."""
        for sink in self.sinks:
            sink.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def build_metric_logger(rank, report_file=None, append=False, total_steps=None, logger=None, report_only=()):
    """The usual logger for a run: log lines plus, if `report_file` is given, a DLLogger report.

    Args:
      rank: int, this process's rank; sinks (and the report file) are only created on rank 0.
      report_file: optional path of the DLLogger JSON-lines report.
      append: True when resuming, so the report continues instead of being truncated.
      total_steps: optional positive int for "step N/total" in log lines.
      logger: optional logging.Logger for the log lines.
      report_only: metric names written to the report but not to the log lines.

    Returns:
      MetricLogger.

    Raises:
      ValueError: bad rank or total_steps. OSError: the report cannot be opened.
    """
    if not is_int(rank) or rank < 0:
        raise ValueError(f"rank must be a non-negative int, got {rank!r}")
    sinks = []
    if rank == 0:
        sinks.append(StdoutSink(logger=logger, total_steps=total_steps, hidden=report_only))
        if report_file:
            sinks.append(DLLoggerJSONSink(report_file, mode="a" if append else "w"))
    return MetricLogger(sinks, rank=rank)


def _check_record(record):
    """Return None if `record` has the shape of a DLLogger record, else a reason string."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    kind = record.get("type")
    if kind == "LOG":
        if "step" not in record or not isinstance(record.get("data"), dict):
            return "LOG record needs 'step' and a 'data' object"
        if not isinstance(record["step"], (int, str, list)) or isinstance(record["step"], bool):
            return f"bad step {record['step']!r}"
        return None
    if kind == "METADATA":
        if not isinstance(record.get("metric"), str) or not isinstance(record.get("metadata"), dict):
            return "METADATA record needs a 'metric' string and a 'metadata' object"
        return None
    return f"unknown record type {kind!r}"


def _parse_line(raw):
    """Parse one line (bytes, no newline). Returns None for non-DLLL lines; ValueError if corrupt."""
    raw = raw.rstrip(b"\r")
    if not raw.startswith(PREFIX.encode()):
        return None
    try:
        record = json.loads(raw[len(PREFIX):].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"not valid JSON ({err})") from None
    reason = _check_record(record)
    if reason:
        raise ValueError(reason)
    return record


def read_dllogger_report(path):
    """Parse a DLLogger JSON-lines report.

    Lines not starting with "DLLL " are skipped (dllogger files may share a stream with other text).
    A corrupt record is an error, with one exception: the final line, when it has no terminating
    newline and does not parse, is the record a killed run was writing; it is skipped with a warning.
    A corrupt line that does end with a newline was written completely, so it is an error even last.

    Args:
      path: report file.

    Returns:
      list of dict records in file order, exactly as stored (`timestamp`/`elapsedtime` stay strings).

    Raises:
      FileNotFoundError / OSError: the file cannot be read.
      ValueError: a corrupt record, naming the file and the 1-based line number.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    unterminated = lines.pop() if lines else b""  # b"" when the file ends with a newline
    records = []
    for lineno, raw in enumerate(lines, start=1):
        try:
            record = _parse_line(raw)
        except ValueError as err:
            raise ValueError(f"{path}, line {lineno}: corrupt DLLogger record: {err}") from None
        if record is not None:
            records.append(record)
    if unterminated:
        try:
            record = _parse_line(unterminated)
        except ValueError:
            log.warning("%s, line %d: ignoring truncated final record (run killed while writing?)",
                        path, len(lines) + 1)
            record = None
        if record is not None:
            records.append(record)
    return records


def final_summary(records):
    """Merge the data of every summary record (LOG with step `[]`), later values winning.

    Args:
      records: list of dicts from `read_dllogger_report`.

    Returns:
      dict, e.g. {"e2e_train_time": ..., "training_sequences_per_second": ..., "final_loss": ...};
      empty if the run wrote no summary (e.g. it was killed).
    """
    summary = {}
    for record in records:
        if record.get("type") == "LOG" and record.get("step") == []:
            summary.update(record["data"])
    return summary
