"""Issue 24 items 4-6: long work is never silent, log lines never land on a bar, int8 loads say one line,
and a GLUE run's log reads as GLUE's.

  * fine-tuning's log lines carry step/total, seq/s, tok/s and the ETA (tasks.progress, as pretraining's);
  * evaluation / prediction / standalone pretraining evaluation log done/total, rate and ETA when stderr is
    not a terminal (utils.logger.progress; the interval is set to 0 here so that every refresh is a line);
  * a log record written while a bar is drawn starts on a line of its own (a fake terminal);
  * a real CPU LAMB run has no `is_initialized` deprecation line (cpu_kernels/lamb_cpu.cc);
  * an int8 export prints no oneDNN pass report and no PTQ bars, and one summary of the int8 ops;
  * GLUE (a real run, as a user runs it): the settings line shows the resolved modes, training is logged
    under run_glue with its task's label, exact_match / F1 stay in the report but not in the log lines, and
    the run ends with "fine-tuned model:" and "next:" lines.
"""
import io
import json
import logging
import re
import subprocess
import sys

import numpy as np
import paddle
import pytest

from test_inference import export_args, model  # noqa: F401  -- the tiny SQuAD checkpoint fixture
from test_run_glue import REPO, _base, _run, data  # noqa: F401  -- the tiny MRPC fixture

ETA = r"ETA \d+:\d\d:\d\d"


@pytest.fixture(autouse=True)
def dynamic_mode_afterwards():
    yield
    paddle.disable_static()


@pytest.fixture
def every_refresh_logged(monkeypatch):
    """Progress lines at every refresh (the real interval is 30 s) on a non-terminal stderr."""
    from utils import logger as logger_module

    monkeypatch.setattr(logger_module, "LOG_INTERVAL_S", 0.0, raising=False)


# ------------------------------------------------------------------------------------------ fine-tuning


class _Exe:
    def run(self, program, feed, fetch_list):
        return [np.array([0.5], np.float32)]


class _LR:
    def get_lr(self):
        return 1e-3

    def step(self):
        pass


class _Bundle:
    main_program, lr_scheduler, fetches = object(), _LR(), {"loss": "loss"}


def _batch(rows):
    n = len(rows)
    mask = np.ones((n, 1, 1, 8), np.int64)
    return {"input_ids": np.ones((n, 8), np.int64), "token_type_ids": np.zeros((n, 8), np.int64),
            "attention_mask": mask, "labels": np.zeros((n, 1), np.int64)}


def test_finetune_training_lines_have_rate_and_eta(caplog):
    from tasks.finetune import TrainOptions, train
    from utils.report import build_metric_logger

    caplog.set_level(logging.INFO)
    metrics = build_metric_logger(0, logger=logging.getLogger("run_glue"), total_steps=4)
    opts = TrainOptions(epochs=1, batch_size=2, log_freq=2)
    result = train(_Exe(), _Bundle(), list(range(8)), _batch, opts, metrics=metrics, desc="MRPC training")
    assert result["updates"] == 4
    lines = [r.getMessage() for r in caplog.records if r.name == "run_glue" and "step" in r.getMessage()]
    assert len(lines) == 2, lines  # every --log-freq 2 updates of 4
    for step, line in zip((2, 4), lines):
        assert re.search(rf"^epoch 0 step {step}/4 \| loss 0\.5000 \| learning_rate 1\.0e-03 \| "
                         rf"[\d.]+ seq/s \| \d+ tok/s \| {ETA}$", line), line
    assert lines[-1].endswith("ETA 0:00:00")


def test_pretraining_evaluation_logs_periodic_progress(caplog, every_refresh_logged):
    """run_pretraining_inference's 134 s of silence: its evaluator now logs done/total, rate and ETA."""
    from tasks.pretrain_eval import PretrainEvaluator

    class Exe:
        def run(self, program, feed, fetch_list):
            return [np.array([1.0], np.float32)] * 4

    labels = np.full((2, 8), -1, np.int64)
    labels[:, 1] = 5
    batches = [{"input_ids": np.ones((2, 8), np.int64), "masked_lm_labels": labels}] * 3
    fetches = {k: type("V", (), {"name": k})() for k in ("mlm_loss", "mlm_acc", "nsp_loss", "nsp_acc")}
    caplog.set_level(logging.INFO)
    PretrainEvaluator(Exe(), None, fetches, batches).evaluate(show_progress=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "progress"]
    assert any(re.search(r"^evaluating: 3/3 batch \(100%\) \| .*batch/s \| ETA", line) for line in lines), lines
    assert any(line.startswith("evaluating: 1/3 batch (33%)") for line in lines), lines


# ------------------------------------------------------------------------------------------ bars and lines


class _FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_line_written_during_a_bar_starts_its_own_line(monkeypatch):
    from utils.cli import _CurrentStderr
    from utils.logger import init_logging, progress

    terminal = _FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        init_logging(0, stream=_CurrentStderr())
        bar = progress(total=10, desc="MRPC training", unit="step")
        bar.update(5)
        bar.refresh()
        logging.getLogger("run_glue").info("epoch 0 step 5/10 | loss 0.5000")
        bar.update(5)
        bar.close()
    finally:
        root.handlers[:], root.level = saved
    text = terminal.getvalue()
    assert "MRPC training" in text
    line = next(line for line in text.split("\n") if "loss 0.5000" in line)
    # what the terminal shows of that line: the text after its last carriage return
    assert re.match(r"\[\d\d:\d\d:\d\d\] INFO run_glue: epoch 0 step 5/10", line.split("\r")[-1]), repr(line)
    assert "MRPC training" not in line.split("\r")[-1]


