"""Tests for utils/plot_report.py: phase concatenation, the 3-panel figure, PNG output, CLI errors."""
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from utils import plot_report
from utils.plot_report import build_figure, load_phases, plot_reports
from utils.report import DLLoggerJSONSink

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _report(path, steps, loss0=8.0, lr_key="learning_rate", extra=True):
    """Write a small report: parameters, one record per (epoch 0, step), and a summary."""
    with DLLoggerJSONSink(path) as sink:
        sink.log_parameters({"SEED": 1})
        for s in steps:
            data = {"loss": loss0 - 0.1 * s, lr_key: 1e-4 * s, "seqs_per_sec": 100.0 + s}
            if extra:
                data.update(mlm_loss=loss0 - 1.0 - 0.1 * s, nsp_loss=0.5)
            sink.log(data, (0, s))
        sink.log({"final_loss": 1.0, "e2e_train_time": 3.0}, [])
    return path


def _lines(ax, gid_prefix):
    return [line for line in ax.lines if (line.get_gid() or "").startswith(gid_prefix)]


def test_restarted_phase_is_shifted_and_continuing_phase_is_not(tmp_path):
    p1 = _report(tmp_path / "p1.json", range(1, 11))
    p2 = _report(tmp_path / "p2.json", range(1, 6), loss0=5.0)
    p3 = _report(tmp_path / "p3.json", range(20, 23))  # already global numbering after 15
    p4 = _report(tmp_path / "p4.json", range(0, 2))  # counts from 0: must not land on step 22
    phases = load_phases([p1, p2, p3, p4])
    assert [p.steps.tolist() for p in phases] == [list(range(1, 11)), list(range(11, 16)),
                                                  [20, 21, 22], [23, 24]]
    np.testing.assert_allclose(phases[1].metrics["loss"], [4.9, 4.8, 4.7, 4.6, 4.5])
    assert plot_report.phase_boundaries(phases) == [10.5, 17.5, 22.5]
    # Issue 14: the dividers were labelled with the reports' file names.
    labels = [t.get_text() for t in plot_report.build_figure(phases).axes[0].texts]
    assert labels == ["phase 2 \u2192", "phase 3 \u2192", "phase 4 \u2192"]


def test_resumed_steps_later_value_wins_and_other_records_ignored(tmp_path):
    path = tmp_path / "resumed.json"
    with DLLoggerJSONSink(path) as sink:
        sink.log({"loss": 3.0, "lr": 0.1}, 1)
        sink.log({"loss": 2.0, "lr": 0.2}, 2)
        sink.log({"loss": 9.0}, [0, 2, 1])  # validation iteration: not a training step
        sink.log({"loss": 9.0}, [0])  # epoch summary
    with DLLoggerJSONSink(path, mode="a") as sink:  # resumed from step 1: step 2 is re-run
        sink.log({"loss": 1.5}, 2)
        sink.log({"loss": 1.0, "lr": 0.3}, 3)
    (phase,) = load_phases([path])
    assert phase.steps.tolist() == [1, 2, 3]
    assert phase.metrics["loss"].tolist() == [3.0, 1.5, 1.0]
    assert phase.metrics["lr"].tolist() == [0.1, 0.2, 0.3]  # step 2 keeps the lr it logged


def test_figure_has_three_panels_with_expected_lines(tmp_path):
    p1 = _report(tmp_path / "p1.json", range(1, 6))
    p2 = _report(tmp_path / "p2.json", range(1, 4), lr_key="lr", extra=False)
    fig = build_figure(load_phases([p1, p2]))
    assert len(fig.axes) == 3
    loss_ax, lr_ax, tput_ax = fig.axes
    assert sorted(l.get_gid() for l in _lines(loss_ax, "")
                  if l.get_gid() != plot_report.BOUNDARY_GID) == [
        "loss:0", "loss:1", "mlm_loss:0", "nsp_loss:0"]
    (loss2,) = _lines(loss_ax, "loss:1")
    assert loss2.get_xdata().tolist() == [6, 7, 8]
    np.testing.assert_allclose(loss2.get_ydata(), [7.9, 7.8, 7.7])
    # Phase 1 wrote "learning_rate", phase 2 "lr": both are drawn as the learning-rate curve.
    assert [l.get_gid() for l in lr_ax.lines if l.get_gid() != plot_report.BOUNDARY_GID] == [
        "learning_rate:0", "lr:1"]
    np.testing.assert_allclose(_lines(lr_ax, "lr:1")[0].get_ydata(), [1e-4, 2e-4, 3e-4])
    (tput,) = _lines(tput_ax, "seqs_per_sec:1")
    np.testing.assert_allclose(tput.get_ydata(), [101.0, 102.0, 103.0])
    for ax in fig.axes:
        (boundary,) = _lines(ax, plot_report.BOUNDARY_GID)
        assert boundary.get_xdata()[0] == 5.5


