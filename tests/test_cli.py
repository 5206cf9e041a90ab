"""utils.cli.run_cli: exit statuses, the one-line error message, and tracebacks kept for bugs."""
import errno
import io
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from utils.cli import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_STORAGE, one_line, run_cli

REPO = Path(__file__).resolve().parents[1]


def _raising(exc):
    def main(argv):
        raise exc
    return main


def _run(main, argv=None, **kw):
    err = io.StringIO()
    return run_cli(main, argv, stderr=err, **kw), err.getvalue()


def test_success_passes_argv_and_returns_0():
    seen = []
    code, err = _run(seen.append, ["--x", "1"])
    assert (code, err, seen) == (0, "", [["--x", "1"]])


@pytest.mark.parametrize("exc, message", [
    (ValueError("--num-files must be >= 1, got 0"), "error: --num-files must be >= 1, got 0\n"),
    (ValueError("first line\n  second line\n"), "error: first line second line\n"),
    (FileNotFoundError("vocab 'v.txt' not found"), "error: vocab 'v.txt' not found\n"),
    (FileExistsError("output directory 'o' already exists"), "error: output directory 'o' already exists\n"),
    (PermissionError(errno.EACCES, "Permission denied", "/data/x.parquet"),
     "error: [Errno 13] Permission denied: '/data/x.parquet'\n"),
    (ValueError(""), "error: ValueError\n"),
])
def test_input_errors_are_one_line_and_exit_2(exc, message):
    assert _run(_raising(exc)) == (EXIT_BAD_INPUT, message)


def test_caller_exit_codes_win_over_builtin_ones():
    class DownloadFailed(RuntimeError):
        pass

    class BadShard(ValueError):
        pass

    codes = {DownloadFailed: 1, BadShard: 3}
    assert _run(_raising(DownloadFailed("host unreachable")), exit_codes=codes) == (1, "error: host unreachable\n")
    assert _run(_raising(BadShard("x")), exit_codes=codes) == (3, "error: x\n")
    assert _run(_raising(ValueError("y")), exit_codes=codes) == (2, "error: y\n")


@pytest.mark.parametrize("exc", [ZeroDivisionError("division by zero"), RuntimeError("bug"), KeyError("k"),
                                 OSError("no file named")])
def test_bugs_propagate_untouched(exc):
    err = io.StringIO()
    with pytest.raises(type(exc)) as info:
        run_cli(_raising(exc), stderr=err)
    assert info.value is exc and err.getvalue() == ""


def test_keyboard_interrupt_exits_130():
    assert _run(_raising(KeyboardInterrupt())) == (EXIT_INTERRUPTED, "error: interrupted\n")


def test_argparse_exits_pass_through_as_status():
    import argparse

    def main(argv):
        parser = argparse.ArgumentParser(prog="p")
        parser.add_argument("--n", type=int, required=True)
        parser.parse_args(argv)

    assert run_cli(main, ["--n", "x"]) == 2
    assert run_cli(main, ["--help"]) == 0
    assert run_cli(main, ["--n", "1"]) == 0


def test_logging_is_initialised_for_the_rank():
    run_cli(lambda argv: None, rank=1)
    assert logging.getLogger().level == logging.WARNING
    run_cli(lambda argv: None)
    assert logging.getLogger().level == logging.INFO


def test_one_line_of_a_message():
    assert one_line(ValueError("a\r\nb\n\n c ")) == "a b c"
    assert one_line(KeyError("k")) == "'k'"


_SCRIPT = """
import zlib, sys
from utils.cli import run_cli
def main(argv):
    if argv == ["bug"]:
        return 1 / 0
    raise ValueError("bad file 'x.parquet'\\nsecond line")
sys.exit(run_cli(main, sys.argv[1:]))
"""


def test_as_a_process_bad_input_vs_bug():
    def run(arg):
        return subprocess.run([sys.executable, "-c", _SCRIPT, arg], cwd=REPO, capture_output=True, text=True,
                              timeout=60)
    bad = run("input")
    assert (bad.returncode, bad.stdout) == (2, "")
    # Besides the error, stderr holds only log lines (utils.preflight's start-up choice is logged at INFO).
    not_logs = [line for line in bad.stderr.splitlines() if not re.match(r"\[[\d:]+\] [A-Z]+ ", line)]
    assert not_logs == ["error: bad file 'x.parquet' second line"], bad.stderr
    bug = run("bug")
    assert bug.returncode == 1
    assert "Traceback" in bug.stderr and bug.stderr.rstrip().endswith("ZeroDivisionError: division by zero")


# A full disk, a quota or a read-only filesystem (issue 8 defect 10): one line, exit 3, never a traceback.
@pytest.mark.parametrize("exc, names, reason", [
    # Arrow's writers: errno set, no file name, the cause only in the text.
    (OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device"),
     "a write failed", "the filesystem is full"),
    (OSError("IOError: Disk quota exceeded"), "a write failed", "the disk quota is exceeded"),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/part.0.parquet"),
     "writing '/mnt/ro/part.0.parquet' failed", "the filesystem is read-only"),
])
def test_storage_failures_are_one_line_and_exit_3(exc, names, reason):
    code, err = _run(_raising(exc))
    assert code == EXIT_STORAGE == 3
    assert err.count("\n") == 1 and err.startswith(f"error: {names}: {reason}") and "re-run" in err


def test_storage_failure_wrapped_in_another_error_is_still_one_line():
    def main(argv):
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/data/sink/part.3.parquet_1")
        except OSError as err:
            raise ValueError("block 3 failed") from err

    code, err = _run(main)
    assert code == 3 and "writing '/data/sink/part.3.parquet_1' failed: the filesystem is full" in err


def test_atomic_output_names_the_output_when_the_writer_does_not(tmp_path):
    from utils.fs import atomic_output_dir

    def main(argv):
        with atomic_output_dir(tmp_path / "sink") as tmp:
            (Path(tmp) / "part.0.parquet").write_bytes(b"half")
            raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")

    code, err = _run(main)
    assert code == 3 and f"writing '{tmp_path / 'sink'}' failed: the filesystem is full" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-written left


_FULL_DISK_SCRIPT = """
import zlib, sys
import pyarrow.parquet as pq
from data.prep import balance_dask_output as bal
from utils.cli import run_cli

def full(self, *args, **kwargs):  # what Arrow raises when the disk fills up under a ParquetWriter
    raise OSError(28, "Error writing bytes to file. Detail: [errno 28] No space left on device")

pq.ParquetWriter.write_table = full
sys.exit(run_cli(bal.main, sys.argv[1:]))
"""


def test_full_disk_in_a_data_command_as_a_process(tmp_path):
    shards = Path(__file__).resolve().parents[2] / "shared" / "data" / "lddl-fixtures" / "bal_p9_unbin_dyn"
    if not shards.exists():
        pytest.skip(f"shared test data not present: {shards}")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", _FULL_DISK_SCRIPT, "--indir", str(shards), "--outdir", str(out),
                           "--num-shards", "2"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: writing '{out}' failed: the filesystem is full ([Errno 28] No space left on "
                      f"device while writing the output directory: '{out}'); free space on that filesystem, "
                      "then re-run"]
    assert list(tmp_path.iterdir()) == []