# ------------------------------------------------------------------------------------------ Paddle noise


def test_cpu_lamb_run_has_no_is_initialized_deprecation(data, tmp_path):  # noqa: F811
    """glog's `tensor.cc] The is_initialized method is deprecated` came from the CPU LAMB kernel's optional
    SkipUpdate input; a real run's stderr (the kernel is built on first use) has none."""
    from cpu_kernels import build as kernels

    if kernels.lamb_kernel().op_type is None:
        pytest.skip("the CPU LAMB kernel cannot be built here")
    proc = _run(*_base(data, tmp_path / "out", "--config-file", str(data / "tiny.json"), "--from-pretrained-params",
                       str(data / "pretrained"), "--mode", "train", "--epochs", "1", "--train-batch-size", "4",
                       "--optimizer", "Lamb"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fused kernel bert_lamb_cpu" in proc.stderr
    assert "is_initialized" not in proc.stderr


def test_int8_export_prints_one_summary_and_no_pass_report(model, tmp_path):  # noqa: F811
    root, _ = model
    out = tmp_path / "export8"
    proc = subprocess.run([sys.executable, "-m", "inference.export",
                           *export_args(root, out, "--int8-calibration-file", str(root / "dev.json"),
                                        "--calibration-windows", "16", "--int8-eval-file", str(root / "dev.json"))],
                          cwd=REPO, env={**__import__("os").environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    for noise in ("quantized 0", "squashed", "Sampling stage", "Adding quant", "\x1b["):
        assert noise not in output, noise
    summaries = [line for line in output.splitlines() if "ops in int8" in line]
    assert len(summaries) == 1 and re.search(r"\(int8, cpu, 1 threads; \d+ fc ops in int8\)", summaries[0]), summaries


# ------------------------------------------------------------------------------------------ GLUE's log


@pytest.fixture(scope="module")
def glue_run(data, tmp_path_factory):  # noqa: F811
    """A real run as a user starts it (stderr is a pipe: a log): --do-train plus --mode eval_prediction."""
    out = tmp_path_factory.mktemp("glue_log")
    proc = _run(*_base(data, out, "--config-file", str(data / "tiny.json"), "--from-pretrained-params",
                       str(data / "pretrained"), "--do-train", "--mode", "eval", "--epochs", "8",
                       "--train-batch-size", "4", "--learning-rate", "1e-2", "--log-freq", "10",
                       "--show-config", "true"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, out / "custom" / "glue" / "MRPC"


def _records(stderr):
    """(logger name, message) of every log line."""
    return [m.groups() for m in re.finditer(r"^\[\d\d:\d\d:\d\d\] \w+ (\S+): (.*)$", stderr, re.M)]


def test_glue_settings_line_shows_the_resolved_modes(glue_run):
    proc, _ = glue_run
    settings = [msg for name, msg in _records(proc.stderr) if msg.startswith("parameters |")]
    assert len(settings) == 1
    fields = dict(part.split("=", 1) for part in settings[0].split(" | ")[1:])
    assert (fields["mode"], fields["do_train"], fields["do_eval"], fields["do_predict"]) == (
        "train_eval", "True", "True", "False")


def test_glue_training_is_logged_as_glue_with_total_rate_and_eta(glue_run):
    proc, _ = glue_run
    records = _records(proc.stderr)
    training = [(name, msg) for name, msg in records if msg.startswith(("training:", "epoch "))]
    assert training and {name for name, _ in training} == {"run_glue"}, training
    steps = [msg for _, msg in training if msg.startswith("epoch ")]
    assert len(steps) == 3 and all(re.search(rf"step \d+/24 \|.* seq/s \|.* tok/s \| {ETA}$", m) for m in steps), steps
    assert not any("squad" in name.lower() or "squad" in msg.lower() for name, msg in records)


def test_glue_log_lines_say_acc_not_exact_match_but_the_report_keeps_both(glue_run):
    proc, run_dir = glue_run
    messages = [msg for _, msg in _records(proc.stderr)]
    assert any("acc 1.0000" in m for m in messages)
    assert not any("exact_match" in m or re.search(r"\bF1\b", m) for m in messages), messages
    report = [json.loads(line[len("DLLL "):]) for line in (run_dir / "report.json").read_text().splitlines()]
    summary = {k: v for r in report if r.get("step") == [] for k, v in r["data"].items()}
    assert summary["exact_match"] == pytest.approx(100.0 * summary["acc"]) and "F1" in summary


def test_glue_run_ends_with_the_model_and_next_lines(glue_run):
    proc, run_dir = glue_run
    tail = [msg for name, msg in _records(proc.stderr) if name == "run_glue"][-4:]
    assert tail[0] == f"fine-tuned model: {run_dir}"
    assert tail[1].startswith("next: ") and "test.tsv" in tail[1]
    assert "run_glue.py --task-name MRPC --mode prediction" in tail[2] and f"--from-checkpoint {run_dir}" in tail[2]
    assert tail[3] == f"dev scores: {run_dir / 'eval_results.json'}"


def test_glue_evaluation_logs_done_total_rate_and_eta(data, glue_run, tmp_path, caplog,  # noqa: F811
                                                      every_refresh_logged):
    import run_glue

    caplog.set_level(logging.INFO)
    run_glue.main(_base(data, tmp_path / "out", "--from-checkpoint", str(glue_run[1]), "--mode", "eval",
                        "--eval-batch-size", "2"))
    lines = [r.getMessage() for r in caplog.records if r.name == "progress"]
    assert any(re.search(r"^classifying: 2/2 batch \(100%\) \| .*batch/s \| ETA", line) for line in lines), lines
