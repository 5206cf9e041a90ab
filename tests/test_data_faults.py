"""Data-side faults of issue 8, seen as a user sees them: commands run as subprocesses, judged by their exit
status and their one `error:` line (no traceback).

Covers: a shard directory with a deleted shard (defect 4) for `run_pretraining.py` and
`data.prep.inspect_shards`.
"""
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, shared_path

PY = sys.executable


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    for key in [k for k in env if k.startswith(("PADDLE_", "FLAGS_selected"))]:
        del env[key]
    return env


def _run(args, cwd=REPO, timeout=300):
    return subprocess.run([PY, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _one_error_line(proc):
    """The single `error:` line of a failed command; fails the test on a traceback or several errors."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


@pytest.fixture
def damaged_copy(tmp_path):
    """The real LDDL fixture bal_p9_bin_masked copied, with `shard-2.parquet_1` deleted (the issue's repro)."""
    source = shared_path("data", "lddl-fixtures", "bal_p9_bin_masked")
    copy = tmp_path / "D"
    shutil.copytree(source, copy)
    for path in [copy, *copy.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    os.remove(copy / "shard-2.parquet_1")
    return copy


def test_inspect_shards_reports_a_deleted_shard(damaged_copy):
    line = _one_error_line(_run(["-m", "data.prep.inspect_shards", str(damaged_copy)]))
    assert str(damaged_copy) in line and "damaged" in line and "shard-2.parquet_1" in line
    assert "balanced" not in line


def test_pretraining_on_a_deleted_shard_is_one_error_line(damaged_copy, tmp_path):
    vocab = shared_path("vocab", "bert-base-uncased-vocab.txt")
    proc = _run(["run_pretraining.py", "--phase1", "--input-dir", str(damaged_copy), "--vocab-file", str(vocab),
                 "--bert-model", "bert-tiny", "--max-seq-length", "128",
                 "--max-predictions-per-seq", "20", "--batch-size", "4", "--num-steps-per-checkpoint", "2",
                 "--device", "cpu", "--num-workers", "0", "--max-steps", "2",
                 "--output-dir", str(tmp_path / "out"), "--report-file", str(tmp_path / "report.json")])
    line = _one_error_line(proc)
    assert str(damaged_copy) in line and "shard-2.parquet_1" in line and "missing" in line
