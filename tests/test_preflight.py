"""utils.preflight's MKL code-path choice: vendor detection, when MKL_DEBUG_CPU_TYPE is set, the one log line."""
import os
import subprocess
import sys

import pytest

from utils.preflight import choose_mkl_cpu_type, cpu_vendor, read_cpuinfo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

AMD_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme avx2 fma

processor\t: 1
vendor_id\t: AuthenticAMD
"""
INTEL_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) CPU @ 2.20GHz
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm
CPU implementer\t: 0x41
"""


@pytest.mark.parametrize("text, vendor", [
    (AMD_CPUINFO, "AuthenticAMD"), (INTEL_CPUINFO, "GenuineIntel"), (ARM_CPUINFO, None), ("", None), (None, None),
    ("vendor_id\t:\n", None),  # an empty value is no vendor
])
def test_cpu_vendor_from_cpuinfo_text(text, vendor):
    assert cpu_vendor(text) == vendor


def test_read_cpuinfo_of_a_missing_file_is_empty(tmp_path):
    assert read_cpuinfo(str(tmp_path / "no-cpuinfo")) == ""


def test_amd_without_a_user_value_gets_5():
    value, message = choose_mkl_cpu_type("AuthenticAMD", {})
    assert value == "5" and "MKL_DEBUG_CPU_TYPE=5" in message and "AMD" in message


@pytest.mark.parametrize("vendor", ["GenuineIntel", None, "HygonGenuine"])
def test_intel_and_other_vendors_are_left_alone(vendor):
    value, message = choose_mkl_cpu_type(vendor, {})
    assert value is None and "left unset" in message and (vendor or "unknown") in message


@pytest.mark.parametrize("user_value", ["4", "", "5"])
@pytest.mark.parametrize("vendor", ["AuthenticAMD", "GenuineIntel"])
def test_a_user_value_is_kept(vendor, user_value):
    value, message = choose_mkl_cpu_type(vendor, {"MKL_DEBUG_CPU_TYPE": user_value})
    assert value is None and repr(user_value) in message and "user" in message


def _python(code, env_update=(), drop=()):
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_update)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)


_PRINT = "import utils.preflight, os; print(os.environ.get('MKL_DEBUG_CPU_TYPE'))"


def test_importing_preflight_sets_the_variable_on_this_machine():
    expected = "5" if cpu_vendor(read_cpuinfo()) == "AuthenticAMD" else "None"
    proc = _python(_PRINT, drop=("MKL_DEBUG_CPU_TYPE",))
    assert (proc.returncode, proc.stdout.strip()) == (0, expected), proc.stderr


def test_importing_preflight_keeps_the_users_value():
    proc = _python(_PRINT, env_update={"MKL_DEBUG_CPU_TYPE": "3"})
    assert (proc.returncode, proc.stdout.strip()) == (0, "3"), proc.stderr


def _choice_lines(stderr):
    return [line for line in stderr.splitlines() if "utils.preflight" in line and "MKL_DEBUG_CPU_TYPE" in line]


def test_the_choice_is_logged_once_per_process_however_often_logging_is_set_up():
    proc = _python("from utils.logger import init_logging; init_logging(); init_logging(); init_logging(1)",
                   drop=("MKL_DEBUG_CPU_TYPE",))
    assert proc.returncode == 0, proc.stderr
    assert len(_choice_lines(proc.stderr)) == 1, proc.stderr


def test_a_real_cli_logs_the_choice_once(tmp_path):
    # A data CLI on a missing directory: logging set up by utils.cli.run_cli, then one error line, exit 2.
    proc = subprocess.run([sys.executable, "-m", "data.prep.inspect_shards", str(tmp_path / "missing")],
                          cwd=REPO, env={k: v for k, v in os.environ.items() if k != "MKL_DEBUG_CPU_TYPE"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = _choice_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    on_amd = cpu_vendor(read_cpuinfo()) == "AuthenticAMD"
    assert ("MKL_DEBUG_CPU_TYPE=5 set" if on_amd else "MKL_DEBUG_CPU_TYPE left unset") in lines[0]
    assert " INFO " in lines[0]


def test_the_user_value_is_what_a_real_cli_logs(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "data.prep.inspect_shards", str(tmp_path / "missing")],
                          cwd=REPO, env={**os.environ, "MKL_DEBUG_CPU_TYPE": ""}, capture_output=True, text=True,
                          timeout=60)
    lines = _choice_lines(proc.stderr)
    assert len(lines) == 1 and "MKL_DEBUG_CPU_TYPE='' kept as set by the user" in lines[0], proc.stderr
