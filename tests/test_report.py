"""Tests for utils/report.py: DLLogger line format, round trip, killed-run tolerance, sinks, fan-out."""
import json
import logging
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from utils.report import (DLLoggerJSONSink, MetricLogger, MetricSink, StdoutSink, build_metric_logger,
                          final_summary, format_step, read_dllogger_report)

LOG_KEYS = ["timestamp", "datetime", "elapsedtime", "type", "step", "data"]
META_KEYS = ["timestamp", "elapsedtime", "datetime", "type", "metric", "metadata"]


class FakeClock:
    """Returns 2024-01-02 03:04:05 UTC, then advances 1.5 s per call."""

    def __init__(self):
        self.now = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)

    def __call__(self):
        current = self.now
        self.now += timedelta(seconds=1.5)
        return current


class RecordingSink:
    def __init__(self):
        self.calls = []

    def log(self, metrics, step):
        self.calls.append(("log", metrics, step))

    def log_parameters(self, params):
        self.calls.append(("params", params))

    def log_metadata(self, name, meta):
        self.calls.append(("meta", name, meta))

    def close(self):
        self.calls.append(("close",))


def _write_sample(path, **kwargs):
    with DLLoggerJSONSink(path, **kwargs) as sink:
        sink.log_parameters({"SEED": np.int64(42), "batch_size_per_gpu": 8, "amp": False})
        sink.log_metadata("loss", {"unit": "", "format": ":.4f"})
        sink.log({"loss": np.float32(7.25), "learning_rate": 1e-4, "seqs_per_sec": np.float64(312.5)},
                 (0, 1))
        sink.log({"loss": 6.5, "mlm_acc": np.array(0.125, dtype=np.float32)}, [0, 2])
        sink.log({"e2e_train_time": 12.0, "final_loss": np.float16(6.5), "ok": np.bool_(True)}, ())


def test_round_trip_converts_numpy_and_keeps_order(tmp_path):
    path = tmp_path / "deep" / "dir" / "report.json"  # parents created by the sink
    _write_sample(path)
    records = read_dllogger_report(path)
    assert [(r["type"], r.get("step"), r.get("metric")) for r in records] == [
        ("LOG", "PARAMETER", None), ("METADATA", None, "loss"), ("LOG", [0, 1], None),
        ("LOG", [0, 2], None), ("LOG", [], None)]
    assert records[0]["data"] == {"SEED": 42, "batch_size_per_gpu": 8, "amp": False}
    assert records[1]["metadata"] == {"unit": "", "format": ":.4f"}
    assert records[2]["data"] == {"loss": 7.25, "learning_rate": 1e-4, "seqs_per_sec": 312.5}
    assert records[3]["data"] == {"loss": 6.5, "mlm_acc": 0.125}
    assert type(records[0]["data"]["SEED"]) is int and type(records[4]["data"]["ok"]) is bool
    assert final_summary(records) == {"e2e_train_time": 12.0, "final_loss": 6.5, "ok": True}


def test_exact_line_format_matches_dllogger(tmp_path):
    path = tmp_path / "r.json"
    clock = FakeClock()
    with DLLoggerJSONSink(path, clock=clock) as sink:  # clock call 1 = start time
        sink.log({"loss": 1.0}, (3, 7))
        sink.log_metadata("loss", {"unit": "nats"})
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines) == 3
    assert all(line.startswith("DLLL {") for line in lines[:2])
    first = json.loads(lines[0][len("DLLL "):])
    second = json.loads(lines[1][len("DLLL "):])
    assert list(first) == LOG_KEYS and list(second) == META_KEYS
    start = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    # dllogger writes timestamp and elapsedtime as strings of floats, datetime as str(datetime).
    assert first["timestamp"] == str((start + timedelta(seconds=1.5)).timestamp())
    assert first["datetime"] == "2024-01-02 03:04:06.500000+00:00"
    assert first["elapsedtime"] == "1.5" and second["elapsedtime"] == "3.0"
    assert (first["type"], first["step"], first["data"]) == ("LOG", [3, 7], {"loss": 1.0})
    assert (second["type"], second["metric"], second["metadata"]) == ("METADATA", "loss", {"unit": "nats"})