def test_cli_writes_a_png_of_the_figure_size(tmp_path):
    p1 = _report(tmp_path / "p1.json", range(1, 21))
    p2 = _report(tmp_path / "p2.json", range(1, 11))
    out = tmp_path / "plots" / "report.png"
    result = plot_reports([p1, p2], out, title="tiny", dpi=50)
    data = out.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (400, 450)  # 8 x 9 inches at 50 dpi
    assert result == {"output": str(out), "phases": 2, "steps": 30, "boundaries": [20.5]}
    assert [p.name for p in out.parent.iterdir()] == ["report.png"]  # no temp file left behind


def test_plot_errors_name_the_problem(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("", encoding="utf-8")
    params_only = tmp_path / "params.json"
    with DLLoggerJSONSink(params_only) as sink:
        sink.log_parameters({"SEED": 1})
        sink.log({"final_loss": 1.0}, [])
    other_metrics = tmp_path / "other.json"
    with DLLoggerJSONSink(other_metrics) as sink:
        sink.log({"grad_norm": 1.0}, 1)
    out = tmp_path / "x.png"
    with pytest.raises(ValueError, match=r"empty\.json: report is empty"):
        plot_reports([empty], out)
    with pytest.raises(ValueError, match=r"params\.json: no per-step records"):
        plot_reports([params_only], out)
    with pytest.raises(ValueError, match="no plottable metrics"):
        plot_reports([other_metrics], out)
    with pytest.raises(ValueError, match=r"\.png"):
        plot_reports([params_only], tmp_path / "x.jpg")
    with pytest.raises(FileNotFoundError):
        plot_reports([tmp_path / "missing.json"], out)
    assert not out.exists()


def test_main_in_process_returns_the_summary_and_raises_on_bad_input(tmp_path):
    good = _report(tmp_path / "p1.json", range(1, 4))
    result = plot_report.main([str(good), "--output", str(tmp_path / "ok.png"), "--dpi", "20"])
    assert result["phases"] == 1 and result["steps"] == 3
    assert (tmp_path / "ok.png").read_bytes()[:8] == PNG_SIGNATURE
    with pytest.raises(OSError):
        plot_report.main([str(tmp_path / "nope.json"), "--output", str(tmp_path / "no.png")])
    assert not (tmp_path / "no.png").exists()


def test_cli_subprocess_reports_error_and_exits_2(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("not a report\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "utils.plot_report", str(empty), "--output",
                           str(tmp_path / "x.png")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    # Issue 14: the same one-line `error:` style as every other tool (was `ERROR __main__: ...`).
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "empty.json: report is empty" in proc.stderr
    missing = subprocess.run([sys.executable, "-m", "utils.plot_report", str(tmp_path / "nope.json"), "--output",
                              str(tmp_path / "x.png")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and missing.stderr.startswith("error: ") and "nope.json" in missing.stderr
    assert not (tmp_path / "x.png").exists()


def test_validation_losses_are_drawn_beside_training_at_their_steps(tmp_path):
    """run_pretraining.py --eval-dir logs eval_* records at training steps (every --eval-freq)."""
    path = tmp_path / "p1.json"
    with DLLoggerJSONSink(path) as sink:
        for s in range(1, 7):
            sink.log({"loss": 9.0 - s, "learning_rate": 1e-3, "seqs_per_sec": 50.0}, s)
            if s % 3 == 0:
                sink.log({"eval_loss": 10.0 - s, "eval_mlm_loss": 9.5 - s, "eval_mlm_acc": 0.1}, s)
    loss_ax = build_figure(load_phases([path])).axes[0]
    (evaluation,) = _lines(loss_ax, "eval_loss:0")
    assert evaluation.get_xdata().tolist() == [3, 6] and evaluation.get_ydata().tolist() == [7.0, 4.0]
    assert evaluation.get_linestyle() == "--" and evaluation.get_marker() == "o"
    assert _lines(loss_ax, "loss:0")[0].get_xdata().tolist() == [1, 2, 3, 4, 5, 6]
    assert "eval_mlm_loss" in [t.get_text() for t in loss_ax.get_legend().get_texts()]
