"""benchmarks.gpu_selfcheck on a machine without a GPU: the table, the could-not-run lines, the parity
comparison with injected results, and scripts/gpu_selfcheck.sh's argument handling."""
import os
import subprocess
import sys

import numpy as np

from benchmarks import gpu_selfcheck as S
from conftest import REPO


def test_compare_passes_within_tolerance_and_fails_outside_or_non_finite():
    assert S.compare([1.0, 2.0], [1.01, 2.02])[0]
    ok, detail = S.compare([1.0, 2.0], [1.0, 2.5])
    assert not ok and "1 of 2 out of tolerance" in detail
    ok, detail = S.compare([1.0], [np.nan])
    assert not ok and "non-finite" in detail
    assert not S.compare([1.0, 2.0], [1.0])[0]


def test_without_a_gpu_every_check_says_why_and_exit_is_4(capsys):
    code = S.main([], status=lambda: (False, "this Paddle 2.6.2 is a CPU build"))
    out = capsys.readouterr().out.splitlines()
    rows = [line for line in out if line[:2] in {f"{k}." for k, _, _ in S.CHECKS}]
    assert len(rows) == len(S.CHECKS) == 7
    assert all("could not run: no usable GPU: this Paddle 2.6.2 is a CPU build" in r for r in rows)
    assert code == S.EXIT_NOT_RUN == 4 and out[-1] == "some checks could not run (exit 4)"
    assert "fusion flags that passed: none" in out


def test_table_and_status_from_injected_results():
    results = [S.Result("a", "amp_o1_o2", S.PASSED, "O1: max |diff| 0.001"),
               S.Result("b", "fuse_mha", S.PASSED, ""), S.Result("c", "fuse_qkv", S.FAILED, "2 of 8 out"),
               S.Result("c", "fuse_ffn", S.PASSED, "")]
    text = S.table(results)
    assert "c. fuse_qkv" in text and "FAILED" in text
    assert text.splitlines()[-1] == "fusion flags that passed: --fuse-mha --fuse-ffn"
    assert S.exit_status(results) == S.EXIT_FAILED
    assert S.exit_status(results[:2]) == S.EXIT_OK
    assert S.exit_status(results[:1] + [S.Result("g", "benchmark", "could not run: x", "")]) == S.EXIT_NOT_RUN


def test_only_selects_checks(capsys):
    S.main(["--only", "a,g"], status=lambda: (False, "none"))
    rows = [line for line in capsys.readouterr().out.splitlines() if "could not run: " in line]
    assert [r[:2] for r in rows] == ["a.", "g."]


def _script(*args):
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(["bash", str(REPO / "scripts" / "gpu_selfcheck.sh"), *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_script_on_this_cpu_machine_exits_4_with_one_line_per_check():
    proc = _script("--only", "a,b")
    assert proc.returncode == 4, proc.stderr
    assert proc.stdout.count("could not run: no usable GPU") == 2


def test_script_rejects_bad_arguments_with_2():
    proc = _script("--only", "z")
    assert proc.returncode == 2 and "--only takes letters among a,b,c,d,e,f,g" in proc.stderr
    assert _script("--timeout-scale", "0").returncode == 2