def test_each_record_is_on_disk_before_close(tmp_path):
    path = tmp_path / "r.json"
    sink = DLLoggerJSONSink(path)
    sink.log({"loss": 2.0}, 5)
    assert [r["data"] for r in read_dllogger_report(path)] == [{"loss": 2.0}]
    sink.close()
    sink.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        sink.log({"loss": 1.0}, 6)


def test_append_mode_continues_and_write_mode_truncates(tmp_path):
    path = tmp_path / "r.json"
    with DLLoggerJSONSink(path) as sink:
        sink.log({"loss": 3.0}, 1)
        sink.log({"loss": 2.0}, 2)
    with DLLoggerJSONSink(path, mode="a") as sink:
        sink.log({"loss": 1.0}, 3)
    assert [r["step"] for r in read_dllogger_report(path)] == [1, 2, 3]
    with DLLoggerJSONSink(path, mode="w") as sink:
        sink.log({"loss": 0.5}, 4)
    assert [r["step"] for r in read_dllogger_report(path)] == [4]
    with pytest.raises(ValueError, match="mode"):
        DLLoggerJSONSink(path, mode="r+")


def test_reader_tolerates_only_a_truncated_last_line(tmp_path, caplog):
    good = tmp_path / "good.json"
    _write_sample(good)
    text = good.read_text(encoding="utf-8")
    killed = tmp_path / "killed.json"
    killed.write_text(text + 'DLLL {"timestamp": "1.0", "type": "LO', encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="utils.report"):
        assert read_dllogger_report(killed) == read_dllogger_report(good)
    assert "truncated final record" in caplog.text and "line 6" in caplog.text

    # The same fragment followed by a newline was written completely: corrupt, not truncated.
    corrupt_last = tmp_path / "corrupt_last.json"
    corrupt_last.write_text(text + 'DLLL {"timestamp": "1.0", "type": "LO\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"corrupt_last\.json, line 6: corrupt"):
        read_dllogger_report(corrupt_last)

    lines = text.split("\n")
    middle = tmp_path / "middle.json"
    middle.write_text("\n".join(lines[:2] + ["DLLL {not json"] + lines[2:]), encoding="utf-8")
    with pytest.raises(ValueError, match=r"middle\.json, line 3: corrupt DLLogger record"):
        read_dllogger_report(middle)


def test_reader_skips_foreign_lines_and_checks_record_shape(tmp_path):
    path = tmp_path / "mixed.log"
    path.write_text('some launcher output\n\nDLLL {"type": "LOG", "step": 1, "data": {"a": 1}}\n'
                    "DLL 2024-01-01 - human line\n", encoding="utf-8")
    assert read_dllogger_report(path) == [{"type": "LOG", "step": 1, "data": {"a": 1}}]
    path.write_text('DLLL {"type": "LOG", "step": 1}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 1.*'data'"):
        read_dllogger_report(path)
    path.write_text('DLLL {"type": "EVENT"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="unknown record type 'EVENT'"):
        read_dllogger_report(path)


def test_append_after_killed_run_repairs_the_tail(tmp_path, caplog):
    path = tmp_path / "r.json"
    with DLLoggerJSONSink(path) as sink:
        sink.log({"loss": 3.0}, 1)
    with open(path, "a", encoding="utf-8") as f:
        f.write('DLLL {"timestamp": "9", "type": "LOG", "st')  # killed mid-record
    with caplog.at_level(logging.WARNING, logger="utils.report"):
        with DLLoggerJSONSink(path, mode="a") as sink:
            sink.log({"loss": 2.0}, 2)
    assert "dropping" in caplog.text
    assert [r["step"] for r in read_dllogger_report(path)] == [1, 2]

    # A complete record that only lost its newline is kept, not dropped.
    with open(path, "a", encoding="utf-8") as f:
        f.write('DLLL {"type": "LOG", "step": 3, "data": {"loss": 1.5}}')
    with DLLoggerJSONSink(path, mode="a") as sink:
        sink.log({"loss": 1.0}, 4)
    assert [r["step"] for r in read_dllogger_report(path)] == [1, 2, 3, 4]


@pytest.mark.parametrize("step", [1.5, True, None, {"a": 1}, "", [0, 1.0], (0, True)])
def test_bad_steps_are_rejected(tmp_path, step):
    with DLLoggerJSONSink(tmp_path / "r.json") as sink:
        with pytest.raises(ValueError, match="step"):
            sink.log({"loss": 1.0}, step)


def test_bad_values_are_rejected_with_the_key(tmp_path):
    with DLLoggerJSONSink(tmp_path / "r.json") as sink:
        with pytest.raises(ValueError, match="metrics.bad"):
            sink.log({"bad": object()}, 1)
        with pytest.raises(ValueError, match="key 3"):
            sink.log({3: 1.0}, 1)
        with pytest.raises(ValueError, match="dict"):
            sink.log([("loss", 1.0)], 1)
    assert read_dllogger_report(tmp_path / "r.json") == []  # nothing half-written


def test_stdout_sink_line_format(caplog):
    logger = logging.getLogger("test_report.stdout")
    sink = StdoutSink(logger, total_steps=7038)
    with caplog.at_level(logging.INFO, logger="test_report.stdout"):
        sink.log({"loss": np.float32(7.23109), "mlm_acc": 0.03119, "lr": 1.2e-4, "seqs_per_sec": 312.43},
                 120)
        sink.log({"loss": 2.5e-05, "big": 123456.0, "n": np.int64(3), "x": float("nan")}, (1, 200))
        sink.log({"e2e_train_time": 12.0}, [])
        sink.log_metadata("f1", {"format": ":.2f", "unit": "%"})
        sink.log({"f1": 88.4567}, [0, 5, 2])
        sink.log_parameters({"seed": 42, "phase": "p1"})
    assert caplog.messages == [
        "step 120/7038 | loss 7.2311 | mlm_acc 0.0312 | lr 1.2e-04 | 312.4 seq/s",
        "epoch 1 step 200/7038 | loss 2.500e-05 | big 1.235e+05 | n 3 | x nan",
        "summary | e2e_train_time 12.0000",
        "epoch 0 step 5/7038 iter 2 | f1 88.46 %",
        "parameters | seed=42 | phase=p1",
    ]
    with pytest.raises(ValueError, match="total_steps"):
        StdoutSink(logger, total_steps=0)


def test_format_step_without_total():
    assert format_step(7) == "step 7"
    assert format_step([2]) == "epoch 2"
    assert format_step("PARAMETER") == "parameters"
    assert format_step((1, 2, 3, 4)) == "step [1, 2, 3, 4]"


def test_metric_logger_fans_out_on_rank0_only():
    a, b = RecordingSink(), RecordingSink()
    with MetricLogger([a, b], rank=0) as ml:
        ml.log_parameters({"seed": 1})
        ml.log_metadata("loss", {"unit": ""})
        ml.log({"loss": 1.0}, 3)
        ml.log_summary({"final_loss": 1.0})
    expected = [("params", {"seed": 1}), ("meta", "loss", {"unit": ""}), ("log", {"loss": 1.0}, 3),
                ("log", {"final_loss": 1.0}, []), ("close",)]
    assert a.calls == expected and b.calls == expected
    assert isinstance(a, MetricSink)

    c = RecordingSink()
    with MetricLogger([c], rank=1) as ml:
        ml.log_parameters({"seed": 1})
        ml.log({"loss": 1.0}, 3)
        ml.log_summary({"final_loss": 1.0})
    assert c.calls == [("close",)]


def test_metric_logger_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rank"):
        MetricLogger([], rank=-1)
    with pytest.raises(ValueError, match="rank"):
        MetricLogger([], rank=True)
    with pytest.raises(ValueError, match="not a MetricSink"):
        MetricLogger([object()], rank=0)


def test_build_metric_logger_opens_the_report_on_rank0_only(tmp_path):
    report = tmp_path / "out" / "report.json"
    with build_metric_logger(1, report_file=report) as ml:
        ml.log({"loss": 1.0}, 1)
    assert not report.exists()
    with build_metric_logger(0, report_file=report, total_steps=10) as ml:
        ml.log({"loss": 1.0}, 1)
    with build_metric_logger(0, report_file=report, append=True) as ml:
        ml.log({"loss": 0.5}, 2)
    assert [r["data"]["loss"] for r in read_dllogger_report(report)] == [1.0, 0.5]
